"""What a run directory holds, checked before a run starts or resumes, read-only.

``inspect(cfg, run_dir)`` reads ``run.json``, ``checkpoint.pt``, ``metrics.csv`` and
``.hydra/config.yaml``, checks them against each other and against the command's config, and
returns a ``Plan``: start afresh, resume from the checkpoint, or nothing to do (the run is
over). Whatever does not fit is refused with one line (``RunDirError``) that says what is
wrong and what to do, before anything is written. Two safe repairs lose nothing and are said
in one line each: a missing or damaged ``run.json`` is written again when the checkpoint holds
this very config, and blank lines in ``metrics.csv`` are dropped.

Configs are compared with ``same_run``: the keys that only present or resource a run
(``progress``, ``threads``, ``device``, ``logger``, ``max_memory``, ``snapshot_epochs``) may
differ, and a key the stored config lacks (added to the schema by a later commit) counts as
equal when the command's value is the schema's default.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Tuple

import yaml
from omegaconf import OmegaConf

from .config import Config
from .metrics import COLUMNS, MetricsDamage, MetricsWriter, read_json
from .rundir import CHECKPOINT, RunDirError, load_checkpoint

PRESENTATION_KEYS = ("progress", "threads", "device", "logger", "max_memory", "snapshot_epochs")
STATUSES = ("running", "finished", "diverged", "failed", "interrupted")
OTHER_DIR = "pick another output directory (hydra.run.dir / hydra.sweep.dir)"


@dataclass
class Plan:
    """What to do with a run directory: ``info`` is its run.json (None: write a new one);
    ``checkpoint`` the payload to resume from (None: start afresh); ``over`` the status of a
    run that has ended (finished or diverged); ``notes`` one line per repair or restart;
    ``added_keys`` the config keys the stored run lacks, at their defaults here."""

    info: Optional[dict] = None
    checkpoint: Optional[dict] = None
    over: Optional[str] = None
    notes: List[str] = field(default_factory=list)
    added_keys: List[str] = field(default_factory=list)


def config_dict(cfg: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)


def same_run(stored: Any, current: dict) -> Tuple[bool, str, List[str]]:
    """Whether ``stored`` (a run's recorded config) describes the run of ``current``.

    Returns ``(same, difference, added)``: the first differing key as ``'key=a there, b here'``
    and the keys ``stored`` lacks whose ``current`` value is the schema default."""
    if not isinstance(stored, dict):
        return False, "no config recorded", []
    added: List[str] = []
    difference = _compare(stored, current, config_dict(Config()), "", added)
    return difference is None, difference or "", added


def _compare(old: dict, new: dict, default: Any, prefix: str, added: List[str]) -> Optional[str]:
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        if not prefix and key in PRESENTATION_KEYS:
            continue
        sub_default = default.get(key) if isinstance(default, dict) else None
        if key not in old:
            if new[key] == sub_default:
                added.append(name)
                continue
            return f"{name} absent there, {_show(new[key])} here"
        if key not in new:
            return f"{name}={_show(old[key])} there, a key this version does not have"
        if isinstance(old[key], dict) and isinstance(new[key], dict):
            found = _compare(old[key], new[key], sub_default, f"{name}.", added)
            if found:
                return found
        elif old[key] != new[key]:
            return f"{name}={_show(old[key])} there, {_show(new[key])} here"
    return None


def _show(value: Any) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def inspect(cfg: Config, run_dir: Path) -> Plan:
    """The plan for running ``cfg`` in ``run_dir``; ``RunDirError`` (one line) if its files do
    not fit each other or this config. Reads only."""
    current = config_dict(cfg)
    info_path, ckpt_path = run_dir / "run.json", run_dir / CHECKPOINT
    info = read_json(info_path)
    info_state = "absent" if not info_path.exists() else "ok" if _sound(info) else "damaged"
    payload = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    plan = Plan()
    if info_state == "ok":
        same, difference, plan.added_keys = same_run(info["config"], current)
        if not same:
            raise RunDirError(f"{run_dir} holds a different run ({difference}); {OTHER_DIR} "
                              "instead of overwriting it")
        plan.info = info
        if info["status"] in ("finished", "diverged"):
            plan.over = info["status"]
            return plan
        if payload is not None:
            same, difference, _ = same_run(payload["config"], current)  # as run.json's is
            if not same:
                raise RunDirError(f"cannot resume {run_dir}: its checkpoint.pt belongs to another "
                                  f"run than its run.json ({difference}); delete checkpoint.pt to "
                                  f"restart the run from its beginning, or {OTHER_DIR}")
    elif payload is not None:
        same, difference, plan.added_keys = same_run(payload["config"], current)
        if not same:
            raise RunDirError(f"{run_dir} holds a different run (its checkpoint.pt: {difference}) "
                              f"and its run.json is {info_state}; {OTHER_DIR}")
        plan.notes.append(f"{info_path} is {info_state}; it is written again for this run, "
                          "whose config the checkpoint holds")
    else:
        _check_without_record(run_dir, current, info_state)
    if payload is not None:
        plan.checkpoint = payload
        plan.notes += _check_metrics(run_dir, payload["progress"])
    elif plan.info is not None and _rows(run_dir) > 1:
        plan.notes.append(f"{run_dir} has no checkpoint.pt: the run starts again from its "
                          f"beginning and metrics.csv ({_rows(run_dir)} rows) is written anew")
    return plan


def _sound(info: Optional[dict]) -> bool:
    return (info is not None and isinstance(info.get("config"), dict)
            and info.get("status") in STATUSES)


def _check_without_record(run_dir: Path, current: dict, info_state: str) -> None:
    """No usable run.json and no checkpoint: the directory may start afresh only if nothing in
    it belongs to another run and no evaluation beyond the first would be lost."""
    hydra_config = run_dir / ".hydra" / "config.yaml"
    stored = _read_yaml(hydra_config) if hydra_config.exists() else None
    if stored is not None:
        same, difference, _ = same_run(stored, current)
        if not same:
            raise RunDirError(f"{run_dir} holds a different run (its .hydra/config.yaml: "
                              f"{difference}) and its run.json is {info_state}; {OTHER_DIR}")
    rows = _rows(run_dir)
    if info_state == "damaged" or rows > 1:
        what = f"metrics.csv holds {rows} rows" if rows > 1 else "there is no checkpoint.pt"
        raise RunDirError(f"{run_dir}/run.json is {info_state} and {what}: the run cannot be "
                          "resumed and starting it again would overwrite them; restore run.json, "
                          f"or delete the directory's files to run it afresh, or {OTHER_DIR}")


def _check_metrics(run_dir: Path, progress: dict) -> List[str]:
    """The rows the checkpoint follows must all be in metrics.csv, and its last one must be the
    checkpoint's position; returns a note if blank lines will be dropped."""
    evals = progress.get("evals", 0)
    path = run_dir / "metrics.csv"
    try:
        kept = MetricsWriter(path).rows_for_resume(evals)
    except MetricsDamage as err:
        raise RunDirError(_metrics_refusal(path, str(err))) from None
    for column in ("step", "tokens"):
        if kept and column in progress and kept[-1][COLUMNS.index(column)] != str(progress[column]):
            raise RunDirError(_metrics_refusal(
                path, f"row {evals - 1} has {column}={kept[-1][COLUMNS.index(column)]} and the "
                      f"checkpoint {column}={progress[column]} "
                      f"(they are of different runs or times)"))
    if evals and b"\n\n" in path.read_bytes().replace(b"\r\n", b"\n").split(b"\n", 1)[-1]:
        return [f"{path} has blank lines; they are dropped (they hold no rows)"]
    return []


def _metrics_refusal(path: Path, problem: str) -> str:
    return (f"cannot resume from {path.parent / CHECKPOINT}: {path} {problem}; restore "
            f"metrics.csv, or delete checkpoint.pt to restart the run from its beginning "
            f"(metrics.csv is then written anew), or {OTHER_DIR}")


def _rows(run_dir: Path) -> int:
    """Non-blank lines of metrics.csv after its header (0 if absent or unreadable)."""
    try:
        lines = (run_dir / "metrics.csv").read_bytes().splitlines()[1:]
    except OSError:
        return 0
    return sum(1 for line in lines if line.strip())


def _read_yaml(path: Path) -> Optional[dict]:
    try:
        value = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return value if isinstance(value, dict) else None

