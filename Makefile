PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PIP_FLAGS ?= --disable-pip-version-check

.PHONY: setup demo test test-fast clean

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

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
