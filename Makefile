# Two commands on a fresh machine:  `make run` (a worker against a local Redis)
# and `make test` (the whole test suite). Everything else is what those two use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint redis bench bench-quick clean

$(STAMP): requirements.lock constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

redis:
	@scripts/ensure-redis.sh

run: setup redis
	$(BIN)/python -m worker

test: setup redis
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup redis
	$(BIN)/python -m bench.run

bench-quick: setup redis
	$(BIN)/python -m bench.run --quick --output /tmp/llm-pool-BENCHMARKS-quick.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
