# Entry points. Every target that needs Python depends on the venv, so each works as
# the first command on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
SIZE ?= default
PROFILE ?= embedded
PORT ?= 5000
export ABLATE_HOME ?= $(CURDIR)/runs

.PHONY: install test teacher metric-models ablation-lsg sweep-kappa tables mlflow-ui bench lint clean

install: $(VENV)/.installed

# Re-runs only when pyproject.toml changes (the stamp is older than it).
$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 2; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

test: install
	$(BIN)/python -m pytest tests

lint: install
	$(BIN)/ruff check .

teacher: install
	$(BIN)/ablate teacher --size default --rebuild-shipped

metric-models: install
	$(BIN)/ablate metric-models --rebuild-shipped

ablation-lsg: install
	$(BIN)/ablate run ablations/lsg.yaml --size $(SIZE) --profile $(PROFILE)

sweep-kappa: install
	$(BIN)/ablate run ablations/kappa.yaml --size $(SIZE) --profile $(PROFILE)

tables: install
	$(BIN)/ablate tables

mlflow-ui: install
	$(BIN)/ablate mlflow-ui --port $(PORT)

bench: install
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV)
