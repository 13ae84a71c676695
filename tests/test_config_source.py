"""Hydra's own flags in the pre-check (config_source.py, validate.py): -cd/--config-dir,
-cp/--config-path, -cn/--config-name, and a user config directory's presets."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atbptt.config_source import ConfigSource, group_options
from atbptt.validate import precheck
from conftest import run_cli


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory) -> Path:
    """A user's config directory: a preset (experiment/mine.yaml), a group of its own
    (preset/small.yaml) and a primary config extending the packaged one (mine.yaml)."""
    folder = tmp_path_factory.mktemp("user") / "configs"
    (folder / "experiment").mkdir(parents=True)
    (folder / "experiment" / "mine.yaml").write_text(
        "# @package _global_\nexperiment: mine\nK: 7\nepochs: 0.5\n")
    (folder / "preset").mkdir()
    (folder / "preset" / "small.yaml").write_text("# @package _global_\nmodel:\n  hidden_size: 6\n")
    (folder / "mine.yaml").write_text("defaults:\n  - config\n  - _self_\nK: 9\n")
    return folder


def test_group_options_include_the_user_directory(user_dir):
    assert "mine" in group_options("experiment", ConfigSource(str(user_dir)))
    assert "mine" not in group_options("experiment")
    assert group_options("preset", ConfigSource(str(user_dir))) == ["small"]


@pytest.mark.parametrize("flags", [["-cd", "{dir}"], ["--config-dir", "{dir}"],
                                   ["--config-dir={dir}"]])
@pytest.mark.parametrize("overrides", [["experiment=mine"], ["experiment=mine", "K=3"],
                                       ["+preset=small"], ["-m", "experiment=mine", "seed=0,1"],
                                       ["-cn", "mine"], ["--config-name=mine", "K=4"],
                                       ["-cp", "pkg://atbptt.conf", "experiment=mine"]])
def test_hydra_flags_and_user_presets_pass_the_precheck(user_dir, flags, overrides):
    argv = [f.replace("{dir}", str(user_dir)) for f in flags] + overrides
    assert precheck(argv) is None


@pytest.mark.parametrize("argv,needle", [
    (["-cd", "{tmp}/nowhere", "K=3"], "--config-dir {tmp}/nowhere: no such directory"),
    (["-cp", "{tmp}/nowhere"], "--config-path {tmp}/nowhere: no such directory"),
    (["-cd", "{dir}", "-cn", "nope"], "Cannot find primary config 'nope'"),
    (["-cd", "{dir}", "experiment=theirs"], "unknown experiment 'theirs'; allowed: "),
    (["-cd", "{dir}", "+experiment=mine"], "chosen without '+': experiment=mine"),
    (["-cd", "{dir}", "experiment=mine", "K=0"], "K=0 is not allowed"),
    (["-cd", "{dir}", "+preset=large"], "unknown preset 'large'; allowed: small"),
    (["experiment=mine"], "unknown experiment 'mine'"),  # not without the directory
])
def test_bad_flags_or_presets_give_one_line(user_dir, tmp_path, argv, needle):
    argv = [a.replace("{dir}", str(user_dir)).replace("{tmp}", str(tmp_path)) for a in argv]
    message = precheck(argv)
    needle = needle.replace("{tmp}", str(tmp_path))
    assert message is not None and "\n" not in message and needle in message, message
    if "unknown experiment 'theirs'" in needle:
        assert "mine" in message and "copy_fixed" in message


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(spelling=st.sampled_from(["-cd", "--config-dir", "--config-dir="]),
       order=st.permutations(range(4)), bad=st.booleans())
def test_the_flags_may_stand_anywhere(user_dir, spelling, order, bad):
    """Wherever the flag stands among the overrides, and however it is spelled, the pre-check
    says the same: nothing for a good command, the same line for a bad one."""
    flag = [f"--config-dir={user_dir}"] if spelling.endswith("=") else [spelling, str(user_dir)]
    pieces = [flag, ["experiment=mine"], ["K=0" if bad else "K=3"], ["seed=1"]]
    argv = [a for i in order for a in pieces[i]]
    expected = "K=0 is not allowed; K must be an integer >= 1" if bad else None
    assert precheck(argv) == expected


def test_a_run_with_a_user_preset(user_dir, tmp_path, tiny):
    run_dir = tmp_path / "run"
    tiny = [a for a in tiny if not a.startswith(("K=", "epochs="))]
    result = run_cli(["-cd", str(user_dir), "experiment=mine", *tiny, f"hydra.run.dir={run_dir}"],
                     tmp_path)
    assert result.returncode == 0, result.stderr
    info = json.loads((run_dir / "run.json").read_text())
    assert info["experiment"] == "mine" and info["K"] == 7 and info["status"] == "finished"
