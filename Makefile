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

# Two workers, each file's tests on one (its module fixtures are made once); the networked
# peers' tests after them in one process: peers on loopback race their own deadlines, and a
# second worker's load made one miss its neighbour. --durations: where the time goes.
PYTEST := $(PY) -m pytest -q
NET := tests/p2p/net

test: setup
	$(PYTEST) -n 2 --dist loadfile --durations=15 --ignore=$(NET)
	$(PYTEST) --durations=5 $(NET)

test-fast: setup
	$(PYTEST) -n 2 --dist loadfile -m "not slow" --ignore=$(NET)
	$(PYTEST) -m "not slow" $(NET)

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

bench: setup
	$(PY) -m speechswarm bench train

clean:
	rm -rf runs data/synth .pytest_cache
