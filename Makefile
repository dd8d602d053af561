# On a fresh machine:  `make demo` (the whole pool, offline, answering a prompt),
# `make run` (a worker against a local Redis, real providers) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run demo test test-fast lint redis bench bench-quick chaos clean

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

demo: setup redis
	$(BIN)/llm-pool demo "$(or $(PROMPT),Tell me about queues.)"

test: setup redis
	$(BIN)/python -m pytest -q

# In-process tests only (no worker, provider or redis-server processes): under a minute.
test-fast: setup redis
	$(BIN)/python -m pytest -q -m "not e2e"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup redis
	$(BIN)/python -m bench.run

bench-quick: setup redis
	$(BIN)/python -m bench.run --quick --output /tmp/llm-pool-BENCHMARKS-quick.md

chaos: setup redis
	$(BIN)/python -m bench.chaos

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
