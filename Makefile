# Two entry points: `make demo` (the main job) and `make test` (the suite). Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-slow demo lint clean constraints

# Re-installs only when pyproject.toml or constraints.txt changed since the last install. constraints.txt holds the
# exact versions the suite was checked with (see its header).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# constraints.txt anew: the newest versions pyproject.toml allows, installed into a scratch environment and frozen.
constraints:
	rm -rf $(VENV)-constraints && $(PYTHON) -m venv $(VENV)-constraints
	$(VENV)-constraints/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	{ grep '^#' constraints.txt; $(VENV)-constraints/bin/python -m pip freeze --exclude-editable; } > constraints.new
	mv constraints.new constraints.txt && rm -rf $(VENV)-constraints
	@echo "constraints.txt rewritten: run make test (re-pin if pinned numbers moved), then commit it"

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check src tests bench tools
	$(BIN)/ruff format --check src tests bench tools
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -m "not slow"

test-slow: setup
	$(BIN)/pytest -m slow

demo: setup
	$(BIN)/scratchdet demo

clean:
	rm -rf $(VENV) runs
