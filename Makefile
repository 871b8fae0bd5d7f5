# The two commands a user types: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.synthmix-installed
# The CPU wheel that lies on the developers' and CI's disk; pinning keeps pip from pulling CUDA packages.
TORCH_PIN ?= torch==2.13.0
TEST_WORKERS ?= 2

.PHONY: demo test test-fast lint docs bench bench-gpu inspect clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/synthmix demo

# Two workers (this machine's two cores), a test file each at a time, so a file's fixtures are built once; the
# files in the order tests/conftest.py gives them (the longest first), not xdist's (the most tests first).
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: $(STAMP)
	$(PY) -m pytest $(XDIST)

# The lane to run while working: every test not marked slow (end-to-end runs: launches, subprocesses, sweeps).
test-fast: $(STAMP)
	$(PY) -m pytest $(XDIST) -m "not slow"

# ruff, then the layers of pyproject.toml's import-linter contract (scripts/check_layers.py).
lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(PY) scripts/check_layers.py

# The documentation site, into site/ (open site/index.html); --strict: a broken link or anchor is an error.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

bench: $(STAMP)
	$(PY) bench/make_corpus.py
	$(PY) bench/bench_data.py
	$(PY) bench/bench_mixer.py
	$(PY) bench/bench_stream.py
	$(PY) bench/bench_trainer.py
	$(PY) bench/bench_collapse.py --epochs 2

# One invocation on one GPU (about 8 minutes on an H100): every attention path and loss, TRL, a correctness run;
# the figures go to bench/figures-cuda.json and .md (or $$OUT/ when set).
bench-gpu: $(STAMP)
	$(PY) bench/bench_trainer.py --gpu

inspect: $(STAMP)
	$(VENV)/bin/synthmix inspect --config configs/tiny.yaml

clean:
	rm -rf $(VENV) .cache runs site
