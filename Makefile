# Two entry points: `make demo` and `make test`. Each creates its own virtual
# environment (.venv) on a fresh machine; torch is pinned to the CPU build.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

# glibc hands buffers over 32 MiB fresh pages from the OS on every allocation; keeping
# freed memory (../shared/PERF-NOTES.md) makes large FFTs up to 1.9x faster here.
export MALLOC_MMAP_MAX_ := 0
export MALLOC_TRIM_THRESHOLD_ := 68719476736

.PHONY: venv demo test test-all bench clean

$(BIN)/torchqsm: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/torchqsm

demo: venv
	$(BIN)/python examples/demo.py --out demo-output

test: venv
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

test-all: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python benchmarks/bench_inversion.py

clean:
	rm -rf $(VENV) demo-output
