PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PIP_FLAGS ?= --disable-pip-version-check
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

.PHONY: setup demo test test-fast test-timm bench gpu-check figures clean

# idempotent: re-running only re-installs what changed
setup: $(BIN)/spectrascope

$(BIN)/spectrascope: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) -q -c constraints.txt torch==2.13.0 -e ".[dev]"
	touch $(BIN)/spectrascope

# the zoo table, one forward pass on a bundled photo, then the main job: relative log amplitudes
# of dfformer_s18 (random weights) on the bundled photos -> runs/demo/amplitude/
demo: setup
	MPLBACKEND=Agg $(BIN)/spectrascope models
	MPLBACKEND=Agg $(BIN)/spectrascope predict --model dfformer_s18 --num-images 1
	MPLBACKEND=Agg $(BIN)/spectrascope amplitude --model dfformer_s18 --output runs/demo/amplitude --overwrite

test: setup
	MPLBACKEND=Agg $(BIN)/python -m pytest -q tests

# timm's own tests/test_models.py (the installed timm's source distribution, fetched once into
# ~/.cache/spectrascope/timm-sdist) over every zoo entry point; see docs/timm.md
test-timm: setup
	MPLBACKEND=Agg $(BIN)/python tests/timm_suite.py

# every benchmark script, printed and kept under runs/bench/ (minutes on a CPU): make bench DEVICE=cuda
DEVICE ?= cpu
bench: setup
	mkdir -p runs/bench
	$(BIN)/python benchmarks/bench_cka.py --device $(DEVICE) --precision both | tee runs/bench/cka.txt
	$(BIN)/python benchmarks/bench_scorecam.py --device $(DEVICE) --img-size 224 --num-images 1 | tee runs/bench/scorecam.txt
	$(BIN)/python benchmarks/bench_amplitude.py --device $(DEVICE) | tee runs/bench/amplitude.txt
	$(BIN)/python benchmarks/bench_train.py --device $(DEVICE) --loop | tee runs/bench/train.txt

# on a GPU machine (<= 8 min): CUDA parity per family, AMP, compile training steps, torchrun nccl, make bench
gpu-check: setup
	mkdir -p runs
	MPLBACKEND=Agg $(BIN)/python benchmarks/gpu_check.py | tee runs/gpu-check.txt

# the committed weight-independent paper outputs: every table's params/FLOPs beside the paper's and the
# FLOPs breakdowns of the main models -> figures/ (index: figures/index.md; a test fails when they are stale)
figures: setup
	MPLBACKEND=Agg $(BIN)/python -m spectrascope.report.paper_figures --output figures

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
