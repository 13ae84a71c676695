"""Checks for a sweep sent to SLURM (``hydra/launcher=submitit_slurm``) before it submits.

Hydra's submitit launcher writes the sweep directory and its ``.submitit/`` pickles, then calls
``sbatch``; without a scheduler, or with a partition the cluster does not have, ``sbatch``
fails there and the launcher raises with a traceback, leaving those files behind.
``check_launcher`` asks the scheduler first (``sinfo``, read-only, a fraction of a second) and
returns one line that names the key and what is allowed, or ``None``:

- ``sbatch``/``sinfo`` not on PATH: no scheduler on this machine;
- ``SLURM_CONF`` names a file that does not exist;
- ``sinfo`` fails: the controller does not answer (its first line of error);
- ``hydra.launcher.partition`` not among the cluster's partitions, or not up;
- no partition given and the cluster has no default partition.

Used with the composed config (``return_hydra_config=True``) of a command line, e.g.
``check_launcher(compose("config", overrides, return_hydra_config=True))``. Any other launcher
(basic, joblib, submitit_local) passes unchecked.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
SINFO_TIMEOUT_S = 15.0


def check_launcher(cfg: Mapping) -> Optional[str]:
    """One line if the sweep's launcher cannot submit, else ``None``.

    ``cfg``: a composed config with its ``hydra`` node (an OmegaConf ``DictConfig`` or a plain
    mapping); only ``hydra.launcher`` is read. Never raises for a reachable or missing scheduler."""
    hydra = cfg.get("hydra") if hasattr(cfg, "get") else None
    launcher = hydra.get("launcher") if hydra is not None else None
    if launcher is None or launcher.get("_target_") != SLURM_LAUNCHER:
        return None
    return check_slurm(launcher.get("partition"))


def check_slurm(partition: Optional[str] = None) -> Optional[str]:
    """One line if jobs cannot be submitted to ``partition`` (``None``: the default one)."""
    missing = [cmd for cmd in ("sbatch", "sinfo") if shutil.which(cmd) is None]
    if missing:
        return (f"hydra/launcher=submitit_slurm: no SLURM scheduler on this machine ("
                f"{' and '.join(repr(c) for c in missing)} not found on PATH); submit from the "
                "cluster's login node, start a local one (scripts/slurm_local.sh start), or use "
                "hydra/launcher=submitit_local")
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():
        return (f"hydra/launcher=submitit_slurm: SLURM_CONF={conf} is not a file; point it at "
                "the cluster's slurm.conf")
    found = partitions()
    if isinstance(found, str):
        return f"hydra/launcher=submitit_slurm: the SLURM controller does not answer: {found}"
    names = ", ".join(name for name, _, _ in found) or "none"
    if partition is None:
        if not any(default for _, default, _ in found):
            return ("hydra.launcher.partition is not set and the cluster has no default "
                    f"partition; allowed: {names}")
        return None
    for name, _, state in found:
        if name == str(partition):
            if state != "up":
                up = ", ".join(n for n, _, s in found if s == "up") or "none"
                return (f"hydra.launcher.partition={partition}: the partition is {state}; "
                        f"partitions up: {up}")
            return None
    return f"hydra.launcher.partition={partition}: unknown partition; allowed: {names}"


def partitions() -> List[Tuple[str, bool, str]] | str:
    """``[(name, is_default, availability)]`` from ``sinfo`` (availability ``up``, ``down``,
    ``drain``, ``inact``), or the first line of ``sinfo``'s error when the controller does not
    answer."""
    try:
        res = subprocess.run(["sinfo", "--noheader", "--format=%P %a"], capture_output=True,
                             text=True, timeout=SINFO_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"sinfo: {type(err).__name__}: {err}"
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr or res.stdout).splitlines() if ln.strip()]
        return lines[-1].strip() if lines else f"sinfo exited with code {res.returncode}"
    return _parse_sinfo(res.stdout.splitlines())


def _parse_sinfo(lines: Sequence[str]) -> List[Tuple[str, bool, str]]:
    """``sinfo -h -o '%P %a'`` lines (``debug* up``; one per partition and node state, so
    partitions may repeat) to unique ``(name, is_default, availability)``."""
    seen: Dict[str, Tuple[str, bool, str]] = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2:
            continue
        name, avail = parts
        default = name.endswith("*")
        name = name.rstrip("*")
        seen.setdefault(name, (name, default, avail))
    return list(seen.values())

