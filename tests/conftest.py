"""Shared fixtures: the real Redis, the fake provider process, and worker processes.

The end-to-end tests run against a pool started exactly as an operator would start one (the
Procfile's command), with a key prefix of its own so several runs can share one Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import redis.asyncio as aioredis

from llm_pool.client import LLMPool
from llm_pool.keys import Keys
from llm_pool.settings import Settings, load_settings
from llm_pool.testing.cluster import (
    DEPLOYMENTS,
    ROOT,
    FakeProviderProcess,
    WorkerProcess,
    settings_toml,
    worker_env,
)

# What an operator whose WebSocket handlers listen on channels of their own would set.
ALLOWED_CHANNELS = ["{prefix}:stream:*", "ws:*"]

REDIS_URL = os.environ.get("LLM_POOL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

# Planted secrets: the logs, replies and heartbeats must never contain them.
SECRETS = {
    "OPENAI_API_KEY": "sk-planted-openai-" + uuid.uuid4().hex,
    "ANTHROPIC_API_KEY": "sk-ant-planted-" + uuid.uuid4().hex,
}


class Pool:
    """The pool under test: its settings, keys, provider and workers."""

    def __init__(
        self,
        tmp: Path,
        provider: FakeProviderProcess,
        worker: dict[str, Any] | None = None,
        redis_url: str = REDIS_URL,
        router: dict[str, Any] | None = None,
        extra: str = "",
        deployments: tuple[tuple[str, str, str], ...] = DEPLOYMENTS,
        redis_options: dict[str, Any] | None = None,
    ) -> None:
        self.prefix = f"t{uuid.uuid4().hex[:10]}"
        self.keys = Keys(self.prefix)
        self.provider = provider
        self.tmp = tmp
        self.redis_url = redis_url
        self.settings_path = tmp / "settings.toml"
        self.settings_path.write_text(
            settings_toml(
                provider,
                self.prefix,
                redis_url,
                worker=worker,
                router=router,
                deployments=deployments,
                extra=extra,
                redis_options=redis_options,
            )
        )
        self.env = worker_env(self.settings_path, SECRETS)
        self.settings: Settings = load_settings(self.settings_path, environ={})
        self.workers: list[WorkerProcess] = []

    def start_worker(self, worker_id: str | None = None) -> WorkerProcess:
        worker = WorkerProcess(worker_id or f"w-{uuid.uuid4().hex[:6]}", self.env, self.tmp)
        self.workers.append(worker)
        return worker

    def wait_ready(self, *workers: WorkerProcess) -> None:
        for worker in workers:
            worker.wait_ready(self.redis_url, self.keys.heartbeat(worker.worker_id))

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    def run_module(self, module: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``python -m MODULE ARGS`` as an operator would run it against this pool."""
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            env={**self.env, "REDIS_URL": self.redis_url, **env},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )

    def logs(self) -> str:
        return "".join(w.log_path.read_text(errors="replace") for w in self.workers)


@pytest.fixture(scope="session")
def redis_sync() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    yield client
    client.close()


@pytest.fixture(scope="session")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeProviderProcess]:
    log = (tmp_path_factory.mktemp("provider") / "provider.log").open("w")
    fake = FakeProviderProcess(log=log)
    yield fake
    fake.stop()
    log.close()


@pytest.fixture(scope="session")
def pool(
    tmp_path_factory: pytest.TempPathFactory, provider: FakeProviderProcess, redis_sync: redis.Redis
) -> Iterator[Pool]:
    """Two workers on one queue, started once for the session; channels ``ws:*`` allowed too."""
    the_pool = Pool(tmp_path_factory.mktemp("pool"), provider, worker={"allowed_channels": ALLOWED_CHANNELS})
    first, second = the_pool.start_worker("alpha"), the_pool.start_worker("beta")
    the_pool.wait_ready(first, second)
    yield the_pool
    for worker in the_pool.workers:
        worker.stop()
    for key in redis_sync.scan_iter(match=f"{the_pool.prefix}:*", count=1000):
        redis_sync.delete(key)


@pytest.fixture(autouse=True)
def _clean_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "provider" in request.fixturenames:
        request.getfixturevalue("provider").reset()


@pytest.fixture
async def client(pool: Pool) -> AsyncIterator[LLMPool]:
    async with LLMPool(pool.settings, redis_url=REDIS_URL) as pool_client:
        yield pool_client


@pytest.fixture
async def aredis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


TENANT = str(uuid.uuid4())


def sync_get(client: redis.Redis, key: str) -> bytes | None:
    """redis-py's sync client typed for what it returns here (its stubs say "maybe awaitable")."""
    return cast(bytes | None, client.get(key))


def sync_pttl(client: redis.Redis, key: str) -> int:
    return cast(int, client.pttl(key))


def user(text: str = "hello there friend") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def decode(raw: bytes | str | None) -> dict[str, Any]:
    assert raw is not None
    value = json.loads(raw)
    assert isinstance(value, dict)
    return value
