"""scripts/long_runs.sh: sweeps on a frozen install of one commit, one after another (chain).

Runs the script in a clone of this repository (so its results/ and git state are the test's):
the tiny preset is committed there, the chain runs two sweeps in turn on that commit, every
run records it as declared, and a later commit does not reach a sweep that resumes.
"""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY

pytestmark = pytest.mark.slow

TINY_PRESET = """# @package _global_
defaults:
  - override /dataset: copy
  - override /model: lstm
experiment: tiny
{overrides}
hydra:
  sweeper:
    params:
      +setting: K5,delta0.5
      seed: 0
"""


def git(clone: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(clone), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def clone(tmp_path):
    """A clone of HEAD with this working tree's long_runs.sh and a committed tiny preset."""
    clone = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    shutil.copy(REPO / "scripts" / "long_runs.sh", clone / "scripts" / "long_runs.sh")
    overrides = "\n".join(line.replace("=", ": ", 1) for line in TINY if "." not in line
                          and not line.startswith("progress"))
    nested = {}
    for line in TINY:
        key, value = line.split("=", 1)
        if "." in key:
            group, name = key.split(".", 1)
            nested.setdefault(group, []).append(f"  {name}: {value}")
    overrides += "\n" + "\n".join(f"{g}:\n" + "\n".join(v) for g, v in nested.items())
    (clone / "conf" / "experiment" / "tiny.yaml").write_text(
        TINY_PRESET.format(overrides=overrides))
    git(clone, "add", "-A")
    git(clone, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny preset")
    return clone


def script(clone: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BIN": str(Path(sys.executable).parent),
           "ATBPTT_FROZEN": str(tmp_path / "frozen"), "ATBPTT_DATA": str(tmp_path / "data")}
    return subprocess.run(["bash", "scripts/long_runs.sh", *args], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=120)


def wait_for_chain(clone: Path, timeout: float = 400) -> None:
    pid = int((clone / "results" / "long_runs_chain.pid").read_text())
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(1)
    os.killpg(pid, 15)
    pytest.fail("the chain did not end in time:\n"
                + (clone / "results" / "long_runs_chain.log").read_text()[-3000:])


def runs(clone: Path, seed: int) -> dict:
    import json
    out = {}
    for info in sorted((clone / "results" / "tiny" / "runs" / f"seed{seed}").glob("*/run.json")):
        meta = json.loads(info.read_text())
        out[info.parent.name] = (meta["status"], meta["git_commit"])
    return out


def test_chain_runs_sweeps_in_turn_on_the_commit_it_was_called_at(clone, tmp_path):
    head = git(clone, "rev-parse", "HEAD")
    result = script(clone, tmp_path, "chain", "tiny 0", "tiny 1")
    assert result.returncode == 0, result.stderr
    # a commit after the call does not reach the chained sweeps
    (clone / "later.txt").write_text("x")
    git(clone, "add", "later.txt")
    git(clone, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "later")
    wait_for_chain(clone)
    log = (clone / "results" / "long_runs_chain.log").read_text()
    assert "chain: done" in log, log
    for seed in (0, 1):
        got = runs(clone, seed)
        assert len(got) == 2, (seed, got, log)
        assert set(got.values()) == {("finished", f"{head} (declared)")}, got
    # starting a finished sweep again resumes on its recorded commit, not on the new HEAD
    result = script(clone, tmp_path, "chain", "tiny 0")
    assert result.returncode == 0 and head in result.stdout, result.stdout + result.stderr
    wait_for_chain(clone)
    assert set(runs(clone, 0).values()) == {("finished", f"{head} (declared)")}


@pytest.mark.parametrize("item,message", [
    ("nope 0", "unknown experiment 'nope'"),
    ("tiny x", "SEED must be a non-negative integer, got 'x'"),
    ("tiny 0 0123456789abcdef", "unknown COMMIT '0123456789abcdef'"),
])
def test_bad_chain_items_are_refused_in_one_line(clone, tmp_path, item, message):
    result = script(clone, tmp_path, "chain", item)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1
    assert lines[0].startswith(f"long_runs.sh: {message}")
    assert not (clone / "results" / "long_runs_chain.pid").exists()


def test_a_new_sweep_needs_a_clean_tree(clone, tmp_path):
    (clone / "README.md").write_text("changed")
    result = script(clone, tmp_path, "chain", "tiny 0")
    assert result.returncode == 2 and "uncommitted changes" in result.stderr
