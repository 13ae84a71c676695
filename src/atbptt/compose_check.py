"""Compose configs as Hydra will, and check them: one line per problem, or None.

``to_config`` turns a composed config into typed objects (``Config``) and checks the limits
that span keys (``limits.check_config``). ``compose_all`` composes a command once per value of
every override (sweep values one at a time; Hydra's own overrides once, with the launcher's
checks) and checks each config, the device and the logger. For a multirun, ``sweep_jobs``
expands the jobs as Hydra's basic sweeper will (the preset's ``hydra.sweeper.params``, then the
command line's), ``check_sweep_jobs`` composes each (each must be valid, and no two may share a
directory) and ``check_group_sweeps`` refuses a sweep over presets that carry their own sweeps.
``validate.precheck`` calls them; they are re-exported there.
"""
from __future__ import annotations

import re
import shlex
from typing import Dict, List, Optional

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from .cluster import check_launcher
from .config import Config, ConfigError
from .config_source import ConfigSource, composing, is_group
from .limits import check_config


def to_config(cfg: DictConfig) -> Config:
    """Typed ``Config`` (runs every ``__post_init__`` check, then ``limits.check_config``);
    raises ``ConfigError``."""
    try:
        config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        cause = err.__cause__ if isinstance(err.__cause__, ConfigError) else err
        raise ConfigError(first_line(cause)) from err
    check_config(config)
    return config


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message, or its type's name if the message is empty."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def compose_all(plain: List[str], choices: Dict[str, List[str]], hydra_args: List[str] = (),
                source: ConfigSource = ConfigSource()) -> Optional[str]:
    """Compose once per sweep value (the others at their first value) and validate; Hydra's
    own overrides (``hydra/launcher=joblib``, ``hydra.launcher.n_jobs=2``...) once with them."""
    from hydra import compose

    variants = [plain] + [[v if p == vals[0] else p for p in plain] for vals in choices.values()
                          for v in vals[1:]]
    name = source.config_name
    with composing(source):
        for i, overrides in enumerate(variants):
            try:
                if i == 0 and hydra_args:
                    with_hydra = compose(config_name=name, overrides=[*hydra_args, *overrides],
                                         return_hydra_config=True)
                    message = check_launcher(with_hydra)  # SLURM: scheduler and partition
                    if message is not None:
                        return message
                config = to_config(compose(config_name=name, overrides=overrides))
                _check_device(config)
                _check_logger(config)
            except ConfigError as err:
                return str(err)
            except Exception as err:  # noqa: BLE001 - composition errors name the override
                cause = err.__cause__ or err
                return _plus_hint(first_line(err), overrides) or (
                    first_line(err) + (f" ({first_line(cause)})" if cause is not err else ""))
    return None


def _plus_hint(message: str, overrides: List[str]) -> Optional[str]:
    """Hydra's 'Multiple values for G' for ``+G=x`` where G is in the defaults list already
    (as ``experiment`` is): say to drop the '+'."""
    match = re.match(r"Multiple values for (\S+)\.", message)
    added = [o for o in overrides if match and o.startswith(f"+{match.group(1)}=")]
    if not added:
        return None
    return (f"{added[0]}: {match.group(1)} is in the defaults list already, so it is chosen "
            f"without '+': {added[0][1:]}")


def _check_device(config: Config) -> None:
    if config.device.value == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but no CUDA GPU is available; allowed here: auto, cpu")


def _check_logger(config: Config) -> None:
    """logger=tensorboard without the tensorboard package: one line, before anything runs."""
    if config.logger.value == "tensorboard":
        from .tensorboard_log import require

        require()


# ------------------------------------------------------------------------------ sweeps
def check_group_sweeps(argv: List[str], parsed,
                       source: ConfigSource = ConfigSource()) -> Optional[str]:
    """A sweep over group options that carry their own sweeps (``-m experiment=a,b``) would run
    one job per option, not their grids: refused, with the commands that run each grid."""
    for o in parsed:
        group = o.key_or_group.split("@")[0]
        if not o.is_sweep_override() or "." in group or not is_group(group, source):
            continue
        prefix = "+" if o.is_add() else ""
        values = list(o.sweep_string_iterator())
        if any(_carries_sweep(f"{prefix}{o.key_or_group}={v}", source) for v in values):
            commands = "; ".join(
                shlex.join(["atbptt-run", *(f"{prefix}{o.key_or_group}={v}"
                                            if a == o.input_line else a for a in argv)])
                for v in values)
            return (f"{o.input_line}: each {group} option carries its own sweep, and one launch "
                    f"runs one sweep; run one per launch: {commands}")
    return None


def _carries_sweep(override: str, source: ConfigSource = ConfigSource()) -> bool:
    from hydra import compose

    with composing(source):
        cfg = compose(config_name=source.config_name, overrides=[override],
                      return_hydra_config=True)
    return bool(cfg.hydra.sweeper.params)


def sweep_jobs(task: List[str], hydra_args: List[str],
               config_name: str = "config") -> List[List[str]]:
    """The overrides of every job, as Hydra's basic sweeper expands them: the preset's
    ``hydra.sweeper.params`` first, replaced by the command line's values for the same key."""
    from hydra import compose
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(task) if not o.is_sweep_override()]
    master = compose(config_name=config_name, overrides=[*hydra_args, *fixed],
                     return_hydra_config=True)
    params = [f"{k}={v}" for k, v in (master.hydra.sweeper.params or {}).items()]
    (jobs,) = BasicSweeper.split_arguments(parser.parse_overrides([*params, *task]), None)
    return jobs


def check_sweep_jobs(task: List[str], hydra_args: List[str],
                     source: ConfigSource = ConfigSource()) -> Optional[str]:
    """Compose each job of a sweep: its config must be valid, and its directory
    (``hydra.sweep.subdir``) its own."""
    from hydra import compose

    seen: Dict[str, str] = {}
    with composing(source):
        for num, job in enumerate(sweep_jobs(task, hydra_args, source.config_name)):
            name = ",".join(job) or "(no overrides)"
            try:
                cfg = compose(config_name=source.config_name, overrides=[*hydra_args, *job],
                              return_hydra_config=True)
                subdir = _job_subdir(cfg, num)
            except Exception as err:  # noqa: BLE001 - composition errors name the override
                return f"job {name}: {first_line(err)}"
            if subdir in seen:
                excluded = ", ".join(cfg.hydra.job.config.override_dirname.exclude_keys)
                return (f"jobs {seen[subdir]} and {name} of this sweep would share the directory "
                        f"'{subdir or '.'}' under hydra.sweep.dir: sweep only over keys that name "
                        f"the directory (not {excluded}), or set hydra.sweep.subdir")
            seen[subdir] = name
            with open_dict(cfg):
                del cfg["hydra"]
            try:
                to_config(cfg)
            except ConfigError as err:
                return f"job {name}: {err}"
    return None


def _job_subdir(cfg: DictConfig, num: int) -> str:
    """``hydra.sweep.subdir`` as the launcher resolves it for job ``num``."""
    with open_dict(cfg):
        cfg.hydra.job.num = num
        cfg.hydra.job.id = num
    return str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
