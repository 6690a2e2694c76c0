# One command to set up and run the main job, one to set up and run the tests.
#   make run    creates .venv, installs attnbench, runs the default (quick) suite
#   make test   creates .venv, installs attnbench with test extras, runs the linter (ruff) and pytest
# On a machine without an NVIDIA GPU the CPU build of torch 2.13.0 is installed first;
# where torch is already importable in the venv (e.g. your CUDA build) it is kept.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -q -n 2

.PHONY: setup run test lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if ! $(PY) -c "import torch" 2>/dev/null && ! command -v nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install -q "$(TORCH_SPEC)"; fi
	$(PY) -m pip install -q -e ".[test,cluster,peers]"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/attnbench run

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
