"""Hydra's joblib launcher, made to outlive a worker's death and to stop its workers on a signal.

``hydra/launcher=joblib`` selects this launcher: its config is ``JoblibConf`` (the plugin's
keys plus ``retries``), stored in Hydra's ConfigStore under the plugin's own name after Hydra
has scanned the plugins. Hydra instantiates launchers from the ``hydra_plugins`` package only,
so the class itself, ``JoblibLauncher``, and ``register`` are in
``hydra_plugins/atbptt_launcher/`` (shipped with atbptt), built on ``RetryingLaunch`` here. It runs
the jobs as Hydra's does, in loky worker processes, with two differences:

- **A worker that dies** (SIGKILL, the out-of-memory killer) breaks loky's pool, and loky then
  kills the other workers: joblib cannot keep one job's process apart from the others'. So the
  launcher runs every job that did not complete again, up to ``hydra.launcher.retries`` times
  (default 2); each resumes from its last checkpoint, so the retry loses only the evaluations
  since then. A job whose worker still dies is reported in one line, and the sweep exits 1 at
  its end (``cli.SweepReport``); the other jobs complete.
- **SIGTERM or Ctrl-C to the sweep** is forwarded to the workers as SIGTERM: each running job
  stops at once with status ``interrupted`` (``run.Interrupted``), jobs not yet started do not
  start, and the sweep exits 143 (130 for Ctrl-C) with one line saying how to resume. Workers
  ignore SIGINT themselves, so a Ctrl-C in a terminal takes this same path.
"""
from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher as _Base

WORKER_ENV = "ATBPTT_SWEEP_WORKER"  # set in worker processes: cli.task then returns, not exits

_stop_requested = False  # in a worker: the sweep is stopping, start no more jobs
gave_up: List[str] = []  # in the launching process: jobs whose worker died every time


@dataclass
class JoblibConf(JobLibLauncherConf):
    _target_: str = "hydra_plugins.atbptt_launcher.joblib_launcher.JoblibLauncher"
    retries: int = 2  # times the jobs whose worker died run again (resuming from checkpoints)


def _worker_init() -> None:
    """Runs in each new worker: SIGTERM while no run is active only marks the worker as
    stopping (a run installs its own handler, ``run.sigterm_interrupts``); SIGINT is ignored
    (the launching process forwards Ctrl-C as SIGTERM)."""
    os.environ[WORKER_ENV] = "1"

    def note_stop(signum, frame):
        global _stop_requested
        _stop_requested = True

    signal.signal(signal.SIGTERM, note_stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _job(idx: int, num: int, overrides: Sequence[str], hydra_context, config, task_function,
         singleton_state: Dict[Any, Any]):
    """One job in a worker: (its index, its JobReturn); a stopping worker skips it."""
    from hydra_plugins.hydra_joblib_launcher import _core

    global _stop_requested
    if _stop_requested:
        return idx, _skipped(overrides, "interrupted")
    ret = _core.execute_job(num, overrides, hydra_context, config, task_function, singleton_state)
    if getattr(ret, "_return_value", None) == "interrupted":  # SIGTERM reached the run itself
        _stop_requested = True
    return idx, ret


def _skipped(overrides: Sequence[str], value: str) -> JobReturn:
    ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
    ret.return_value = value
    return ret


class RetryingLaunch(_Base):
    """``hydra_joblib_launcher``'s launcher with retries and signal forwarding (see the module);
    ``ValueError`` if ``retries`` is not an integer >= 0."""

    def __init__(self, retries: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"hydra.launcher.retries={retries!r}; it must be an integer >= 0")
        self.retries = retries
        self._signum: Optional[int] = None
        self._parallel = None

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra_plugins.hydra_joblib_launcher import _core
        from joblib import Parallel, delayed
        from joblib.externals.loky.process_executor import TerminatedWorkerError

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        options = dict(self.joblib, backend="loky")
        _core.process_joblib_cfg(options)
        for idx, overrides in enumerate(job_overrides):
            _core.log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        state = Singleton.get_state()
        results: Dict[int, JobReturn] = {}
        pending = list(range(len(job_overrides)))
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for attempt in range(self.retries + 1):
                self._parallel = Parallel(return_as="generator_unordered", initializer=_worker_init,
                                          **options)
                try:
                    for idx, ret in self._parallel(
                            delayed(_job)(idx, initial_job_idx + idx, job_overrides[idx],
                                          self.hydra_context, self.config, self.task_function,
                                          state)
                            for idx in pending):
                        results[idx] = ret
                except TerminatedWorkerError as err:
                    if self._signum is not None:
                        break
                    pending = [i for i in pending if i not in results]
                    if attempt < self.retries:
                        _say(f"warning: a sweep worker process died ({_reason(err)}); the "
                             f"{len(pending)} job(s) that had not completed run again, from "
                             f"their last checkpoints (retry {attempt + 1} of {self.retries})")
                    continue
                pending = []
                break
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._parallel = None
        if self._signum is not None:
            name = signal.Signals(self._signum).name
            _say(f"sweep {sweep_dir} stopped by {name}: its running jobs are 'interrupted' at "
                 "their last evaluation; rerun the same command with "
                 f"hydra.sweep.dir={sweep_dir} to resume them")
            sys.exit(128 + self._signum)
        for idx in pending:
            name = ",".join(filter_overrides(job_overrides[idx])) or f"#{idx}"
            _say(f"job {name} did not complete: its worker process died {self.retries + 1} "
                 f"times; rerun the sweep with hydra.sweep.dir={sweep_dir} to resume it")
            gave_up.append(name)
            results[idx] = _skipped(job_overrides[idx], "failed")
        return [results[i] for i in range(len(job_overrides))]

    def _on_signal(self, signum: int, frame) -> None:
        """SIGTERM/SIGINT in the launching process: forward SIGTERM to the workers once."""
        if self._signum is not None:
            return
        self._signum = signum
        for pid in self._worker_pids():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _worker_pids(self) -> List[int]:
        executor = getattr(getattr(self._parallel, "_backend", None), "_workers", None)
        processes = getattr(executor, "_processes", None) or {}
        return [int(pid) for pid in processes]


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1][:160] if text else type(err).__name__


def _say(text: str) -> None:
    print(f"atbptt-run: {text}", file=sys.stderr, flush=True)
