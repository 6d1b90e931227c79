# The two commands of the README: `make plan` (main job) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test plan bench clean

install: $(STAMP)

# Reinstalls only when the project's dependencies change. Without a GPU the
# CPU build of torch goes in first, so `torch>=...` never pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	if nvidia-smi -L >/dev/null 2>&1; then \
	  echo "GPU found: torch comes from the package index (CUDA build)"; \
	else \
	  echo "no GPU: installing the CPU build torch==2.13.0"; \
	  $(BIN)/python -m pip install --quiet torch==2.13.0; \
	fi
	$(BIN)/python -m pip install --quiet -e '.[test,ray]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

plan: install
	$(BIN)/bench plan matrices/v100.yaml -o reports/v100-plan.md

bench: install
	$(BIN)/python -m pytest -q benchmarks/*.py --benchmark-enable --benchmark-only -p no:cacheprovider

clean:
	rm -rf $(VENV)
