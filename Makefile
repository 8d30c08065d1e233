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

.PHONY: install demo test benchmark clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rrg demo --output-dir outputs/demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

benchmark: $(STAMP)
	$(PY) benchmarks/run.py --output benchmarks/results/self.md
	$(PY) benchmarks/sidebyside.py --json benchmarks/results/sidebyside.json --plot benchmarks/results/sidebyside.png
	$(PY) benchmarks/epoch.py --json benchmarks/results/epoch.json
	$(VENV)/bin/rrg plan --config training/recipes/paper_stage2.yaml --json benchmarks/results/plan_paper.json

clean:
	rm -rf $(VENV) outputs .pytest_cache
