# Two commands do all the set-up on a fresh machine:
#   make demo   installs into .venv and builds a 2,000-review IMDB image dataset offline
#   make test   installs into .venv and runs the tests and a smoke run of every benchmark
VENV ?= .venv
PY := $(VENV)/bin/python
# the IMDB reviews beside the checkout (never committed), when they are there; --dataset imdb
# looks here first. Without them the tests that need them skip (tests never download).
FASTIMG_DATA ?= $(abspath $(wildcard ../shared/data))
export FASTIMG_DATA
STAMP := $(VENV)/.fastimg-installed

.PHONY: install demo test bench

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CUDA-enabled build served from local disk; a bare 'torch' would download several GB
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fastimg build-dataset --dataset imdb --limit 2000 --max-length 256 --out imdb-demo.zarr --force
	$(VENV)/bin/fastimg show imdb-demo.zarr --out imdb-demo.png

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m benchmarks all --json bench-results/results.json
