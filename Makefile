# speechswarm: `make demo` runs the main job on the built-in corpus, `make test` the tests.
# Both set up everything first on a fresh Debian machine (apt packages, .venv, the package).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done

.PHONY: setup demo test test-fast lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

demo: setup
	$(PY) -m speechswarm demo

# Two workers, each file's tests on one (its module fixtures are made once): 11 min against
# 18.5 in one process on 2 cores. --durations=15: the slowest tests, where the time goes.
PYTEST := $(PY) -m pytest -q -n 2 --dist loadfile

test: setup
	$(PYTEST) --durations=15

test-fast: setup
	$(PYTEST) -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

bench: setup
	$(PY) -m speechswarm bench train

clean:
	rm -rf runs data/synth .pytest_cache
