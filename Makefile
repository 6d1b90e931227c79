# The two commands of the README: `make plan` (main job) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast lint plan bench clean

install: $(STAMP)

# Reinstalls only when the project's dependencies change. Without a GPU the
# CPU build of torch goes in first, so `torch>=...` never pulls a CUDA build;
# with GPUs, the CUDA build with kernels for every card (scripts/torch_build.py).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	if nvidia-smi -L >/dev/null 2>&1; then \
	  args=$$($(BIN)/python scripts/torch_build.py) || exit 2; \
	  $(BIN)/python -m pip install --quiet $$args; \
	else \
	  echo "no GPU: installing the CPU build torch==2.13.0"; \
	  $(BIN)/python -m pip install --quiet torch==2.13.0; \
	fi
	$(BIN)/python -m pip install --quiet -e '.[test,ray]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

# Everything but the tests that train real models in child processes.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# ruff (lint and format) over the code, mypy over the package.
lint: install
	$(BIN)/ruff check bench tests scripts benchmarks
	$(BIN)/ruff format --check bench tests scripts benchmarks
	$(BIN)/mypy

plan: install
	$(BIN)/bench plan matrices/v100.yaml -o reports/v100-plan.md

bench: install
	$(BIN)/python -m pytest -q benchmarks/*.py --benchmark-enable --benchmark-only -p no:cacheprovider

clean:
	rm -rf $(VENV)
