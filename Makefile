# Each target installs what it needs first, so `make demo` and `make test` work alone on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU wheel of torch 2.13.0 installs from local disk here; an unpinned torch would pull a multi-GB CUDA build.
# GPU users: `make install TORCH_SPEC=torch` (or install torch first, then `pip install -e .`).
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast lint benchmark clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rrg demo --output-dir outputs/demo

# Everything, slow end-to-end tests included.
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The edit loop: skips tests marked slow (training runs, fresh venvs, the wheel); a few minutes on 2 cores.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" -n 2 $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

benchmark: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
