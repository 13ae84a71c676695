"""Where the configs come from, as Hydra's own flags say: the packaged ``atbptt.conf``, or another
primary config folder (``--config-path``/``-cp``) and name (``--config-name``/``-cn``), plus a
user config directory searched as well (``--config-dir``/``-cd``: its presets, such as
``+experiment=mine`` from ``DIR/experiment/mine.yaml``).

``composing(source)`` sets Hydra up with the search path Hydra itself builds for ``atbptt-run``
with those flags, so that the pre-check composes exactly what the run will; ``group_options``
lists a config group's options over that search path. ``register_resolvers`` registers the
resolver conf/config.yaml uses (``short_dirname``), for the CLI and the pre-check alike.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

PACKAGED = "pkg://atbptt.conf"
CLI_FILE = str(Path(__file__).with_name("cli.py"))  # the file that declares @hydra.main
MAX_DIRNAME = 120  # file names are limited to 255 bytes; long override lists get a hash


@dataclass(frozen=True)
class ConfigSource:
    config_dir: Optional[str] = None  # --config-dir / -cd: searched besides the primary folder
    config_path: Optional[str] = None  # --config-path / -cp: replaces the packaged folder
    config_name: str = "config"  # --config-name / -cn

    @staticmethod
    def from_args(args: argparse.Namespace) -> "ConfigSource":
        """From Hydra's parsed command line (``hydra._internal.utils.get_args_parser``)."""
        return ConfigSource(args.config_dir, args.config_path, args.config_name or "config")

    def problem(self) -> Optional[str]:
        """A one-line message if a flag names a folder that is not there, else None."""
        if self.config_dir is not None and not Path(self.config_dir).expanduser().is_dir():
            return (f"--config-dir {self.config_dir}: no such directory "
                    f"({os.path.abspath(self.config_dir)}); give a folder holding your configs")
        if self.config_path is not None and "://" not in self.config_path:
            folder = Path(self.config_path) if os.path.isabs(self.config_path) else (
                Path(CLI_FILE).parent / self.config_path)
            if not folder.is_dir():
                return (f"--config-path {self.config_path}: no such directory ({folder}); it is "
                        "absolute, or relative to the atbptt package, or pkg://module")
        return None


def short_dirname(overrides: str) -> str:
    """A sweep job's sub-directory: its overrides, shortened with a stable hash if too long."""
    if len(overrides) <= MAX_DIRNAME:
        return overrides
    digest = hashlib.sha1(overrides.encode()).hexdigest()[:10]
    return f"{overrides[:MAX_DIRNAME - 11]}~{digest}"


def register_resolvers() -> None:
    """Register ``${short_dirname:...}`` (``hydra.sweep.subdir`` in conf/config.yaml)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("short_dirname"):
        OmegaConf.register_new_resolver("short_dirname", short_dirname)


@contextlib.contextmanager
def composing(source: ConfigSource = ConfigSource()) -> Iterator[None]:
    """Within this block, ``hydra.compose`` composes from ``source``'s search path."""
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import compute_search_path_dir, create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    from hydra_plugins.atbptt_launcher.joblib_launcher import register as register_launcher

    from .config import register_configs

    register_configs()
    register_launcher()
    register_resolvers()
    backup = get_gh_backup()
    version.setbase("1.3")
    primary = compute_search_path_dir(CLI_FILE, None, source.config_path or PACKAGED)
    search_path = create_config_search_path(primary)
    if source.config_dir is not None:  # as hydra._internal.utils._run_hydra adds it
        search_path.prepend(provider="command-line",
                            path=f"file://{os.path.abspath(os.path.expanduser(source.config_dir))}",
                            anchor=SearchPathQuery(provider="schema"))
    try:
        Hydra.create_main_hydra2(task_name="cli", config_search_path=search_path)
        yield
    finally:
        restore_gh_from_backup(backup)


def group_options(group: str, source: ConfigSource = ConfigSource()) -> List[str]:
    """The options of config group ``group`` (e.g. ``experiment``) over ``source``'s search path."""
    from hydra.core.global_hydra import GlobalHydra

    with composing(source):
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


def hydra_argv(argv: List[str]) -> List[str]:
    """``argv`` with Hydra's flags (and their values) moved before the overrides, each kept in
    its order: Hydra's parser takes the overrides as one run of positional arguments, so
    ``K=3 -cd DIR seed=1`` would otherwise leave ``seed=1`` unrecognized."""
    from hydra._internal.utils import get_args_parser

    actions = get_args_parser()._option_string_actions
    flags: List[str] = []
    overrides: List[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        action = actions.get(token.split("=", 1)[0]) if token.startswith("-") else None
        if action is None:
            (flags if token.startswith("-") else overrides).append(token)
            continue
        flags.append(token)
        if "=" in token or action.nargs == 0 or i >= len(argv):
            continue
        if action.nargs != "?" or argv[i] in (action.choices or ()):
            flags.append(argv[i])
            i += 1
    return flags + overrides


def is_group(name: str, source: ConfigSource = ConfigSource()) -> bool:
    """Whether ``name`` is a config group with options there (a user's own group included)."""
    return bool(group_options(name, source))
