# Quick start: `make demo` (the whole system on the embedded default), `make test` (the test suite).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast venv clean

# torch first: `torch==2.13.0` takes the local CPU build, so the range in requirements.txt pulls nothing more.
# torchvision is never installed (its wheel breaks against the CPU torch and then `import peft` fails).
# constraints.txt pins every package to the version the test suite was run with (a reproducible install).
$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -c constraints.txt torch==2.13.0
	$(VPY) -m pip install -q -c constraints.txt -r requirements.txt -r requirements-dev.txt
	$(VPY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# everything, the multi-rank DeepSpeed/torchrun runs, the Slurm scripts and the shortened demo included
test: $(STAMP)
	OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false $(VPY) -m pytest -q

# without the tests marked slow
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false $(VPY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(VPY) -m affectverse_ds.demo

clean:
	rm -rf artifacts runs results
