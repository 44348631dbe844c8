# handprop: `make train` and `make test` work from a fresh clone (they install first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install train test format bench results tensorboard clean distclean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv with handprop installed editable (+ pytest, + the Optuna sweeper)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev,sweep]'
	touch $@

train: install  ## train the default MLP on the embedded MNIST sample (ARGS="key=value ...")
	$(BIN)/python train.py $(ARGS)

PY_FILES := src tests benchmarks docs/screenshots.py train.py eval.py predict.py explain.py

test: install  ## lint and format checks (ruff), then the whole test suite, slow tests included, on CPU (two workers)
	$(BIN)/ruff check $(PY_FILES)
	$(BIN)/ruff format --check $(PY_FILES)
	$(BIN)/python -m pytest -n 2 $(ARGS)

format: install  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix $(PY_FILES)
	$(BIN)/ruff format $(PY_FILES)

bench: install  ## benchmarks -> outputs/bench/ (ARGS=--quick: every section at toy sizes, as make test runs it)
	$(BIN)/python benchmarks/bench.py $(ARGS)

results: install  ## the results tables (docs/results.md, README) from runs: runs what is missing or stale (ARGS="--only sample_default", "--data-dir DIR")
	$(BIN)/python -m handprop.results --run $(ARGS)

tensorboard: install  ## serve every run under outputs/ (or under HANDPROP_OUTPUTS) on http://localhost:6006
	$(BIN)/tensorboard --logdir $${HANDPROP_OUTPUTS:-outputs} --host 127.0.0.1 --port 6006

clean:  ## remove caches and every run under outputs/ (keeps .venv)
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
	rm -rf .pytest_cache src/*.egg-info build dist lightning_logs
	find outputs -mindepth 1 -not -name .gitkeep -delete

distclean: clean  ## also remove the virtual environment
	rm -rf $(VENV)
