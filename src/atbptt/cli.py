"""``atbptt-run``: Hydra at the edge. Compose, convert to typed objects, hand them to ``run.run``.

Before Hydra starts, every command-line override is checked (``precheck``) so that bad input
gives one line naming the key and what is allowed, and a non-zero exit, not a traceback.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.atbptt_launcher.joblib_launcher import register as register_launcher

from .config import register_configs
from .errors import ConfigError, DataError
from .config_source import register_resolvers
from .launcher import WORKER_ENV, gave_up
from .validate import precheck, to_config

register_configs()
register_launcher()
register_resolvers()  # ${short_dirname:...} in conf/config.yaml
REFUSED_ENV = "ATBPTT_REFUSED_FILE"  # set by SweepReport: where sweep jobs list refusals


def _fail(message: str, code: int = 2) -> NoReturn:
    print(f"atbptt-run: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def save_hydra_files(cfg: DictConfig, run_dir: Path) -> None:
    """The ``.hydra/`` files Hydra would write before the job starts (``hydra.output_subdir``
    is null in conf/config.yaml so that they are written only once the run dir is accepted);
    ``files.FileWriteError`` if the OS refuses."""
    from .files import FileWriteError, atomic_write

    folder = run_dir / ".hydra"
    try:
        folder.mkdir(exist_ok=True)
    except OSError as err:
        raise FileWriteError(folder, err) from None
    hydra_cfg = HydraConfig.instance().cfg
    for name, node in (("config.yaml", cfg), ("hydra.yaml", hydra_cfg),
                       ("overrides.yaml", hydra_cfg.hydra.overrides.task)):
        atomic_write(folder / name, OmegaConf.to_yaml(node))


class SweepReport(Callback):
    """Registered in conf/config.yaml; runs in the launching process, whatever the launcher.

    At the start it names this launch's list of refused jobs, ``<sweep dir>/refused-<pid>.txt``
    (absolute, passed to the jobs in ``ATBPTT_REFUSED_FILE``, so two sweeps into one directory
    keep separate lists); at the end, if jobs were refused (a directory holding another run or
    in use by another process, or a config that does not fit its data), it exits 2 with one
    line, so a script notices, while every other job still ran; if jobs did not complete
    because their joblib worker died at every retry (``launcher``), it exits 1."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        path = Path(os.getcwd(), config.hydra.sweep.dir, f"refused-{os.getpid()}.txt")
        os.environ[REFUSED_ENV] = str(path)  # launcher workers start later and inherit it
        path.unlink(missing_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        path = Path(os.environ.pop(REFUSED_ENV, ""))
        refused = path.read_text().splitlines() if path.is_file() else []
        if refused:
            _fail(f"{len(refused)} sweep job(s) refused, for the reasons printed above "
                  f"(their directories are listed in {path}); the other jobs ran")
        if gave_up:  # hydra/launcher=joblib: jobs whose worker process died at every retry
            _fail(f"{len(gave_up)} sweep job(s) did not complete (their worker process died), "
                  "as printed above; the other jobs ran", 1)


@hydra.main(version_base="1.3", config_path="pkg://atbptt.conf", config_name="config")
def task(cfg: DictConfig) -> str:
    from .run import RunStopped, run

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    try:
        config = to_config(cfg)
        if multirun:  # one job per process slot: sweeps share the cores
            config.threads = 1
        # .hydra/ is written only once the run is accepted: a refused run leaves the directory
        # as it was (another run's .hydra/ included)
        return run(config, run_dir, Path(hc.runtime.cwd) / "data",
                   on_start=lambda: save_hydra_files(cfg, run_dir))
    except (ConfigError, DataError) as err:
        if multirun:  # this job only: the other jobs go on, and SweepReport makes the sweep exit 2
            return _refuse_job(hc, run_dir, err)
        _fail(str(err))
    except RunStopped as err:  # recorded in run.json: one line, no traceback
        if not multirun:
            _fail(str(err), err.code)
        print(f"atbptt-run: job {hc.job.override_dirname} failed: {err}", file=sys.stderr,
              flush=True)
        return "failed"
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM (run.Interrupted)
        return _interrupted(err, run_dir)
    except Exception as err:  # after acceptance, the run recorded status 'failed' in its run.json
        if not multirun:
            traceback.print_exc()
            _fail(f"run failed: {type(err).__name__}: {err}{_see_run_json(run_dir, err)}", 1)
        print(f"atbptt-run: job {hc.job.override_dirname} failed: {type(err).__name__}: {err}",
              file=sys.stderr, flush=True)
        return "failed"  # the other jobs of the sweep go on


def _interrupted(err: KeyboardInterrupt, run_dir: Path) -> str:
    """One line; exit 130 (Ctrl-C) or 143 (SIGTERM). In a sweep worker (joblib), the job ends
    as 'interrupted' and the worker lives on: the launching process decides whether to stop."""
    import signal

    signum = getattr(err, "signum", signal.SIGINT)
    text = str(err) if getattr(err, "recorded", False) else (
        f"{run_dir}: interrupted by {signal.Signals(signum).name} before the run started; "
        "nothing was written there")
    print(f"atbptt-run: {text}", file=sys.stderr, flush=True)
    if os.environ.get(WORKER_ENV):
        return "interrupted"
    sys.exit(128 + signum)


def _refuse_job(hc, run_dir: Path, err: Exception) -> str:
    """Print a sweep job's refusal and list its directory in ``ATBPTT_REFUSED_FILE``."""
    print(f"atbptt-run: error: job {hc.job.override_dirname or hc.job.num} refused: {err}",
          file=sys.stderr, flush=True)
    listing = os.environ.get(REFUSED_ENV)
    try:
        if listing:
            with open(listing, "a") as f:  # one short O_APPEND write
                f.write(f"{Path(hc.runtime.cwd, run_dir)}\n")
    except OSError as io_err:
        print(f"atbptt-run: cannot list the refused job in {listing}: {io_err}",
              file=sys.stderr, flush=True)
    return "refused"


def _see_run_json(run_dir: Path, err: Exception) -> str:
    """' (see <run.json>)' if the run recorded this failure there, else '' (it failed before
    it was accepted, and any run.json is an earlier run's)."""
    from .metrics import read_json

    info = read_json(run_dir / "run.json") or {}
    recorded = (info.get("status") == "failed"
                and info.get("message") == f"{type(err).__name__}: {err}")
    return f" (see {run_dir / 'run.json'})" if recorded else ""


def main() -> None:
    from .config_source import hydra_argv

    sys.argv[1:] = hydra_argv(sys.argv[1:])  # Hydra's flags may stand among the overrides
    message = precheck(sys.argv[1:])
    if message:
        _fail(message)
    task()


if __name__ == "__main__":
    main()

