PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PIP_FLAGS ?= --disable-pip-version-check
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

.PHONY: setup demo test test-fast test-timm bench bench-readme gpu-check figures docs docs-figures clean

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

# every benchmark script, then one table of all their rows: runs/bench/summary.md and summary.json
# (logs beside them). The quick set takes about 10 min on a quiet 2-core CPU; FULL=1 adds the long
# settings (Score-CAM at 96 px x 2 images and 224 px, CKA at 224 px): make bench DEVICE=cuda FULL=1
DEVICE ?= cpu
FULL ?=
bench: setup
	$(BIN)/python benchmarks/run_all.py --device $(DEVICE) $(if $(FULL),--full)

# the benchmark table of docs/benchmarks.md, rendered from runs/bench/summary.json
bench-readme: setup
	$(BIN)/python benchmarks/run_all.py --markdown --readme docs/benchmarks.md

# on a GPU machine (<= 6 min, fails on any failed, skipped or overlong check; says so and fails without a GPU):
# parity (TF32 off and on), every family in fp32/bf16/fp16 +- channels-last with a training step, nccl collectives,
# DDP training + resume, CAM/amplitude/cka/evaluate vs the CPU, throughput, compile vs eager -> runs/gpu-check/
gpu-check: setup
	MPLBACKEND=Agg $(BIN)/python benchmarks/gpu_check.py

# the committed weight-independent paper outputs: every table's params/FLOPs beside the paper's and the
# FLOPs breakdowns of the main models -> figures/ (index: figures/index.md; a test fails when they are stale)
figures: setup
	MPLBACKEND=Agg $(BIN)/python -m spectrascope.report.paper_figures --output figures

# the documentation site (mkdocs-material + mkdocstrings) -> site/, warnings are errors
docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

$(VENV)/.docs-installed: $(BIN)/spectrascope
	$(BIN)/pip install $(PIP_FLAGS) -q -c constraints.txt torch==2.13.0 -e ".[dev,docs]"
	touch $@

# the figures of the documentation (docs/img/*.png, docs/analyses/figures/*.png) from reduced models
# trained on synthetic textures (trained once into build/docs-figures/; minutes on a CPU)
docs-figures: setup
	MPLBACKEND=Agg $(BIN)/python docs/make_figures.py --work build/docs-figures
	MPLBACKEND=Agg $(BIN)/python docs/make_frequency_figures.py --work build/docs-figures/frequency

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache
