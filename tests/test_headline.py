"""scripts/headline.py: budgets, the evaluation one step past a nominal epoch, verdicts."""
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import headline  # noqa: E402

STEPS_PER_EPOCH = 100


def run_rows(setting, seed, valid, test, seconds_per_epoch=60.0):
    """Evaluations twice per epoch, each one step late (as the trainer schedules them)."""
    rows = []
    for i, (v, t) in enumerate(zip(valid, test)):
        step = 0 if i == 0 else i * STEPS_PER_EPOCH // 2 + 1
        epoch = step / STEPS_PER_EPOCH
        rows.append(dict(setting=setting, seed=seed, eval=i, step=step, epoch=epoch,
                         train_time=epoch * seconds_per_epoch, valid_ppl=v, test_ppl=t))
    return rows


def frame():
    return pd.DataFrame(
        run_rows("K=10", 0, [1000, 300, 200, 150, 160], [1000, 290, 190, 140, 150])
        + run_rows("K=50", 0, [1000, 400, 250, 180, 170], [1000, 390, 240, 170, 160])
        + run_rows("δ=0.1", 0, [1000, 280, 180, 130, 120], [1000, 270, 170, 120, 110],
                   seconds_per_epoch=120.0))


def test_an_evaluation_one_step_past_the_budget_counts_at_the_budget():
    values = headline.best_so_far(frame(), "epoch", 0.5).set_index("setting").test_ppl
    assert values.to_dict() == {"K=10": 290, "K=50": 390, "δ=0.1": 270}


def test_best_validation_so_far_not_the_last_row():
    values = headline.best_so_far(frame(), "epoch", 2.0).set_index("setting").test_ppl
    assert values["K=10"] == 140  # valid 150 at 1.5 beats valid 160 at 2
    assert values["δ=0.1"] == 110


def test_a_budget_not_reached_is_nan():
    values = headline.best_so_far(frame(), "epoch", 3.0)
    assert values.test_ppl.isna().all()
    timed = headline.best_so_far(frame(), "train_time", 150.0).set_index("setting").test_ppl
    assert pd.isna(timed["K=10"]) and timed["δ=0.1"] == 170  # K=10 stopped at 120 s


@pytest.mark.parametrize("gap,verdict", [(-5.0, "beats"), (5.0, "loses"), (0.5, "matches")])
def test_verdict_margin(gap, verdict):
    fixed = pd.Series({"mean": 100.0, "std": float("nan"), "count": 1})
    delta = pd.Series({"mean": 100.0 + gap, "std": float("nan"), "count": 1})
    assert headline.verdict(delta, fixed, 0.01) == verdict


def test_seed_spread_widens_the_margin():
    fixed = pd.Series({"mean": 100.0, "std": 3.0, "count": 3})
    delta = pd.Series({"mean": 95.0, "std": 3.0, "count": 3})
    assert headline.verdict(delta, fixed, 0.01) == "matches"


def test_main_writes_the_table(tmp_path):
    folder = tmp_path / "exp"
    folder.mkdir()
    runs = frame().assign(run_dir=lambda d: d.setting + "/" + d.seed.astype(str),
                          status="finished", task="classification", scale="test scale")
    runs.to_csv(folder / "runs.csv", index=False)
    pd.DataFrame({"setting": ["K=10", "K=50", "δ=0.1"], "method": ["fixed", "fixed", "adaptive"],
                  "task": "classification"}).to_csv(folder / "summary.csv", index=False)
    headline.main(["--results", str(tmp_path), "--experiment", "exp", "--epochs", "0.5", "1",
                   "--minutes", "1"])
    text = (folder / "headline.md").read_text()
    assert "| 0.5 | 290.0 | 390.0 | 270.0 | K=10 | beats |" in text
    assert "| 1 min | 290.0 | 390.0 | 1000.0 | K=10 | loses |" in text  # δ: 61 s at 0.5 ep
    figure = folder / "figures" / "headline.png"
    assert figure.is_file() and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_figure_ranges_over_the_verdict_stretch(tmp_path, monkeypatch):
    """y-range: the evaluations from a third of the budget on, not the untrained start."""
    folder = tmp_path / "exp"
    folder.mkdir()
    frame().assign(run_dir=lambda d: d.setting, status="finished",
                   task="classification").to_csv(folder / "runs.csv", index=False)
    pd.DataFrame({"setting": ["K=10", "K=50", "δ=0.1"], "method": ["fixed", "fixed", "adaptive"],
                  "task": "classification"}).to_csv(folder / "summary.csv", index=False)
    limits = []
    monkeypatch.setattr(headline, "finish", lambda fig, axes, *a, **k: limits.extend(
        [ax.get_ylim() for ax in axes]))
    headline.headline_figure(folder)
    # from epoch 2/3 on: test at best valid is 190..140 (K=10), 240..160 (K=50), 170..110 (δ)
    low, high = limits[0]
    assert 100 < low < 110 and 240 < high < 260


def test_slack_is_the_longest_step_when_K_varies():
    """Steps of K=100 are ten times those of K=10 in epochs: the 0.5 evaluation of a run that
    starts at K0=100 and then trains at K=10 lands up to one K=100 step late."""
    rows = [dict(setting="δ=0.1", seed=0, eval=0, step=0, epoch=0.0, train_time=0.0,
                 valid_ppl=1000.0, test_ppl=1000.0),
            dict(setting="δ=0.1", seed=0, eval=1, step=51, epoch=0.51, train_time=1.0,
                 valid_ppl=700.0, test_ppl=690.0),
            dict(setting="δ=0.1", seed=0, eval=2, step=551, epoch=1.01, train_time=2.0,
                 valid_ppl=300.0, test_ppl=290.0)]
    values = headline.best_so_far(pd.DataFrame(rows), "epoch", 0.5)
    assert values.test_ppl.tolist() == [690.0]
