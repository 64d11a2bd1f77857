# Entry points. Every target that needs Python depends on the venv, so each works as
# the first command on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
SIZE ?= default
PROFILE ?= embedded
PORT ?= 5000
LOCK := requirements.lock
export ABLATE_HOME ?= $(CURDIR)/runs

.PHONY: install lock test test-fast teacher teacher-baseline metric-models ablation-lsg sweep-kappa tradeoff tables mlflow-ui screenshots bench lint clean

install: $(VENV)/.installed

# Every dependency at the version in the lock file, so two installs a month apart compute
# the same numbers; the project itself on top, without resolving anything again. Re-runs
# only when pyproject.toml or the lock changes (the stamp is older than them).
$(VENV)/.installed: pyproject.toml $(LOCK)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 2; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e '.[dev]'
	$(BIN)/pip check
	touch $@

# Refresh the lock: resolve pyproject.toml afresh in a scratch venv and freeze the result.
# Commit the new requirements.lock with the numbers it changes (RESULTS.md, BENCHMARKS.md).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q --upgrade pip
	.venv-lock/bin/pip install -q -e '.[dev]'
	.venv-lock/bin/pip freeze --exclude-editable > $(LOCK)
	rm -rf .venv-lock

# Test workers (pytest-xdist), one torch thread each: two for the two-core machine the
# times in BENCHMARKS.md were measured on; TEST_WORKERS=0 runs in this process, serially.
# A module runs on one worker: its module fixtures (a Ray session, a plan run end to end,
# a two-node cluster) are built once, not once per worker.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile

# The whole suite, with the slowest tests listed at the end (their times: BENCHMARKS.md).
test: install
	$(PYTEST) --durations=15

# The edit loop: everything but the tests marked slow (Ray, end-to-end plans, simulations).
test-fast: install
	$(PYTEST) -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

teacher: install
	$(BIN)/ablate teacher --size default --rebuild-shipped

# The shipped teacher's baseline row (evaluation/assets/teacher-baseline/): ~8 min of one core.
# Rerun after `make teacher` or a change of the embedded protocol; tests/test_shipped.py
# fails until then.
teacher-baseline: install
	$(BIN)/python -m orchestrator.baseline

metric-models: install
	$(BIN)/ablate metric-models --rebuild-shipped

ablation-lsg: install
	$(BIN)/ablate run ablations/lsg.yaml --size $(SIZE) --profile $(PROFILE)

sweep-kappa: install
	$(BIN)/ablate run ablations/kappa.yaml --size $(SIZE) --profile $(PROFILE)

# lsg vs cfg across κ, compared at matched CLIP (ablations/tradeoff.yaml; 24 trials).
tradeoff: install
	$(BIN)/ablate run ablations/tradeoff.yaml --size $(SIZE) --profile $(PROFILE)

tables: install
	$(BIN)/ablate tables

mlflow-ui: install
	$(BIN)/ablate mlflow-ui --port $(PORT)

# The README's dashboard pictures, from the store of the last `make ablation-lsg`
# (needs Debian's chromium).
screenshots: install
	$(BIN)/python -m results.screenshots --plan lsg --out docs

bench: install
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV)
