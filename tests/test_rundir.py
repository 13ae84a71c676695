"""The run directory's lock and checkpoint files (rundir.py, files.py)."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atbptt import files
from atbptt.files import FileWriteError
from atbptt.rundir import (LOCK_FILE, RunDirError, RunDirGone, RunDirLock, load_checkpoint,
                           save_checkpoint)

HOLD = """
import sys, time
from atbptt.rundir import RunDirLock
lock = RunDirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def snapshot(folder: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_a_second_holder_is_refused_naming_the_first_and_changing_nothing(tmp_path):
    run_dir = tmp_path / "run"
    with RunDirLock(run_dir):
        before = snapshot(run_dir)
        with pytest.raises(RunDirError) as refused:
            RunDirLock(run_dir).acquire()
        assert snapshot(run_dir) == before
    message = str(refused.value)
    assert "\n" not in message and str(run_dir) in message
    assert f"pid {os.getpid()} on {socket.gethostname()}" in message
    with RunDirLock(run_dir):  # released at the end of the block: free again
        pass


def test_the_lock_dies_with_its_process_even_by_sigkill(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"pid {holder.pid} on"):
            RunDirLock(run_dir).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunDirLock(run_dir).acquire()  # nothing to clean up after a killed holder
    assert (run_dir / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} ")
    lock.release()


def test_checkpoints_load_as_weights_only_onto_the_cpu(tmp_path):
    path = tmp_path / "checkpoint.pt"
    payload = {"config": {"K": 5}, "model": {"w": torch.ones(2)}, "optimizer": {"state": {}},
               "progress": {"K": 5, "estimate": {"K_hat": {1.0: 3}, "phi": [0.5]}},
               "walker": (3, 2, (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4))),
               "rng": torch.get_rng_state(), "estimator_rng": torch.Generator().get_state(),
               "cuda_rng": None}
    save_checkpoint(path, payload)
    loaded = load_checkpoint(path)
    assert loaded["progress"] == payload["progress"] and loaded["walker"][:2] == (3, 2)
    assert all(t.device.type == "cpu" for t in (loaded["rng"], loaded["model"]["w"]))
    assert not path.with_name("checkpoint.pt.tmp").exists()


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    path, marker = tmp_path / "checkpoint.pt", tmp_path / "code-ran"
    torch.save({"model": _RunsCode(marker)}, path)
    with pytest.raises(RunDirError, match="could run code") as refused:
        load_checkpoint(path)
    assert not marker.exists()
    assert str(path) in str(refused.value) and "delete it" in str(refused.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "not-ours"])
def test_a_damaged_checkpoint_gives_one_line_naming_the_file(tmp_path, damage):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(1000)}, "rng": torch.get_rng_state()})
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:len(data) // 2], "garbage": os.urandom(len(data)),
                      "empty": b"", "not-ours": data}[damage])
    started = time.monotonic()
    with pytest.raises(RunDirError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert "\n" not in message and str(path) in message and "delete it to restart" in message
    assert time.monotonic() - started < 10


# ------------------------------------------------------------- the lock without its file
def test_removing_run_lock_does_not_release_the_lock(tmp_path):
    """The directory itself is locked: with run.lock deleted, a second process is still
    refused, and the holder writes run.lock again at its next check."""
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (run_dir / LOCK_FILE).unlink()
        with pytest.raises(RunDirError, match="is in use by another run"):
            RunDirLock(run_dir).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunDirLock(run_dir):  # free once the holder is gone
        pass


def test_the_holder_writes_a_removed_run_lock_again(tmp_path):
    run_dir = tmp_path / "run"
    with RunDirLock(run_dir) as lock:
        (run_dir / LOCK_FILE).unlink()
        lock.verify()
        assert (run_dir / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} ")


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_removed_or_replaced_directory_stops_its_holder(tmp_path, how):
    run_dir = tmp_path / "run"
    with RunDirLock(run_dir) as lock:
        lock.verify()
        shutil.rmtree(run_dir)
        if how == "replaced":  # e.g. rm -rf, then a second run made it again and locked it
            with RunDirLock(run_dir):
                with pytest.raises(RunDirGone,
                                   match=f"{run_dir} was replaced by another directory"):
                    lock.verify()
        else:
            with pytest.raises(RunDirGone, match=f"{run_dir} was removed while this run"):
                lock.verify()
            assert not run_dir.exists()  # verify never makes it again


# ---------------------------------------------------------------------- checkpoint writes
def test_temporary_files_carry_the_process_id_and_a_failed_write_leaves_none(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    assert files.tmp_name(path).name == f"checkpoint.pt.{os.getpid()}.tmp"

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "replace", full_disk)
    with pytest.raises(FileWriteError) as failed:
        save_checkpoint(path, {"w": torch.ones(10)})
    assert str(failed.value) == f"cannot write {path}: No space left on device (ENOSPC)"
    assert list(tmp_path.iterdir()) == []


GOOD = {"config": {"K": 5}, "model": {"w": torch.ones(2)}, "optimizer": {"state": {}},
        "progress": {"K": 5, "evals": 2}, "walker": (3, 2, torch.zeros(1, 2, 4)),
        "rng": torch.get_rng_state(), "cuda_rng": None}
JUNK = [None, 0, -1, "x", [], {}, (1, 2), 1.5, True, torch.zeros(3),
        torch.zeros(2, dtype=torch.uint8)]


@settings(max_examples=80, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(sorted(GOOD)), junk=st.sampled_from(range(len(JUNK))))
def test_a_checkpoint_part_of_the_wrong_type_gives_one_line(tmp_path, key, junk):
    """Any part replaced by a value of another type (``rng=None`` was an AttributeError
    traceback): loading either accepts it (a value of a fitting type) or refuses in one line."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {**GOOD, key: JUNK[junk]})
    try:
        loaded = load_checkpoint(path)
    except RunDirError as err:
        assert "\n" not in str(err) and str(path) in str(err) and f"'{key}'" in str(err)
        return
    value = loaded[key]
    assert key in ("config", "optimizer", "model") and isinstance(value, dict) or \
        key == "cuda_rng" and (value is None or isinstance(value, list)) or \
        key == "rng" and value.dtype == torch.uint8 or \
        key == "walker" or key == "progress"
