# On a fresh machine:  `make demo` (the whole pool, offline, answering a prompt),
# `make run` (a worker against a local Redis, real providers) and `make test`.
# `make test-real`: the pool against llama.cpp's llama-server (`make llama-server` builds and caches it).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run demo test test-fast test-real llama-server tiny-models lint redis bench bench-quick bench-real chaos clean

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

# llama.cpp's llama-server, built once per machine (about 10 minutes on 2 cores) and cached in
# $XDG_CACHE_HOME/llm-pool/llama-server-VERSION/ (default ~/.cache/...); later runs print its path at once.
llama-server: setup
	PYTHON=$(BIN)/python scripts/build-llama-server.sh

# The tiny GGUF models the real-server tier runs (the tests write their own; this is for trying it).
tiny-models: setup
	$(BIN)/python -m llm_pool.testing.tiny_gguf $(or $(DIR),models)

# The real-server tier: tests marked `real` (plain `pytest` and `make test` leave them out).
test-real: setup redis llama-server
	$(BIN)/python -m pytest -q -m real

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup redis
	$(BIN)/python -m bench.run

bench-quick: setup redis
	$(BIN)/python -m bench.run --quick --output /tmp/llm-pool-BENCHMARKS-quick.md

# Section 10 alone: the pool, in-process LiteLLM and the LiteLLM proxy against llama-server.
bench-real: setup redis llama-server
	$(BIN)/python -m bench.run --only real

chaos: setup redis
	$(BIN)/python -m bench.chaos

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
