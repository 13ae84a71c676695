"""Limits across keys and against the data (limits.py): every impossible config is refused
with one line before anything is written, and a property test over every schema key."""
from __future__ import annotations

import enum
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atbptt.config import Config, ConfigError, DatasetConfig, DatasetName
from atbptt.data import DataError, check_corpus_streams, load_task
from atbptt.limits import _fields, check_data
from atbptt.run import run as run_training
from atbptt.validate import precheck
from conftest import TINY, checked_config, tiny_config


@pytest.mark.parametrize("overrides,keys", [
    (["seed=-1"], ["seed"]),
    (["dataset.seed=-1"], ["dataset.seed"]),
    (["optim.lr_power=nan"], ["optim.lr_power", "finite"]),
    (["optim.lr_power=1000"], ["optim.lr", "optim.lr_power", "inf at K=5"]),
    (["optim.lr_power=-1000"], ["optim.lr_power", "0 at K=5"]),
    (["optim.lr=1e300"], ["optim.lr", "optim.lr_power"]),  # finite, but not in float32
    (["method=adaptive", "optim.lr_power=30"], ["optim.lr_power", "K in [2, 20]", "at K=20"]),
    (["optim.weight_decay=1e300"], ["optim.weight_decay", "float32"]),
    (["max_time=inf"], ["max_time", "finite"]),
    (["dataset.noise_std=inf"], ["dataset.noise_std", "finite"]),
    ([f"K={2 ** 63}"], ["K", "64 bits"]),
    ([f"threads={(os.cpu_count() or 1) + 1}"], ["threads", "cores"]),
])
def test_impossible_configs_are_refused_with_one_line(overrides, keys):
    with pytest.raises(ConfigError) as refused:
        tiny_config(*overrides)
    message = str(refused.value)
    assert "\n" not in message and all(key in message for key in keys), message


def test_the_step_size_is_checked_over_the_Ks_the_run_can_use():
    assert tiny_config("optim.lr_power=20").optim.lr_power == 20  # fixed K=5: 5^20 fits float32
    with pytest.raises(ConfigError, match=r"K in \[2, 20\]"):  # adaptive: up to k_max=20
        tiny_config("method=adaptive", "optim.lr_power=30")
    tiny_config("method=adaptive", "optim.lr_power=29")  # 20^29 < 3.4e38


def _data(cfg: Config):
    return load_task(cfg.dataset)


@pytest.mark.parametrize("overrides,needle", [
    (["dataset=linear", "model.tie_weights=true"],
     "model.tie_weights=true is not allowed for dataset=linear"),
    (["dataset=var", "model.tie_weights=true"],
     "model.tie_weights=true is not allowed for dataset=var"),
    (["dataset.train_length=24"], "method.window + method.burn_in must be <= 24"),
    (["method=adaptive", "dataset.train_length=24"],
     "method.window + method.burn_in must be <= 24"),
    (["method.audit=true", "method.log_estimates=0", "dataset.train_length=24"], "must be <= 24"),
    (["dataset=linear", "dataset.noise_std=1e300"], "dataset.noise_std"),
])
def test_configs_that_do_not_fit_their_data_are_refused(overrides, needle):
    cfg = tiny_config(*overrides)
    pattern = needle.replace("+", r"\+").replace("[", r"\[")
    with pytest.raises(ConfigError, match=pattern) as refused:
        check_data(cfg, _data(cfg))
    assert "\n" not in str(refused.value)


def test_what_fits_the_data_passes():
    for overrides in (["dataset.train_length=25"], ["model.tie_weights=true"],
                      ["dataset.train_length=10", "method.log_estimates=0"]):  # no estimator
        cfg = tiny_config(*overrides)
        check_data(cfg, _data(cfg))


def test_corpus_streams_need_two_tokens_each():
    cfg = DatasetConfig(name=DatasetName.ptb, batch_size=32, eval_batch_size=40000)
    tokens = {"train": 929589, "valid": 73760, "test": 82430}
    with pytest.raises(ConfigError, match=r"dataset.eval_batch_size=40000 .* valid split has "
                                          r"73760 tokens, so dataset.eval_batch_size must be "
                                          r"<= 36880"):
        check_corpus_streams(cfg, tokens)
    check_corpus_streams(DatasetConfig(name=DatasetName.ptb, eval_batch_size=36880), tokens)
    with pytest.raises(ConfigError, match="dataset.batch_size=929589"):
        check_corpus_streams(DatasetConfig(name=DatasetName.ptb, batch_size=929589), tokens)


# ------------------------------------------------------------------- property-based test
SCHEMA = dict(_fields(Config()))  # every leaf key of the schema
JUNK = ["abc", "", "nan", "inf", "-inf", "1e300", "-1", "-1e-9", "0", "0.5", "3", str(10 ** 30),
        str(2 ** 63), "true", "null"]
SYNTHETIC = ["copy", "copy_variable", "linear", "var"]  # corpora: tests/test_reliability.py


def _valid_values(key: str, default) -> list:
    """A few values of the key's own type, so that pairs also reach the cross-key limits."""
    if key == "dataset.name":
        return SYNTHETIC
    if isinstance(default, enum.Enum):
        return [m.value for m in type(default)]
    if isinstance(default, bool):
        return ["true", "false"]
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        return [str(default), str(type(default)(2 * default + 1))]
    return []


KEYS = sorted(SCHEMA) + ["dataset", "model", "method"]
GROUP_VALUES = {"dataset": SYNTHETIC, "model": ["lstm", "gru", "srnn"],
                "method": ["fixed", "adaptive"]}


def _values(key: str):
    """Junk or, as often, a value of the key's own type (group options for a group)."""
    valid = GROUP_VALUES.get(key) or _valid_values(key, SCHEMA.get(key))
    if not valid:
        return st.sampled_from(JUNK)
    return st.one_of(st.sampled_from(JUNK), st.sampled_from(valid))


override = st.sampled_from(KEYS).flatmap(lambda key: st.tuples(st.just(key), _values(key)))


class _Started(Exception):
    """Raised where the run is accepted, before its first write."""


def _accepted() -> None:
    raise _Started


def _start(argv: list, run_dir: Path) -> str | None:
    """None if the run starts, else its one-line refusal (precheck, then run.run's checks)."""
    message = precheck(argv)
    if message is not None:
        return message
    try:
        run_training(checked_config(*argv), run_dir, on_start=_accepted)
    except _Started:
        return None
    except (ConfigError, DataError) as err:
        return str(err)
    raise AssertionError("run.run returned before the run was accepted")


@pytest.mark.usefixtures("torch_state")
@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(drawn=st.lists(override, min_size=1, max_size=2, unique_by=lambda kv: kv[0]))
def test_every_key_and_pair_either_starts_or_is_refused_in_one_line(drawn):
    keys = {key for key, _ in drawn}
    base = [a for a in TINY if a.split("=")[0] not in keys]
    argv = [*base, *(f"{key}={value}" for key, value in drawn)]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        message = _start(argv, run_dir)  # any other exception fails the test: a traceback
        if message is not None:
            assert "\n" not in message and any(key in message for key in keys), (drawn, message)
            assert not run_dir.exists() or not any(run_dir.iterdir()), drawn
