"""Every file a resume reads is checked against the others and the command's config
(resume.py): damaged or missing run.json, metrics.csv and checkpoint, and configs recorded by
an older commit. Each case either continues losslessly or is refused in one line with the
directory unchanged; never a silent restart, never another run's directory overwritten."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atbptt.config import Config
from atbptt.limits import _fields
from atbptt.metrics import TIME_COLUMNS
from atbptt.resume import PRESENTATION_KEYS, config_dict, inspect, same_run
from atbptt.run import run as run_training
from atbptt.rundir import CHECKPOINT, RunDirError
from conftest import run_interrupted
from conftest import tiny_config as tiny_any_device

pytestmark = pytest.mark.usefixtures("torch_state")


def tiny_config(*overrides: str):
    return tiny_any_device("device=cpu", "evals_per_epoch=4", *overrides)


def rows(run_dir: Path) -> list:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in csv.DictReader(f)]


def files(run_dir: Path) -> dict:
    return {p.relative_to(run_dir): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != "run.lock"}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """An uninterrupted run, and the same run stopped after 3 of its 5 evaluations."""
    root = tmp_path_factory.mktemp("made")
    cfg = tiny_config()
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        assert run_training(cfg, root / "reference") == "finished"
        mp = pytest.MonkeyPatch()
        try:
            run_interrupted(cfg, root / "stopped", 3, mp)
        finally:
            mp.undo()
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)
    return root


def copy_of(made: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(made / "stopped", run_dir)
    return run_dir


def refused(cfg, run_dir: Path, *needles: str) -> str:
    before = files(run_dir)
    with pytest.raises(RunDirError) as err:
        run_training(cfg, run_dir)
    message = str(err.value)
    assert "\n" not in message and all(n in message for n in needles), message
    assert files(run_dir) == before  # nothing changed
    return message


# ------------------------------------------------------------------------------ run.json
@pytest.mark.parametrize("damage", ["cut in half", "removed", "not an object", "no status"])
def test_a_damaged_run_json_is_written_again_from_the_checkpoint(made, tmp_path, capsys, damage):
    run_dir = copy_of(made, tmp_path)
    info = run_dir / "run.json"
    text = info.read_text()
    {"cut in half": lambda: info.write_text(text[:len(text) // 2]), "removed": info.unlink,
     "not an object": lambda: info.write_text("[1, 2]"),
     "no status": lambda: info.write_text(json.dumps({**json.loads(text), "status": None}))
     }[damage]()
    assert run_training(tiny_config(), run_dir) == "finished"
    warnings = [l for l in capsys.readouterr().err.splitlines() if "run.json" in l]
    assert len(warnings) == 1 and "written again" in warnings[0]
    assert rows(run_dir) == rows(made / "reference")  # resumed, not restarted
    assert json.loads(info.read_text())["status"] == "finished"


def test_a_damaged_run_json_never_lets_another_config_overwrite_the_run(made, tmp_path):
    run_dir = copy_of(made, tmp_path)
    (run_dir / "run.json").write_text((run_dir / "run.json").read_text()[:100])
    refused(tiny_config("K=9", "model.hidden_size=16"), run_dir, "holds a different run",
            "K=5 there, 9 here", "another output directory")


def test_without_run_json_and_checkpoint_the_rows_are_not_overwritten(made, tmp_path):
    run_dir = copy_of(made, tmp_path)
    (run_dir / "run.json").unlink()
    (run_dir / CHECKPOINT).unlink()
    refused(tiny_config(), run_dir, "run.json is absent", "metrics.csv holds 3 rows",
            "restore run.json")


def test_a_checkpoint_of_another_run_than_run_json_is_refused(made, tmp_path):
    run_dir = copy_of(made, tmp_path)
    payload = torch.load(run_dir / CHECKPOINT, weights_only=True)
    payload["config"]["seed"] = 7
    torch.save(payload, run_dir / CHECKPOINT)
    refused(tiny_config(), run_dir, "checkpoint.pt belongs to another run", "seed=7 there, 0 here")


# ----------------------------------------------------------------------------- metrics.csv
def test_blank_lines_are_dropped_and_nothing_is_lost(made, tmp_path, capsys):
    run_dir = copy_of(made, tmp_path)
    lines = (run_dir / "metrics.csv").read_text().split("\n")
    (run_dir / "metrics.csv").write_text("\n".join(lines[:2] + ["", ""] + lines[2:]))
    assert run_training(tiny_config(), run_dir) == "finished"
    assert "blank lines" in capsys.readouterr().err
    assert rows(run_dir) == rows(made / "reference")


@pytest.mark.parametrize("damage,needle", [
    (lambda lines: lines[:2] + [lines[2][:30]] + lines[3:], "row 1 (line 3) has"),
    (lambda lines: lines[:1] + lines[2:], "row 0 (line 2) is evaluation 1"),
    (lambda lines: lines[:3], "has 2 rows and the checkpoint follows 3"),
    (lambda lines: lines[:2] + [lines[1]] + lines[2:], "row 1 (line 3) is evaluation 0"),
    (lambda lines: lines[:2] + [lines[2].replace(",", ",x", 1)] + lines[3:], "not a number"),
    (lambda lines: ["eval,nonsense"] + lines[1:], "unknown header"),
], ids=["row-cut-mid-line", "first-row-removed", "rows-removed", "row-repeated", "junk-value",
        "bad-header"])
def test_a_damaged_metrics_csv_refuses_the_resume_in_one_line(made, tmp_path, damage, needle):
    run_dir = copy_of(made, tmp_path)
    path = run_dir / "metrics.csv"
    path.write_text("\n".join(damage(path.read_text().split("\n"))))
    message = refused(tiny_config(), run_dir, needle, "cannot resume from", str(path))
    assert "restore metrics.csv, or delete checkpoint.pt to restart" in message


def test_a_missing_metrics_csv_refuses_the_resume(made, tmp_path):
    run_dir = copy_of(made, tmp_path)
    (run_dir / "metrics.csv").unlink()
    refused(tiny_config(), run_dir, "metrics.csv is missing", "delete checkpoint.pt")


def test_rows_of_another_run_are_refused(made, tmp_path):
    """The kept rows must end where the checkpoint is: step and tokens agree."""
    run_dir = copy_of(made, tmp_path)
    path = run_dir / "metrics.csv"
    table = list(csv.reader(io.StringIO(path.read_text())))
    table[3][2] = str(int(table[3][2]) + 1)  # the step of the last kept row
    path.write_text("".join(",".join(r) + "\n" for r in table))
    refused(tiny_config(), run_dir, "row 2 has step=", "the checkpoint step=")


DAMAGES = st.sampled_from(["delete", "duplicate", "cut", "blank", "junk", "swap", "crlf"])


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(DAMAGES, st.integers(0, 6), st.integers(0, 400)),
                     min_size=1, max_size=3))
def test_any_damage_to_metrics_csv_is_refused_or_lossless(made, tmp_path_factory, edits):
    """Random line edits of metrics.csv: the check either refuses in one line (nothing
    changed) or the rows a resume keeps are exactly the checkpoint's, byte for byte."""
    run_dir = copy_of(made, tmp_path_factory.mktemp("h"))
    path = run_dir / "metrics.csv"
    original = path.read_text().split("\n")
    lines = list(original)
    for kind, where, cut in edits:
        i = min(where, len(lines) - 1)
        if kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        elif kind == "cut":
            lines[i] = lines[i][:cut]
        elif kind == "blank":
            lines.insert(i, "")
        elif kind == "junk":
            lines[i] = lines[i][:cut] + "\x00é,," + lines[i][cut:]
        elif kind == "swap" and i + 1 < len(lines):
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
        elif kind == "crlf":
            lines[i] += "\r"
    path.write_text("\n".join(lines))
    before = path.read_bytes()
    cfg = tiny_config()
    try:
        plan = inspect(cfg, run_dir)
    except RunDirError as err:
        assert "\n" not in str(err) and "metrics.csv" in str(err)
        assert path.read_bytes() == before
        return
    from atbptt.metrics import MetricsWriter

    evals = plan.checkpoint["progress"]["evals"]
    MetricsWriter(path).truncate(evals)
    assert path.read_text().split("\n")[:evals + 1] == original[:evals + 1]


# ------------------------------------------------------------------- keys added since
SCHEMA = dict(_fields(Config()))


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(key=st.sampled_from(sorted(SCHEMA)), changed=st.booleans())
def test_a_key_the_stored_config_lacks_counts_only_at_its_default(key, changed):
    """As if the run was recorded by a commit before ``key`` existed: the same run if the
    command's value is the schema default; otherwise a different run, named."""
    current = config_dict(Config())
    stored = json.loads(json.dumps(current))
    node, parts = stored, key.split(".")
    for part in parts[:-1]:
        node = node[part]
    del node[parts[-1]]
    if changed:
        target = current
        for part in parts[:-1]:
            target = target[part]
        target[parts[-1]] = "something else"
    same, difference, added = same_run(stored, current)
    if key in PRESENTATION_KEYS:
        assert same and added == []
    elif changed:
        assert not same and key in difference
    else:
        assert same and added == [key]


def test_a_run_recorded_without_newer_keys_resumes_with_a_warning(made, tmp_path, capsys):
    run_dir = copy_of(made, tmp_path)
    info = json.loads((run_dir / "run.json").read_text())
    del info["config"]["logger"], info["config"]["method"]["artbp_alpha"]
    del info["config"]["method"]["artbp_draws"]
    (run_dir / "run.json").write_text(json.dumps(info))
    assert run_training(tiny_config(), run_dir) == "finished"
    warnings = [l for l in capsys.readouterr().err.splitlines() if "recorded without the keys" in l]
    assert len(warnings) == 1 and "method.artbp_alpha, method.artbp_draws" in warnings[0]
    after = json.loads((run_dir / "run.json").read_text())
    assert after["config_keys_added"] == ["method.artbp_alpha", "method.artbp_draws"]
    assert rows(run_dir) == rows(made / "reference")


def test_a_missing_key_with_another_value_here_is_a_different_run(made, tmp_path):
    run_dir = copy_of(made, tmp_path)
    info = json.loads((run_dir / "run.json").read_text())
    del info["config"]["method"]["artbp_alpha"]
    (run_dir / "run.json").write_text(json.dumps(info))
    refused(tiny_config("method.artbp_alpha=5.0"), run_dir, "holds a different run",
            "method.artbp_alpha absent there, 5.0 here")


def test_rows_written_before_diagnostic_time_existed_are_kept_and_padded(tmp_path):
    """A metrics.csv whose header is an older prefix of the columns: its rows are kept, the
    new columns empty, and the file gets the full header."""
    from atbptt.metrics import COLUMNS, MetricsWriter

    path = tmp_path / "metrics.csv"
    old = COLUMNS[:-1]
    row = ["0", "0.0", "0", "0", *["1.5"] * (len(old) - 4)]
    path.write_text(",".join(old) + "\n" + ",".join(row) + "\n")
    MetricsWriter(path).truncate(1)
    header, kept = path.read_text().splitlines()
    assert header == ",".join(COLUMNS) and kept == ",".join(row) + ","


def test_a_directory_in_place_of_metrics_csv_is_refused(made, tmp_path):
    run_dir = copy_of(made, tmp_path)
    (run_dir / "metrics.csv").unlink()
    (run_dir / "metrics.csv").mkdir()
    refused(tiny_config(), run_dir, "metrics.csv cannot be read")
