"""The real-server tier (``make test-real``, marker ``real``): the pool against llama.cpp's own
``llama-server``, through real worker processes started with the Procfile's command.

Per session: the two tiny models of ``llm_pool.testing.tiny_gguf``, three llama-servers on free
loopback ports (one slot each, so ``/slots`` shows exactly the request under test) and one pool:

==============  ==========================  ==============================
group           deployment                  server
==============  ==========================  ==============================
quality         ``openai/tiny``             ``quality`` (text model)
fast            ``openai/tiny``             ``fast`` (text model)
tools           ``openai/tiny-tools``       ``tools`` (tool-calling model)
claude          ``anthropic/tiny``          ``quality``
claude-tools    ``anthropic/tiny-tools``    ``tools``
==============  ==========================  ==============================

``quality`` and ``fast`` fall back to each other, as in every test pool. The binary comes from
``make llama-server`` (cached per machine); without it every test here fails saying so.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from llm_pool.client import LLMPool
from llm_pool.keys import Keys
from llm_pool.settings import load_settings
from llm_pool.testing.cluster import settings_toml, worker_env
from llm_pool.testing.llama_server import LlamaServer, ServerGroups
from llm_pool.testing.tiny_gguf import CONTEXT, write_models
from tests.helpers import REDIS_URL, SECRETS, Pool, cleanup

DEPLOYMENTS = (
    ("quality", "openai", "openai/tiny"),
    ("fast", "openai", "openai/tiny"),
    ("tools", "openai", "openai/tiny-tools"),
    ("claude", "anthropic", "anthropic/tiny"),
    ("claude-tools", "anthropic", "anthropic/tiny-tools"),
)
# Which server each group's deployment is on, and which model each server runs.
SERVER_OF_GROUP = {
    "quality": "quality",
    "fast": "fast",
    "tools": "tools",
    "claude": "quality",
    "claude-tools": "tools",
}
MODEL_OF_SERVER = {"quality": "text", "fast": "text", "tools": "tools"}
# Timeouts for a real server: a long stream takes seconds, not the fake provider's milliseconds.
ROUTER = {"num_retries": 0, "cooldown_time_s": 0, "timeout_s": 30, "stream_timeout_s": 30}


class RealPool(Pool):
    """``tests.conftest.Pool`` (workers, keys, logs) with a settings file pointing at llama-servers."""

    def __init__(self, tmp: Path, servers: dict[str, LlamaServer]) -> None:
        self.prefix = f"real{uuid.uuid4().hex[:10]}"
        self.keys = Keys(self.prefix)
        self.tmp = tmp
        self.redis_url = REDIS_URL
        self.servers = servers
        groups = ServerGroups({group: servers[name] for group, name in SERVER_OF_GROUP.items()})
        self.settings_path = tmp / "settings.toml"
        self.settings_path.write_text(
            settings_toml(groups, self.prefix, REDIS_URL, router=ROUTER, deployments=DEPLOYMENTS)
        )
        self.env = worker_env(self.settings_path, SECRETS)
        self.settings = load_settings(self.settings_path, environ={})
        self.workers = []

    def server(self, group: str) -> LlamaServer:
        return self.servers[SERVER_OF_GROUP[group]]


@pytest.fixture(scope="session")
def llama_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LlamaServer]]:
    """The three llama-servers, started once (a second or so in all)."""
    directory = tmp_path_factory.mktemp("llama")
    models = write_models(directory / "models")
    servers = {
        name: LlamaServer(models[model], directory / f"llama-server-{name}.log", context=CONTEXT)
        for name, model in MODEL_OF_SERVER.items()
    }
    try:
        for server in servers.values():
            server.start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def real_pool(
    tmp_path_factory: pytest.TempPathFactory, llama_servers: dict[str, LlamaServer], redis_sync: redis.Redis
) -> Iterator[RealPool]:
    """Two workers serving every group above."""
    pool = RealPool(tmp_path_factory.mktemp("real-pool"), llama_servers)
    try:
        pool.wait_ready(pool.start_worker("real-a"), pool.start_worker("real-b"))
        yield pool
    finally:
        pool.stop()
        cleanup(pool)


@pytest.fixture(autouse=True)
def _servers_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that killed a server leaves it running again for the next one."""
    yield
    if "llama_servers" in request.fixturenames:
        servers: dict[str, Any] = request.getfixturevalue("llama_servers")
        for server in servers.values():
            server.start()


@pytest.fixture
async def real_client(real_pool: RealPool) -> AsyncIterator[LLMPool]:
    async with LLMPool(real_pool.settings, redis_url=REDIS_URL) as client:
        yield client
