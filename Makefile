PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_VERBOSITY ?= error

.PHONY: install test test-fast smoke clean

install: $(BIN)/sdcli

# sd-prompt-reader (a reader the tests use) goes in with --no-deps: its requirements pin pillow==10.3.0 and
# click<8.2 and pull the customtkinter GUI; its reader needs only Pillow and piexif (sdcli dependencies).
$(BIN)/sdcli: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps 'sd-prompt-reader==1.3.5'
	touch $(BIN)/sdcli

test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

# The everyday loop: without the tests marked slow, on both cores (pytest-xdist; each worker builds its own
# tiny models). `make test` (CI) runs everything in one process: its kill/resume tests time real processes.
test-fast: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow" -n 2

smoke: install
	$(BIN)/sdcli txt2img --model tiny --steps 2 --n_samples 1 --n_iter 1 --outdir outputs/smoke

clean:
	rm -rf $(VENV) outputs .pytest_cache build *.egg-info

.PHONY: bench bench-smoke bench-demo bench-train demo-model bench-peers-setup bench-peers

# The peers of the bench's `peers` section, each in its own venv under ~/.cache/sdcli/bench/peers (OpenVINO via
# optimum-intel ~1 min; stable-diffusion.cpp built from source on one core ~5 min). Idempotent. A peer that cannot
# be installed is skipped by the section with the reason (the leading - in `bench` keeps the bench going).
bench-peers-setup:
	$(PYTHON) benchmarks/peers/setup.py all

# The peers section, the duel (sdcli default vs OpenVINO bf16) and the physical limit, on their own page.
bench-peers: install bench-peers-setup
	$(BIN)/python benchmarks/bench.py --only peers,duel,limits --output /tmp/sdcli-bench-peers.md

bench: install
	-$(PYTHON) benchmarks/peers/setup.py all
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/demo_quality.py
	$(BIN)/python benchmarks/train_concepts.py

# Prompt adherence of the shipped demo models (the checker's tables in BENCHMARKS.md), ~5 min.
bench-demo: install
	$(BIN)/python benchmarks/demo_quality.py

# Concept training on the demo model, measured by its checker (BENCHMARKS.md "Concept training"), ~4 min.
bench-train: install
	$(BIN)/python benchmarks/train_concepts.py

# Retrain the demo family from scratch on the CPU (deterministic, one thread; ~2 h here) and replace the
# shipped weights in sdcli/demo/weights. Checkpoints and logs go to demo-build/.
demo-model: install
	OMP_NUM_THREADS=1 $(BIN)/python -m sdcli.demo.family --work demo-build --export sdcli/demo/weights

bench-smoke: install
	$(BIN)/python benchmarks/bench.py --smoke --output /tmp/sdcli-bench-smoke.md
