# The two commands a user types: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.synthmix-installed
# The CPU wheel that lies on the developers' and CI's disk; pinning keeps pip from pulling CUDA packages.
TORCH_PIN ?= torch==2.13.0
TEST_WORKERS ?= 2

.PHONY: demo test test-fast lint docs bench bench-gpu gpu-wheels gpu-wheels-size inspect clean

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

# The same run on a lent GPU machine (docs/gpu-bench.md), whose image has Python 3.12, torch 2.11, transformers 5.17,
# peft, accelerate 1.15 and pyarrow but no trl, datasets or package registry: `make gpu-wheels` writes into .whl/ the
# wheels of what bench_trainer.py --gpu needs and that image lacks, and synthmix's own wheel (at most 60 MiB in all).
# Then, in one call that carries .whl, one line:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site python3 bench/bench_trainer.py --gpu
GPU_WHEELS ?= trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 peft==0.21.2
GPU_WHEELS_DIR ?= .whl
GPU_WHEELS_MAX_MIB ?= 60
GPU_PLATFORMS := $(foreach n,manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1,--platform $(n)_x86_64)
gpu-wheels: $(STAMP)
	rm -rf $(GPU_WHEELS_DIR) && mkdir -p $(GPU_WHEELS_DIR)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $(GPU_PLATFORMS) \
		-d $(GPU_WHEELS_DIR) $(GPU_WHEELS)
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w $(GPU_WHEELS_DIR) .
	@$(MAKE) -s gpu-wheels-size GPU_WHEELS_DIR=$(GPU_WHEELS_DIR) GPU_WHEELS_MAX_MIB=$(GPU_WHEELS_MAX_MIB)

# Lists the wheels in $(GPU_WHEELS_DIR) and their total; fails past $(GPU_WHEELS_MAX_MIB) MiB (what a call carries).
gpu-wheels-size:
	@ls $(GPU_WHEELS_DIR)/*.whl >/dev/null || exit 1
	@for f in $(GPU_WHEELS_DIR)/*.whl; do printf '%9d  %s\n' $$(stat -c %s $$f) $$(basename $$f); done
	@total=$$(cat $(GPU_WHEELS_DIR)/*.whl | wc -c); \
	 echo "total: $$total bytes ($$((total / 1048576)) MiB; at most $(GPU_WHEELS_MAX_MIB) MiB)"; \
	 test $$total -le $$(($(GPU_WHEELS_MAX_MIB) * 1048576)) || { echo "$(GPU_WHEELS_DIR): over $(GPU_WHEELS_MAX_MIB) MiB" >&2; exit 1; }

inspect: $(STAMP)
	$(VENV)/bin/synthmix inspect --config configs/tiny.yaml

clean:
	rm -rf $(VENV) .cache runs site
