# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export FACTOST_DATA_DIR ?= $(abspath ../shared/data)
# glibc allocator settings that cut CPU step times (see docs/performance.md).
export GLIBC_TUNABLES ?= glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184:glibc.malloc.arena_max=1

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

TORCH_STAMP := $(VENV)/.torch-stamp

# tests/test_reference_torch.py checks the PyTorch reference of benchmarks/ against the JAX encoder.
# torch is a separate step, not a dependency or extra: `pip install torch==2.13.0` takes the CPU
# wheel that lies on the development and CI machines (about 2 min to install, 750 MB), where a
# dependency would pull a multi-GB CUDA build from PyPI into every user's install.
$(TORCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet torch==2.13.0
	touch $(TORCH_STAMP)

test: install $(TORCH_STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

demo: install
	$(PY) launch/demo.py --workdir runs/demo

BENCH_STAMP := $(VENV)/.bench-stamp

# torch (CPU wheel) is a benchmark-only extra: the reference the speed table compares against;
# baselines (statsforecast) gives the AutoETS / AutoTheta columns of the accuracy tables.
$(BENCH_STAMP): $(TORCH_STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench,baselines]' --extra-index-url https://download.pytorch.org/whl/cpu
	touch $(BENCH_STAMP)

# Speed against PyTorch + stage-2 scaling (run.py), zero-shot throughput against statsforecast
# (forecast_speed.py), then perf_report.py writes their tables and the targets into docs/performance.md.
# The capability benchmark's quick run prints its table; its JSON goes to a folder of its own and the
# docs keep the full runs (python benchmarks/sanity.py --label vN rewrites those).
bench: $(BENCH_STAMP)
	$(PY) benchmarks/run.py --quick --output benchmarks/results
	$(PY) benchmarks/forecast_speed.py --quick --output benchmarks/results
	$(PY) benchmarks/perf_report.py --results benchmarks/results --docs docs/performance.md
	$(PY) benchmarks/accuracy.py --quick
	$(PY) benchmarks/sanity.py --quick --output benchmarks/results/sanity/quick --docs ''

clean:
	rm -rf $(VENV) runs .pytest_cache
