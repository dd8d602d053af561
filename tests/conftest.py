"""Shared fixtures: the real Redis, the fake provider process, and worker processes.

The end-to-end tests run against a pool started exactly as an operator would start one (the
Procfile's command), with a key prefix of its own so several runs can share one Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis

from llm_pool.client import LLMPool
from llm_pool.testing.cluster import FakeProviderProcess
from tests.helpers import ALLOWED_CHANNELS, REDIS_URL, Pool


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
