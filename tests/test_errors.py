"""atbptt.errors: one base class for every error raised on purpose, importable where it was."""
import pytest

from atbptt import config, errors, files, metrics, rundir
from atbptt.config import Config
from atbptt.data import DataError, streams


def test_every_error_is_an_atbptt_error_and_keeps_its_builtin_base():
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.DataError, ValueError)
    assert issubclass(errors.RunDirError, errors.ConfigError)
    assert issubclass(errors.MetricsDamage, ValueError)
    assert issubclass(errors.FileWriteError, RuntimeError)
    assert issubclass(errors.RunDirGone, RuntimeError)
    assert issubclass(errors.Diverged, RuntimeError)
    for name in ("ConfigError", "DataError", "RunDirError", "RunDirGone", "MetricsDamage",
                 "FileWriteError", "Diverged", "RunStopped"):
        assert issubclass(getattr(errors, name), errors.AtbpttError), name


def test_the_old_import_paths_name_the_same_classes():
    from atbptt.evaluation import Diverged
    from atbptt.run import RunStopped

    assert config.ConfigError is errors.ConfigError
    assert DataError is streams.DataError is errors.DataError
    assert rundir.RunDirError is errors.RunDirError and rundir.RunDirGone is errors.RunDirGone
    assert metrics.MetricsDamage is errors.MetricsDamage
    assert files.FileWriteError is errors.FileWriteError
    assert Diverged is errors.Diverged and RunStopped is errors.RunStopped


def test_a_bad_value_is_caught_as_the_base_class_with_one_line():
    with pytest.raises(errors.AtbpttError) as info:
        Config(delta=1.5)
    assert str(info.value) == "delta=1.5 is not allowed; delta must be in (0, 1]"


def test_file_write_error_names_file_and_errno(tmp_path):
    err = errors.FileWriteError(tmp_path / "metrics.csv", OSError(28, "No space left on device"))
    assert str(err) == f"cannot write {tmp_path / 'metrics.csv'}: No space left on device (ENOSPC)"
    assert err.errno == 28
