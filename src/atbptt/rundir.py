"""A run directory's lifecycle: the lock that keeps it to one process, and the checkpoint.

A run holds an exclusive ``flock`` on ``<run dir>/run.lock`` for as long as it trains. The OS
drops the lock when the process ends, however it ends (SIGKILL included), so a lock never
outlives its run and never blocks a resume. A second process on the same directory is refused
with one line naming the holder (pid and host, read from the lock file), and writes nothing.

The checkpoint is written atomically (temporary file, then ``os.replace``) and read back with
``weights_only=True`` onto the CPU: it holds tensors and plain Python values only, so loading a
checkpoint cannot run code, and the caller moves each part to its own device (RNG states stay
on the CPU, where ``torch.set_rng_state`` needs them).
"""
from __future__ import annotations

import errno
import fcntl
import os
import pickle
import socket
import sys
from pathlib import Path
from typing import Optional

import torch

from .config import ConfigError

LOCK_FILE = "run.lock"
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_KEYS = ("config", "model", "optimizer", "progress", "walker", "rng", "cuda_rng")
# file systems without flock support: the run goes on unlocked, with a warning
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class RunDirError(ConfigError):
    """The run directory cannot be used as asked; the message is one line saying what to do."""


class RunDirLock:
    """Exclusive lock on a run directory, held until ``release`` or the process ends.

    ``with RunDirLock(run_dir): ...`` creates the directory if needed and raises ``RunDirError``
    if another process holds it."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self) -> "RunDirLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # an existing file is not changed
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in _NO_LOCKING:
                raise RunDirError(f"{self.run_dir} is in use by another run ({self.holder()}); wait "
                                  "for it to end, or pick another output directory "
                                  "(hydra.run.dir / hydra.sweep.dir)") from None
            print(f"atbptt-run: warning: cannot lock {self.run_dir} ({err.strerror}); a second "
                  "process on this directory would not be stopped", file=sys.stderr, flush=True)
            return self
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it ('pid 123 on host')."""
        try:
            return self.path.read_text().strip() or "holder unknown"
        except OSError:
            return "holder unknown"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the lock
            self._fd = None

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write ``payload`` atomically: a kill leaves the previous checkpoint intact."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """The checkpoint's payload, every tensor on the CPU, loaded as weights only.

    A truncated, corrupt or unsafe file raises ``RunDirError`` naming the file and how to go on."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # raised for objects other than tensors and plain values
        what = ("holds objects other than tensors and plain values (loading it could run code)"
                if "weights only" in str(err).lower() else f"is corrupt ({_first_line(err)})")
        raise RunDirError(_cannot_resume(path, what)) from None
    except Exception as err:  # noqa: BLE001 - torch.load raises many kinds for a broken file
        detail = f"{type(err).__name__}: {_first_line(err)}"
        raise RunDirError(_cannot_resume(path, f"is truncated or corrupt ({detail})")) from None
    if not isinstance(payload, dict) or any(key not in payload for key in CHECKPOINT_KEYS):
        raise RunDirError(_cannot_resume(path, "is not a checkpoint of this program"))
    return payload


def bad_checkpoint(path: Path, err: BaseException) -> RunDirError:
    """The error for a checkpoint whose contents do not fit the run (shapes, keys, types)."""
    return RunDirError(_cannot_resume(path, f"does not fit this run ({type(err).__name__}: {_first_line(err)})"))


def _cannot_resume(path: Path, what: str) -> str:
    return (f"cannot resume from {path}: the file {what}; delete it to restart the run from its "
            "beginning, or pick another output directory (hydra.run.dir / hydra.sweep.dir)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
