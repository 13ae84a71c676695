"""A run directory's lock, which keeps it to one process, and its checkpoint file.

The lock is an exclusive ``flock`` on an open descriptor of the run directory itself, and a
second one on ``<run dir>/run.lock`` (which names the holder; on NFS, where directories cannot
be locked, it is the lock). Removing ``run.lock`` does not release the lock: the directory's
own lock still refuses a second process, and the holder writes ``run.lock`` again at its next
check. The OS drops both locks when the process ends, however it ends (SIGKILL included), so
a lock never outlives its run and never blocks a resume. ``verify`` tells the holder when its
directory was removed or replaced (``rm -rf``): it then stops instead of writing elsewhere.

The checkpoint is written atomically (``files.atomic_write``, serialized in memory first so
that an OS error names its errno) and read back with ``weights_only=True`` onto the CPU: it
holds tensors and plain Python values only, so loading a checkpoint cannot run code, and the
caller moves each part to its own device (RNG states stay on the CPU).
"""
from __future__ import annotations

import errno
import fcntl
import io
import os
import pickle
import socket
import sys
from pathlib import Path
from typing import Optional, Tuple

import torch

from .errors import FileWriteError, RunDirError, RunDirGone
from .files import atomic_write

LOCK_FILE = "run.lock"
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_KEYS = ("config", "model", "optimizer", "progress", "walker", "rng", "cuda_rng")
# file systems without flock support (or, for a directory, NFS: EBADF): skipped, with a warning
# if neither lock can be taken
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF}


class RunDirLock:
    """Exclusive lock on a run directory, held until ``release`` or the process ends.

    ``with RunDirLock(run_dir): ...`` creates the directory if needed and raises ``RunDirError``
    if another process holds it (an ``OSError`` if the directory cannot be created)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._dir_fd: Optional[int] = None
        self._file_fd: Optional[int] = None
        self._identity: Optional[Tuple[int, int]] = None

    def acquire(self) -> "RunDirLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dir_fd = os.open(self.run_dir, os.O_RDONLY | os.O_DIRECTORY)
        file_fd: Optional[int] = None
        try:
            dir_locked = self._flock(dir_fd)
            file_fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # an existing file is kept
            file_locked = self._flock(file_fd)
        except BaseException:
            for fd in (file_fd, dir_fd):
                if fd is not None:
                    os.close(fd)
            raise
        if not (dir_locked or file_locked):
            print(f"atbptt-run: warning: cannot lock {self.run_dir} (the file system does not "
                  "support locks); a second process on this directory would not be stopped",
                  file=sys.stderr, flush=True)
        self._dir_fd, self._file_fd, self._identity = dir_fd, file_fd, _identity_of(dir_fd)
        _write_holder(file_fd)
        return self

    def _flock(self, fd: int) -> bool:
        """Lock ``fd``: True if locked, False if locks are not supported here; ``RunDirError``
        naming the holder if another process holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as err:
            if err.errno in _NO_LOCKING:
                return False
            raise RunDirError(f"{self.run_dir} is in use by another run ({self.holder()}); wait "
                              "for it to end, or pick another output directory "
                              "(hydra.run.dir / hydra.sweep.dir)") from None

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it ('pid 123 on host')."""
        try:
            return self.path.read_text().strip() or "holder unknown"
        except OSError:
            return "holder unknown"

    def verify(self) -> None:
        """Check, before writing, that the directory is still the one locked: raise
        ``RunDirGone`` if it was removed or replaced. A removed ``run.lock`` is written and
        locked again (``RunDirGone`` if another process locked a new one meanwhile)."""
        if self._dir_fd is None:
            return
        try:
            st = os.stat(self.run_dir)
            here = (st.st_dev, st.st_ino)
        except OSError:
            here = None
        if here != self._identity:
            what = "removed" if here is None else "replaced by another directory"
            raise RunDirGone(f"{self.run_dir} was {what} while this run was writing it; the run "
                             "stops here and writes nothing more (its files went with the "
                             "directory); run it again in a new output directory")
        try:
            on_disk = os.stat(self.path)
            if (on_disk.st_dev, on_disk.st_ino) == _identity_of(self._file_fd):
                return
        except OSError:
            pass
        self._relock_file()

    def _relock_file(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in _NO_LOCKING:
                return
            raise RunDirGone(f"{self.path} was replaced and locked by another process while "
                             "this run held the directory; the run stops here") from None
        if self._file_fd is not None:
            os.close(self._file_fd)
        self._file_fd = fd
        _write_holder(fd)

    def release(self) -> None:
        for fd in (self._file_fd, self._dir_fd):  # closing the descriptors releases the locks
            if fd is not None:
                os.close(fd)
        self._file_fd = self._dir_fd = None

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _identity_of(fd: Optional[int]) -> Optional[Tuple[int, int]]:
    if fd is None:
        return None
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _write_holder(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    except OSError:  # a full disk: the lock holds all the same, only its note is missing
        pass


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write ``payload`` atomically: a kill leaves the previous checkpoint intact.

    Raises ``FileWriteError`` naming ``path`` if the OS refuses the write (no temporary file
    is left behind)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(path, buffer.getbuffer())


def load_checkpoint(path: Path) -> dict:
    """The checkpoint's payload, every tensor on the CPU, loaded as weights only.

    A truncated, corrupt or unsafe file, or one whose parts have the wrong types, raises
    ``RunDirError`` naming the file and how to go on."""
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
    problem = _type_problem(payload)
    if problem:
        raise RunDirError(_cannot_resume(path, f"is damaged ({problem})"))
    return payload


def _type_problem(payload: dict) -> Optional[str]:
    """What in a loaded checkpoint has the wrong type, or None."""
    def is_bytes_state(value) -> bool:
        return isinstance(value, torch.Tensor) and value.dtype == torch.uint8

    checks = (
        ("config", isinstance(payload["config"], dict), "a dict"),
        ("model", isinstance(payload["model"], dict)
         and all(isinstance(v, torch.Tensor) for v in payload["model"].values()),
         "tensors by name"),
        ("optimizer", isinstance(payload["optimizer"], dict), "a dict"),
        ("progress", isinstance(payload["progress"], dict)
         and _count(payload["progress"].get("evals", 0)), "a dict with a count 'evals'"),
        ("walker", isinstance(payload["walker"], (tuple, list)) and len(payload["walker"]) == 3,
         "(position, anchor, state)"),
        ("rng", is_bytes_state(payload["rng"]), "a uint8 tensor (torch.get_rng_state())"),
        ("cuda_rng", payload["cuda_rng"] is None
         or (isinstance(payload["cuda_rng"], (list, tuple))
             and all(map(is_bytes_state, payload["cuda_rng"]))),
         "None or uint8 tensors"),
    )
    for key, ok, expected in checks:
        if not ok:
            return f"'{key}' is {type(payload[key]).__name__}, expected {expected}"
    return None


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def bad_checkpoint(path: Path, err: BaseException) -> RunDirError:
    """The error for a checkpoint whose contents do not fit the run (shapes, keys, types)."""
    return RunDirError(_cannot_resume(
        path, f"does not fit this run ({type(err).__name__}: {_first_line(err)})"))


def _cannot_resume(path: Path, what: str) -> str:
    return (f"cannot resume from {path}: the file {what}; delete it to restart the run from its "
            "beginning, or pick another output directory (hydra.run.dir / hydra.sweep.dir)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


__all__ = ["CHECKPOINT", "CHECKPOINT_KEYS", "FileWriteError", "LOCK_FILE", "RunDirError",
           "RunDirGone", "RunDirLock", "bad_checkpoint", "load_checkpoint", "save_checkpoint"]
