"""One-line errors for bad input, checked before Hydra runs anything.

``precheck(argv)`` reads the command line with Hydra's own parser (so ``-cd/--config-dir``,
``-cp/--config-path`` and ``-cn/--config-name`` are understood, and a user config directory's
presets are options like the packaged ones: ``config_source``) and checks it here: the mode
flags, each override's key (against the schema) and value (a config group's options), the
output directory. It then composes the config for every value of every override (sweep values
one at a time) and, for a sweep, every job as Hydra's basic sweeper will
(``compose_check``: each must be valid, and no two may share a directory), and returns a
one-line message naming the key and what is allowed, or ``None``. ``to_config``,
``sweep_jobs``, ``check_sweep_jobs`` and ``check_group_sweeps`` live in ``compose_check`` and
are re-exported here.
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import List, Optional

from .compose_check import (  # noqa: F401  (re-exported: composing and checking configs)
    check_group_sweeps, check_sweep_jobs, compose_all, first_line, sweep_jobs, to_config)
from .config import Config
from .config_source import ConfigSource, hydra_argv, is_group
from .config_source import group_options as _options

GROUPS = ("dataset", "model", "method", "experiment", "setting")
# flags after which Hydra does not run a job (help, printing the config, completion...)
_NO_JOB_FLAGS = {"-h", "--help", "--hydra-help", "--info", "-i", "-c", "--cfg",
                 "--shell-completion", "-sc"}


def group_options(group: str, source: ConfigSource = ConfigSource()) -> List[str]:
    """The options of a config group, the user's config directory's included."""
    return _options(group, source)


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
        return f"cannot parse overrides: {first_line(err)}"
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
    message = _check_output_dir(out_dir) or compose_all(plain, choices, hydra_args, source)
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
