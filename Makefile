# Two commands do all the set-up on a fresh machine:
#   make demo   installs into .venv and runs the main job offline
#   make test   installs into .venv and runs the tests and a smoke run of every benchmark
VENV ?= .venv
PY := $(VENV)/bin/python
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
	$(VENV)/bin/fastimg images --synthetic 5000x768 --out demo.zarr --force
	$(VENV)/bin/fastimg info demo.zarr

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m benchmarks all --json bench-results/results.json
