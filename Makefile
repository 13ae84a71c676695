# atbptt — common tasks. `make help` lists them.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# verified corpora beside the checkout, when present (else $ATBPTT_DATA or ./data, see docs/data.md)
ifneq ($(wildcard ../shared/data/ptb),)
export ATBPTT_DATA ?= $(abspath ../shared/data)
endif

.PHONY: help setup run test test-all lint test-slurm bench figures aggregate sweep-copy sweep-copy-variable \
        sweep-linear sweep-var sweep-ptb-cpu sweep-ptb-cpu-long sweep-wikitext2-cpu clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-22s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # CPU wheel; an unpinned torch may pull a multi-GB CUDA build
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install torch 2.13.0 (CPU), atbptt and test tools (idempotent)

run: setup  ## train the default model (LSTM on the copy task, ~2 min on 2 CPU cores)
	$(BIN)/atbptt-run

test: setup  ## the fast test set (CPU, a few minutes): everything but the tests marked slow
	$(BIN)/pytest -q -m "not slow"

test-all: setup  ## every test: also the multi-process sweeps, kill/resume and SLURM (marked slow)
	$(BIN)/pytest -q

lint: setup  ## ruff (line length 100; pyproject.toml [tool.ruff])
	$(BIN)/ruff check src tests scripts examples

test-slurm: setup  ## the tests against a local single-node SLURM (root, slurm-wlm, munge; docs/cluster.md)
	$(BIN)/pytest -q -m slurm

bench: setup  ## benchmarks: ratios against baselines timed in the same process
	$(BIN)/python scripts/bench.py

aggregate: setup  ## collect results/sweeps/* run directories into results/<experiment>/*.csv
	$(BIN)/python scripts/aggregate.py --runs results/sweeps --out results

figures: setup  ## rebuild every figure and table from the committed CSVs (no training)
	$(BIN)/python scripts/figures.py --results results
	test ! -f results/ptb_cpu_long/runs.csv || $(BIN)/python scripts/headline.py --results results --experiment ptb_cpu_long

sweep-copy: setup  ## copy task m=10: K in {5,10,15,20,30}, delta in {0.9,0.5,0.1}, 3 seeds
	$(BIN)/atbptt-run -m experiment=copy_fixed

sweep-copy-variable: setup  ## copy task m in [5,10]: same grid
	$(BIN)/atbptt-run -m experiment=copy_variable

sweep-linear: setup  ## linear state-space system: K and delta grids over rho
	$(BIN)/atbptt-run -m experiment=linear

sweep-var: setup  ## VAR(p) forecasting: K and delta grids over rho
	$(BIN)/atbptt-run -m experiment=var

sweep-ptb-cpu: setup  ## PTB at width 200 (CPU scale)
	$(BIN)/atbptt-run -m experiment=ptb_cpu

sweep-ptb-cpu-long: setup  ## PTB 1x200, 15 epochs per run, in the background and resumable (SEED=0)
	bash scripts/long_runs.sh start ptb_cpu_long $${SEED:-0}

sweep-wikitext2-cpu: setup  ## WikiText-2 at width 200 (CPU scale)
	$(BIN)/atbptt-run -m experiment=wikitext2_cpu

clean:  ## remove caches and local run directories (keeps results/*/ CSVs and figures)
	rm -rf .pytest_cache results/runs build *.egg-info
