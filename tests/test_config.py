"""Config: every group option and every preset composes; bad values fail with one line."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

from atbptt.config import Config, ConfigError, MethodName, register_configs
from atbptt.validate import group_options, precheck, sweep_jobs, to_config

register_configs()


def compose_config(*overrides: str) -> Config:
    with initialize_config_module(config_module="atbptt.conf", version_base="1.3"):
        return to_config(compose(config_name="config", overrides=list(overrides)))


def test_defaults_are_the_copy_task_with_fixed_K():
    cfg = compose_config()
    assert cfg.dataset.name.value == "copy" and cfg.method.name == MethodName.fixed
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.K) == (2, 50, 15)
    assert (cfg.optim.lr, cfg.optim.lr_power, cfg.optim.weight_decay) == (1.0, 0.5, 1e-5)
    assert cfg.method.style.value == "overlap"


@pytest.mark.parametrize("group", ["dataset", "model", "method", "setting"])
def test_every_group_option_composes(group):
    options = group_options(group)
    assert options
    for option in options:
        prefix = "+" if group == "setting" else ""
        assert isinstance(compose_config(f"{prefix}{group}={option}"), Config)


@pytest.mark.parametrize("preset", group_options("experiment"))
def test_every_experiment_preset_composes_with_each_setting(preset):
    cfg = compose_config(f"experiment={preset}")
    assert cfg.experiment == preset
    expected = {"K10": MethodName.fixed, "delta0.1": MethodName.adaptive,
                "artbp10": MethodName.artbp}
    for setting, method in expected.items():
        cfg = compose_config(f"experiment={preset}", f"+setting={setting}")
        assert cfg.method.name == method


def test_paper_settings_per_dataset():
    ptb = compose_config("dataset=ptb")
    wiki = compose_config("dataset=wikitext2")
    assert (ptb.dataset.batch_size, ptb.optim.lr_power, ptb.model.tie_weights) == (32, 0.5, True)
    assert (wiki.dataset.batch_size, wiki.optim.lr_power) == (16, 1.0)
    assert (ptb.method.window, ptb.method.burn_in, ptb.method.k_min,
            ptb.method.k_max) == (400, 40, 10, 300)
    assert ptb.dataset.eval_batch_size == 10 and ptb.dataset.eval_chunk == 100
    paper = compose_config("experiment=ptb_paper")
    assert (paper.model.hidden_size, paper.model.embedding_size) == (900, 900)
    assert compose_config("experiment=wikitext2_paper").model.hidden_size == 512
    assert compose_config("experiment=ptb_cpu").model.hidden_size == 200


def test_settings_match_method_and_value():
    assert compose_config("+setting=K30").K == 30
    cfg = compose_config("+setting=delta0.9")
    assert cfg.delta == 0.9 and cfg.method.name == MethodName.adaptive
    cfg = compose_config("+setting=artbp20")
    assert (cfg.K, cfg.method.name, cfg.method.style.value) == (20, MethodName.artbp, "chunk")
    assert cfg.method.artbp_schedule.value == "constant"
    cfg = compose_config("experiment=ptb_cpu", "+setting=artbp10poly")
    assert (cfg.K, cfg.method.artbp_schedule.value, cfg.method.artbp_alpha) == (10, "poly", 4.0)
    assert cfg.model.hidden_size == 200 and cfg.method.audit  # the preset's, untouched


@pytest.mark.parametrize("argv,needle", [
    (["model=transformer"], "allowed: gru, lstm, srnn"),
    (["dataset=nope"], "allowed: copy, copy_paper, copy_variable, copy_variable_paper, linear, "
                       "ptb, var, wikitext2"),
    (["method=sgd"], "allowed: adaptive, artbp, fixed"),
    (["K=0"], "K must be an integer >= 1"),
    (["K=ten"], "K=ten"),
    (["K=-3"], "K must be"),
    (["epochs=-1"], "epochs must be a number > 0"),
    (["epochs=0"], "epochs must be a number > 0"),
    (["delta=0"], "delta must be in (0, 1]"),
    (["delta=1.5"], "delta must be in (0, 1]"),
    (["device=tpu"], "expected one of [auto, cpu, cuda]"),
    (["foo=1"], "unknown key 'foo'"),
    (["model.hidden=3"], "model keys are: cell, hidden_size"),
    (["method.k_min=50", "method.k_max=10"], "method.k_min must be <= method.k_max"),
    (["method=adaptive", "method.window=50"], "method.window must be >= method.k_max"),
    (["model.dropout=1.5"], "model.dropout must be in [0, 1)"),
    (["dataset.rho=1.2"], "dataset.rho must be in (0, 1)"),
    (["method=artbp", "K=1"], "K must be > method.artbp_stride (1) for method=artbp"),
    (["method=artbp", "K=8", "method.artbp_stride=8"], "K must be > method.artbp_stride (8)"),
    (["method=artbp", "method.style=overlap"], "method.style must be chunk for method=artbp"),
    (["method=artbp", "K=10", "method.artbp_max_length=5"],
     "method.artbp_max_length must be >= K (10)"),
    (["method.artbp_alpha=3"], "method.artbp_alpha must be a finite number > 3"),
    (["method.artbp_schedule=exp"], "expected one of [constant, poly]"),
    (["method.artbp_draws=-1"], "method.artbp_draws must be an integer >= 0"),
    (["K=5,10"], "a sweep needs -m"),
    (["-m", "K=5,0"], "K must be an integer >= 1"),
    (["-m", "K=5,6", "--cfg", "hydra"], "--multirun and --cfg cannot be combined"),
    (["--info", "--multirun"], "--multirun and --info cannot be combined"),
    (["-cjob", "--multi"], "--multirun and --cfg cannot be combined"),
    (["-r", "-m"], "--run and --multirun cannot be combined"),
    (["experiment=null"], "unknown experiment 'null'"),
])
def test_bad_input_gives_one_line(argv, needle):
    message = precheck(argv)
    assert message is not None and needle in message
    assert "\n" not in message


def test_good_input_passes_precheck():
    assert precheck(["method=adaptive", "delta=0.1", "K=20"]) is None
    assert precheck(["-m", "experiment=copy_fixed", "+setting=K5,delta0.1"]) is None
    assert precheck(["--help"]) is None
    assert precheck(["K=5", "--cfg", "job"]) is None
    assert precheck(["-m", "--help", "--cfg", "job"]) is None  # Hydra shows the help


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    message = precheck([f"hydra.run.dir={blocker}/run"])
    assert message is not None and "not writable" in message


def test_post_init_errors_are_config_errors():
    with pytest.raises(ConfigError, match="K must be"):
        Config(K=0)


# ------------------------------------------------------------------------- sweeps
@pytest.mark.parametrize("argv,needle", [
    # presets carry their own sweeps: one launch, one preset
    (["-m", "experiment=copy_fixed,copy_variable", "epochs=0.01"],
     "experiment=copy_fixed,copy_variable: each experiment option carries its own sweep, and one "
     "launch runs one sweep; run one per launch: atbptt-run -m experiment=copy_fixed epochs=0.01; "
     "atbptt-run -m experiment=copy_variable epochs=0.01"),
    (["-m", "experiment=ptb_cpu,linear", "hydra/launcher=joblib"], "run one per launch: "
     "atbptt-run -m experiment=ptb_cpu hydra/launcher=joblib; atbptt-run -m experiment=linear"),
    # keys left out of the directory names, or one subdir for all: jobs would share a directory
    (["-m", "progress=true,false"], "jobs progress=True and progress=False of this sweep would "
                                    "share the directory '.' under hydra.sweep.dir"),
    (["-m", "threads=1,2", "K=5"], "would share the directory 'K=5'"),
    (["-m", "K=5,6", "hydra.sweep.subdir=same"],
     "jobs K=5 and K=6 of this sweep would share the directory 'same'"),
    (["-m", "experiment=copy_fixed", "hydra.sweep.subdir=x"],
     "jobs +setting=K5,seed=0,experiment=copy_fixed and +setting=K5,seed=1,experiment=copy_fixed "
     "of this sweep would share the directory 'x'"),
    # each value is fine, the combination is not: every job is checked
    (["-m", "K=5,1000", "optim.lr_power=0,20"],
     "job K=1000,optim.lr_power=20: optim.lr=1.0 with optim.lr_power=20.0"),
    # the preset's own grid is checked too: K=20 with lr_power 30 overflows float32
    (["-m", "experiment=copy_fixed", "optim.lr_power=30"],
     "job +setting=K20,seed=0,experiment=copy_fixed,optim.lr_power=30: "
     "optim.lr=1.0 with optim.lr_power=30.0"),
])
def test_sweeps_that_cannot_run_as_asked_are_refused_at_launch(argv, needle):
    message = precheck(argv)
    assert message is not None and needle in message, message
    assert "\n" not in message


def test_sweeps_that_can_run_pass():
    for argv in (["-m", "K=5,6"], ["-m", "dataset=copy,linear"], ["-m", "experiment=linear"],
                 ["-m", "K=5,6", "threads=1", "hydra.sweep.subdir=${hydra.job.num}"],
                 ["-m", "K=5,6", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]):
        assert precheck(argv) is None, argv


def test_sweep_jobs_expand_like_hydra():
    with initialize_config_module(config_module="atbptt.conf", version_base="1.3"):
        grid = sweep_jobs(["experiment=copy_fixed"], [])
        assert len(grid) == 24 and grid[0] == ["+setting=K5", "seed=0", "experiment=copy_fixed"]
        narrowed = sweep_jobs(["experiment=copy_fixed", "+setting=K5,delta0.1"], [])
        assert [job[0] for job in narrowed] == ["+setting=K5"] * 3 + ["+setting=delta0.1"] * 3
        assert sweep_jobs(["K=1,2", "seed=3"], []) == [["K=1", "seed=3"], ["K=2", "seed=3"]]
