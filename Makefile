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

# Two workers, each file's tests on one (its module fixtures are made once); the tests that
# start networked peers (tests/p2p/net, the swarm's dashboard) after them in one process:
# peers on loopback race their own deadlines, and a second worker's load made some miss
# them. --durations: where the time goes.
PYTEST := $(PY) -m pytest -q
SERIAL := tests/p2p/net tests/dashboard

test: setup
	$(PYTEST) -n 2 --dist loadfile --durations=15 $(addprefix --ignore=,$(SERIAL))
	$(PYTEST) --durations=5 $(SERIAL)

test-fast: setup
	$(PYTEST) -n 2 --dist loadfile -m "not slow" $(addprefix --ignore=,$(SERIAL))
	$(PYTEST) -m "not slow" $(SERIAL)

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

bench: setup
	$(PY) -m speechswarm bench train

clean:
	rm -rf runs data/synth .pytest_cache
