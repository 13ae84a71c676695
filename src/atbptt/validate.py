"""One-line errors for bad input, checked before Hydra runs anything.

``precheck(argv)`` reads the command line with Hydra's own parser (so ``-cd/--config-dir``,
``-cp/--config-path`` and ``-cn/--config-name`` are understood, and a user config directory's
presets are options like the packaged ones: ``config_source``), composes the config for every
value of every override (sweep values one at a time) with Hydra's compose API and returns a
one-line message naming the key and what is allowed, or ``None``. For a sweep it then composes
every job as Hydra's basic sweeper will (``check_sweep_jobs``): each must be valid, and no two
may share a directory. ``to_config`` turns a composed config into typed objects and checks the
limits that span keys.
"""
from __future__ import annotations

import dataclasses
import re
import shlex
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from .cluster import check_launcher
from .config import Config, ConfigError
from .config_source import ConfigSource, composing, hydra_argv, is_group
from .config_source import group_options as _options
from .limits import check_config

GROUPS = ("dataset", "model", "method", "experiment", "setting")
# flags after which Hydra does not run a job (help, printing the config, completion...)
_NO_JOB_FLAGS = {"-h", "--help", "--hydra-help", "--info", "-i", "-c", "--cfg",
                 "--shell-completion", "-sc"}


def group_options(group: str, source: ConfigSource = ConfigSource()) -> List[str]:
    """The options of a config group, the user's config directory's included."""
    return _options(group, source)


def to_config(cfg: DictConfig) -> Config:
    """Typed ``Config`` (runs every ``__post_init__`` check, then ``limits.check_config``);
    raises ``ConfigError``."""
    try:
        config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        cause = err.__cause__ if isinstance(err.__cause__, ConfigError) else err
        raise ConfigError(_first_line(cause)) from err
    check_config(config)
    return config


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _schema_keys(path: List[str]) -> Optional[List[str]]:
    """Allowed keys at ``path`` of the schema, or None if ``path`` is not a section."""
    node: object = Config()
    for part in path:
        node = getattr(node, part, None)
        if not dataclasses.is_dataclass(node):
            return None
    return [f.name for f in dataclasses.fields(node)]


def _check_key(key: str) -> Optional[str]:
    parts = key.split(".")
    allowed = _schema_keys(parts[:-1])
    if allowed is None:
        allowed = _schema_keys([])
        return f"unknown key '{key}'; top-level keys are: {', '.join(allowed)}"
    if parts[-1] not in allowed:
        where = ".".join(parts[:-1]) or "top-level"
        return f"unknown key '{key}'; {where} keys are: {', '.join(allowed)}"
    return None


def _check_output_dir(value: str) -> Optional[str]:
    """The nearest existing folder above the static part of ``value`` must take a new file."""
    static = value.split("${", 1)[0]
    path = Path(static or ".").expanduser().absolute()
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        return f"output directory '{value}' is not writable: '{path}' is a file"
    try:
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as err:
        return f"output directory '{value}' is not writable ({err.strerror}: {path})"
    return None


def precheck(argv: List[str]) -> Optional[str]:
    """One line saying what is wrong with the command line ``argv``, or None."""
    from hydra._internal.utils import get_args_parser

    argv = hydra_argv(argv)
    try:
        args, unknown = get_args_parser().parse_known_args(argv)
    except SystemExit:  # argparse already printed its one-line usage error
        return None
    if unknown:
        return f"unrecognized arguments: {' '.join(unknown)} (atbptt-run --help lists the flags)"
    message = _check_modes(args)
    if message or any(a in _NO_JOB_FLAGS or a.startswith("--cfg") for a in argv):
        return message
    source = ConfigSource.from_args(args)
    message = source.problem()
    if message:
        return message
    multirun = bool(args.multirun)
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except Exception as err:  # noqa: BLE001 - Hydra's grammar errors are plain exceptions
        return f"cannot parse overrides: {_first_line(err)}"
    dir_key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    out_dir = "results/sweeps" if multirun else "results/runs"
    plain, choices, hydra_args = [], {}, []
    for o in parsed:
        key = o.key_or_group
        if key.startswith("hydra"):
            if key == dir_key:
                out_dir = o.value() if isinstance(o.value(), str) else str(o.value())
            if not o.is_sweep_override():
                hydra_args.append(o.input_line)
            continue
        values = (list(o.sweep_string_iterator()) if o.is_sweep_override()
                  else [o.get_value_element_as_str()])
        if o.is_sweep_override() and not multirun:
            return f"{o.input_line}: a sweep needs -m (multirun)"
        message = _check_override(o.key_or_group, values, o.is_add(), o.is_delete(), source)
        if message:
            return f"{o.input_line}: {message}"
        choices[o.input_line] = [f"{'+' if o.is_add() else ''}{key}={v}" for v in values]
        plain.append(choices[o.input_line][0])
    message = _check_output_dir(out_dir) or _compose_all(plain, choices, hydra_args, source)
    if message or not multirun:
        return message
    task = [o.input_line for o in parsed if not o.key_or_group.startswith("hydra")]
    return check_group_sweeps(argv, parsed, source) or check_sweep_jobs(task, hydra_args, source)


def _check_modes(args) -> Optional[str]:
    """Hydra's own rule (at most one of --run, --multirun, --cfg, --info, --shell-completion,
    checked after --help/--hydra-help), as one line: Hydra itself raises a ValueError with a
    traceback."""
    if args.help or args.hydra_help:
        return None
    modes = [name for name, on in (("--run", args.run), ("--multirun", args.multirun),
                                   ("--cfg", args.cfg is not None),
                                   ("--info", args.info is not None),
                                   ("--shell-completion", args.shell_completion)) if on]
    if len(modes) > 1:
        return (f"{' and '.join(modes)} cannot be combined: Hydra takes one of --run, "
                "--multirun, --cfg, --info, --shell-completion per command")
    return None


def _check_override(key: str, values: List[str], is_add: bool, is_delete: bool,
                    source: ConfigSource = ConfigSource()) -> Optional[str]:
    if is_delete:
        return "deleting keys is not supported"
    group = key.split("@")[0]
    unknown_key = None if group in GROUPS else _check_key(key)
    if group in GROUPS or (unknown_key and "." not in group and is_group(group, source)):
        options = group_options(group, source)
        bad = [v for v in values if v not in options]  # null too: Hydra cannot compose it
        if bad:
            return f"unknown {key} '{bad[0]}'; allowed: {', '.join(options)}"
        return None
    return unknown_key


def _compose_all(plain: List[str], choices: Dict[str, List[str]], hydra_args: List[str] = (),
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
                return _plus_hint(_first_line(err), overrides) or (
                    _first_line(err) + (f" ({_first_line(cause)})" if cause is not err else ""))
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
                return f"job {name}: {_first_line(err)}"
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

