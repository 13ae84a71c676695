"""The run directory's lock and checkpoint files (rundir.py)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from atbptt.rundir import LOCK_FILE, RunDirError, RunDirLock, load_checkpoint, save_checkpoint

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
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
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
