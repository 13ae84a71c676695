"""Writing a run's files: atomic replacement under a per-process temporary name, and OS errors
(a full disk, a read-only or vanished folder) turned into one line that names the file.

Every whole-file write goes to ``<name>.<pid>.tmp`` beside the file, then ``os.replace``: a kill
at any moment leaves the old or the new file, never a mix, and two processes never share a
temporary name. ``remove_temporaries`` deletes the temporary files this process left behind
(after a failed write, or when a run stops on an error or a signal).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Union

from .errors import FileWriteError


def tmp_name(path: Path) -> Path:
    """This process's temporary name for ``path``: ``<name>.<pid>.tmp`` in the same folder."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def atomic_write(path: Path, data: Union[bytes, str], fsync: bool = False) -> None:
    """Replace ``path`` by ``data`` (str: UTF-8, ``\\n`` line endings kept as given).

    Raises ``FileWriteError`` naming ``path`` if the OS refuses (the temporary file is removed)."""
    tmp = tmp_name(path)
    payload = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _unlink_quietly(tmp)
        raise FileWriteError(path, err) from None
    except BaseException:  # a signal mid-write: no temporary left behind
        _unlink_quietly(tmp)
        raise


def append_line(path: Path, line: str) -> None:
    """Append one line (``\\n`` added) and fsync; ``FileWriteError`` naming ``path`` on failure."""
    try:
        with open(path, "a", newline="") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise FileWriteError(path, err) from None


def remove_temporaries(folders: Iterable[Path]) -> None:
    """Delete this process's temporary files (``*.<pid>.tmp``) in ``folders``; never raises."""
    suffix = f".{os.getpid()}.tmp"
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if name.endswith(suffix):
                _unlink_quietly(Path(folder) / name)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
