"""A run's lifecycle: accept or refuse its directory, lock it, start or resume, train, and record
how it ended (``train.Trainer`` is the loop).

``run(cfg, run_dir)`` returns the run's status (``finished``, ``diverged``). Everything that can
refuse the run is checked before anything is written (``resume.inspect``: the directory's files
against each other and the config; the memory estimate; the limits that depend on the data; the
checkpoint; the lock). Once accepted, a run ends in one of these ways, each recorded in
``run.json``:

- finished or diverged: the status, and the checkpoint deleted (nothing left to resume);
- ``Interrupted`` (SIGTERM, or Ctrl-C): status ``interrupted``, the message says to rerun the
  same command to resume; the exception carries the exit code (143, 130);
- ``RunStopped`` (an OS error writing a file: a full disk, a read-only folder, or the run
  directory removed): status ``failed`` naming the file, temporary files removed, exit code 1,
  or 2 if no evaluation was recorded;
- any other exception: status ``failed`` with its message, re-raised (a bug: the CLI prints it).
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from . import artbp, memory, resume
from .config import Config, MethodName
from .data import TaskData, load_task
from .errors import RunStopped
from .files import FileWriteError, remove_temporaries
from .limits import check_data
from .metrics import git_commit, hardware, now_iso, read_json, write_json
from .models import RNNModel, num_params
from .rundir import CHECKPOINT, RunDirGone, RunDirLock, bad_checkpoint
from .train import Diverged, Trainer, build_model, resolve_device

OVER = ("finished", "diverged")


class Interrupted(KeyboardInterrupt):
    """The run was stopped by SIGTERM or SIGINT (Ctrl-C); ``code`` is the exit code (128 +
    signal number) and the message one line."""

    def __init__(self, signum: int, message: str = ""):
        self.signum, self.code = signum, 128 + signum
        self.recorded = bool(message)  # in run.json; else it came before the run was accepted
        super().__init__(message or f"interrupted by {signal.Signals(signum).name}")


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While inside, SIGTERM raises ``Interrupted`` in the main thread (as Ctrl-C raises
    KeyboardInterrupt), so a run stopped by its scheduler records it; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(cfg: Config, run_dir: Path, default_data_dir: Path = Path("data"),
        cache_dir: Optional[Path] = None, on_start: Optional[Callable[[], None]] = None) -> str:
    """Train (or resume) the run described by ``cfg`` in ``run_dir``; returns its status.

    Raises ``ConfigError`` (``rundir.RunDirError`` for the directory's files, one line) before
    anything is written if the run is refused; ``corpus.DataError`` for bad corpus files;
    ``Interrupted`` and ``RunStopped`` as in the module's docstring. ``on_start`` is called once
    the run is accepted, before its first write (the CLI writes ``.hydra/`` there)."""
    with sigterm_interrupts():
        plan = resume.inspect(cfg, run_dir)
        if plan.over:
            return _already_over(plan.over, run_dir)
        device = resolve_device(cfg.device)
        memory.check(cfg, device.type)  # before the data and the model are built
        torch.set_num_threads(cfg.threads)
        torch.set_flush_denormal(True)  # denormals slow a diverging run tenfold
        data = load_task(cfg.dataset, default_data_dir, cache_dir, progress=cfg.progress)
        check_data(cfg, data)
        model = build_model(cfg, data, device)
        torch.manual_seed(cfg.seed + 1)  # training randomness (dropout); restored on resume
        trainer = Trainer(cfg, run_dir, data, model, device)
        if plan.checkpoint is not None:
            _restore(trainer, plan.checkpoint, run_dir / CHECKPOINT)
        with RunDirLock(run_dir) as lock:
            latest = read_json(run_dir / "run.json")  # another process may have run it meanwhile
            if latest is not None and latest.get("status") in OVER:
                return _already_over(str(latest["status"]), run_dir)
            return _start(trainer, plan, lock, on_start)


def _already_over(status: str, run_dir: Path) -> str:
    """A finished or diverged run is left as it is; running it again says so."""
    (run_dir / CHECKPOINT).unlink(missing_ok=True)  # killed between run.json and its removal
    print(f"{run_dir}: run already {status}; nothing to do", flush=True)
    return status


def _restore(trainer: Trainer, payload: dict, ckpt_path: Path) -> None:
    """Load the checkpoint into ``trainer``; one-line ``RunDirError`` if it does not fit."""
    try:
        trainer.load(payload)
    except Exception as err:  # noqa: BLE001 - shapes, keys, types: whatever the file holds
        raise bad_checkpoint(ckpt_path, err) from None


def _start(trainer: Trainer, plan: resume.Plan, lock: RunDirLock,
           on_start: Optional[Callable[[], None]]) -> str:
    """Write the run's files (resumed from its restored checkpoint, or afresh); train."""
    cfg, run_dir, device = trainer.cfg, trainer.run_dir, trainer.device
    info = plan.info
    try:
        if on_start is not None:
            on_start()
        for note in plan.notes:
            _warn(note)
        if plan.checkpoint is not None:
            trainer.metrics.truncate(trainer.progress.evals)
            _say(cfg, f"resuming {run_dir} at epoch {trainer.fraction():.3f} "
                      f"({trainer.progress.evals} evaluations)")
            info = info or _run_info(cfg, trainer.data, trainer.model, device)
            _note_resume(info, plan, run_dir, cfg, device)
        else:
            trainer.metrics.truncate(0)
            info = _run_info(cfg, trainer.data, trainer.model, device)
        if plan.notes:
            info["notes"] = [*info.get("notes", []), *plan.notes]
        info.update(status="running", message="", end_time=None)
        write_json(run_dir / "run.json", info)
    except FileWriteError as err:
        _record_stop(run_dir, info, "failed", str(err), lock)
        raise RunStopped(_failed_line(err, run_dir), 2) from None
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (Interrupted), while starting
        raise _interrupted(err, trainer, info, lock) from None
    _say(cfg, f"{trainer.data.name}: {info['model']}, {info['num_params']:,} parameters, {device}, "
              f"method={cfg.method.name.value} K={cfg.K} delta={cfg.delta} -> {run_dir}")
    return _finish(trainer, info, lock)


def _mtime(path: Path) -> Optional[int]:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _finish(trainer: Trainer, info: dict, lock: RunDirLock) -> str:
    run_dir = trainer.run_dir
    original = trainer.eval_and_save

    def guarded(*args, **kwargs):  # never write into a directory that is no longer ours
        lock.verify()
        return original(*args, **kwargs)

    trainer.eval_and_save = guarded
    checkpoint_before = _mtime(run_dir / CHECKPOINT)
    try:
        trainer.fit()
        info.update(status="finished")
    except Diverged as err:
        info.update(status="diverged", message=f"diverged at epoch {trainer.fraction():.3f}: {err}")
        print(f"{run_dir}: {info['message']}", file=sys.stderr, flush=True)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (Interrupted)
        raise _interrupted(err, trainer, info, lock) from None
    except (FileWriteError, RunDirGone) as err:
        err = _gone(lock) or err  # a write that failed because the directory went: say that
        _record_stop(run_dir, info, "failed", str(err), lock)
        ran = isinstance(err, RunDirGone) or _mtime(run_dir / CHECKPOINT) != checkpoint_before
        raise RunStopped(_failed_line(err, run_dir), 1 if ran else 2) from None  # 2: nothing ran
    except BaseException as err:  # recorded, then re-raised
        _record_stop(run_dir, info, "failed", f"{type(err).__name__}: {err}", lock)
        raise
    info["end_time"] = now_iso()
    try:
        lock.verify()
        write_json(run_dir / "run.json", info)
    except (FileWriteError, RunDirGone) as err:
        remove_temporaries([run_dir, run_dir / "profiles", run_dir / "snapshots"])
        raise RunStopped(_failed_line(err, run_dir), 1) from None
    except KeyboardInterrupt as err:  # the last checkpoint is done: a resume only records it
        raise _interrupted(err, trainer, info, lock) from None
    if info["status"] in OVER:  # nothing left to resume; the metrics stay
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
    return str(info["status"])


def _interrupted(err: KeyboardInterrupt, trainer: Trainer, info: Optional[dict],
                 lock: RunDirLock) -> Interrupted:
    """Record status 'interrupted' (where there is a run.json to record it in) and return the
    exception that carries the line and the exit code."""
    signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
    message = (f"interrupted by {signal.Signals(signum).name} at evaluation "
               f"{trainer.progress.evals}; rerun the same command to resume")
    _record_stop(trainer.run_dir, info, "interrupted", message, lock)
    return Interrupted(signum, f"{trainer.run_dir}: {message}")


def _gone(lock: RunDirLock) -> Optional[RunDirGone]:
    try:
        lock.verify()
    except RunDirGone as err:
        return err
    return None


def _record_stop(run_dir: Path, info: Optional[dict], status: str, message: str,
                 lock: RunDirLock) -> None:
    """Record how the run stopped in run.json, where it can; remove temporary files."""
    remove_temporaries([run_dir, run_dir / "profiles", run_dir / "snapshots"])
    if info is None:
        return
    info.update(status=status, message=message, end_time=now_iso())
    try:
        lock.verify()
        write_json(run_dir / "run.json", info)
    except (FileWriteError, RunDirGone, OSError):
        info["unrecorded"] = True


def _failed_line(err: BaseException, run_dir: Path) -> str:
    if isinstance(err, RunDirGone):
        return str(err)
    return (f"run failed: {err}; status 'failed' in {run_dir / 'run.json'}; once the cause is "
            "gone (free space, permissions), rerun the same command to resume")


def _note_resume(info: dict, plan: resume.Plan, run_dir: Path, cfg: Config,
                 device: torch.device) -> None:
    """Resumed by another commit, with other ``threads``, on another device type, or with keys
    the stored config lacks: the result may then differ from an uninterrupted run by rounding.
    Say so on stderr (one line each) and record it in run.json."""
    commit = git_commit(Path(__file__).resolve().parent)
    started = info.get("git_commit", "unknown")
    if "unknown" not in (started, commit) and commit != started:
        _warn(f"{run_dir} was started by commit {started[:10]} and is resumed by {commit[:10]}; "
              "the result may differ from an uninterrupted run by rounding")
        info["resumed_by_commits"] = [*info.get("resumed_by_commits", []), commit]
    if plan.added_keys:
        _warn(f"{run_dir} was recorded without the keys {', '.join(plan.added_keys)} (added "
              "since); they are at their defaults here, and the run goes on")
        info["config_keys_added"] = sorted({*info.get("config_keys_added", []), *plan.added_keys})
        info["config"] = resume.config_dict(cfg)
    for key, now, record in (("threads", cfg.threads, "resumed_with_threads"),
                             ("device", device.type, "resumed_on_devices")):
        before = (info.get(record) or [info.get(key)])[-1]
        if before is not None and before != now:
            _warn(f"{run_dir} ran with {key}={before} so far and is resumed with {key}={now}; "
                  "the result may differ from an uninterrupted run by rounding")
            info[record] = [*info.get(record, []), now]


def _run_info(cfg: Config, data: TaskData, model: RNNModel, device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else hardware()["cpu"]
    return {
        "status": "running", "message": "", "experiment": cfg.experiment, "dataset": data.name,
        "task": "classification" if data.classification else "regression",
        "method": cfg.method.name.value, "K": cfg.K, "delta": cfg.delta, "seed": cfg.seed,
        "style": cfg.method.style.value, "model": f"{cfg.model.cell.value.upper()} "
        f"{cfg.model.num_layers}x{cfg.model.hidden_size}", "init": cfg.model.init.value,
        "grad_norm_bound": cfg.method.grad_norm_bound.value,
        "artbp": None if cfg.method.name != MethodName.artbp else {
            **artbp.Schedule.from_config(cfg).describe(), "draws": cfg.method.artbp_draws},
        "vocab_size": data.info.get("vocab_size"), "dims": data.info.get("dims"),
        "true_rho": data.info.get("true_rho"), "ppl_floor": data.info.get("ppl_floor"),
        "data_file": data.info.get("data_file"), "data_sha256": data.info.get("data_sha256"),
        "tokens": data.tokens, "num_params": num_params(model),
        "device": device.type, "device_name": name, "torch_version": torch.__version__,
        "git_commit": git_commit(Path(__file__).resolve().parent), **hardware(),
        "threads": torch.get_num_threads(), "epochs_budget": cfg.epochs, "max_time": cfg.max_time,
        "start_time": now_iso(), "end_time": None, "config": resume.config_dict(cfg),
    }


def _warn(text: str) -> None:
    print(f"atbptt-run: warning: {text}", file=sys.stderr, flush=True)


def _say(cfg: Config, text: str) -> None:
    if cfg.progress:
        print(text, flush=True)
