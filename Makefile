# cryolens: `make demo` and `make test` are all a fresh machine needs.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
DEMO   ?= demo
PYTEST_ARGS ?=

.PHONY: install demo test test-slow bench clean

$(PY):
	python3 -m venv $(VENV)

# torch first, pinned: this workplace keeps a CPU build of 2.13.0 on disk, and any other
# spec would pull GBs of CUDA wheels. Then the package with its test extras.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Movies in, map out: simulated tutorial movies of apoferritin through the tutorial workflow
# (cryolens/workflows/tutorial.toml); rerunning resumes or skips the finished steps.
demo: $(STAMP)
	$(VENV)/bin/cryolens demo --out $(DEMO)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/reconstruct.py

clean:
	rm -rf $(DEMO) .pytest_cache
