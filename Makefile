PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_VERBOSITY ?= error

.PHONY: install test test-fast smoke clean

install: $(BIN)/sdcli

$(BIN)/sdcli: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/sdcli

test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

test-fast: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow"

smoke: install
	$(BIN)/sdcli txt2img --model tiny --steps 2 --n_samples 1 --n_iter 1 --outdir outputs/smoke

clean:
	rm -rf $(VENV) outputs .pytest_cache build *.egg-info

.PHONY: bench bench-smoke

bench: install
	$(BIN)/python benchmarks/bench.py

bench-smoke: install
	$(BIN)/python benchmarks/bench.py --smoke --output /tmp/sdcli-bench-smoke.md
