"""The errors atbptt raises on purpose, under one base class.

``AtbpttError`` is the base; its message is always one line. The command line
(``atbptt.cli``) turns ``ConfigError`` and ``DataError`` (bad input) into that line and exit
code 2 before anything is written, and a run's own failures (``RunStopped``, ``Diverged``)
into its recorded status; library users can catch ``AtbpttError`` for all of them.
"""
from __future__ import annotations

import errno as errno_codes
from pathlib import Path
from typing import Union


class AtbpttError(Exception):
    """Base of every error atbptt raises on purpose; the message is one line."""


class ConfigError(AtbpttError, ValueError):
    """A configuration value is out of range; the message is one line naming the key."""


class DataError(AtbpttError, ValueError):
    """A data file is missing, corrupt or cannot be fetched; the message is one line."""


class RunDirError(ConfigError):
    """The run directory cannot be used as asked; the message is one line saying what to do."""


class RunDirGone(AtbpttError, RuntimeError):
    """The locked run directory was removed or replaced while the run held it."""


class MetricsDamage(AtbpttError, ValueError):
    """metrics.csv cannot back a resume; the message says what is wrong with it (one line)."""


class FileWriteError(AtbpttError, RuntimeError):
    """A run file could not be written (``OSError`` underneath); the message is one line naming
    the file, the reason and its errno name, e.g. ``cannot write run/metrics.csv: No space left
    on device (ENOSPC)``."""

    def __init__(self, path: Union[str, Path], err: OSError):
        self.path = Path(path)
        self.errno = err.errno
        name = errno_codes.errorcode.get(err.errno or 0, "")
        reason = err.strerror or str(err) or type(err).__name__
        super().__init__(f"cannot write {self.path}: {reason}{f' ({name})' if name else ''}")


class Diverged(AtbpttError, RuntimeError):
    """The weights, the training loss or an evaluation loss became NaN or inf."""


class RunStopped(AtbpttError):
    """The run stopped on an error it recorded (an OS error on one of its files, its directory
    removed); the message is one line and ``code`` the exit code."""

    def __init__(self, message: str, code: int):
        self.code = code
        super().__init__(message)
