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

test: setup
	$(PY) -m pytest -q --durations=15  # the 15 slowest tests: where the suite's time goes

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

bench: setup
	$(PY) -m speechswarm bench train

clean:
	rm -rf runs data/synth .pytest_cache
