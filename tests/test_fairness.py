"""Fair share across tenants and per-tenant concurrency caps, against real workers and Redis.

The backlog is enqueued the way the orchestrator enqueues (plain arq, JSON serializer), so the
workers must index it themselves; the tenant that arrives later uses the pool's client.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis, RedisSettings, create_pool

from llm_pool.client import LLMPool
from llm_pool.schemas import ChunkEvent, OkReply
from llm_pool.testing.cluster import FakeProviderProcess
from tests.helpers import REDIS_URL, Pool, user

pytestmark = pytest.mark.e2e

BACKLOG = 5000
SLOTS_PER_WORKER = 5
HEAVY, LIGHT, CAPPED = (str(uuid.uuid4()) for _ in range(3))
CAPS = f"""
[tenants.overrides."{CAPPED}"]
max_concurrent = 2
"""
ONE_DEPLOYMENT = (("quality", "openai", "openai/gpt-4.1"), ("fast", "openai", "openai/gpt-4.1-mini"))


@pytest.fixture(scope="module")
def fpool(tmp_path_factory: pytest.TempPathFactory, provider: FakeProviderProcess) -> Iterator[Pool]:
    pool = Pool(
        tmp_path_factory.mktemp("fair"),
        provider,
        worker={"max_jobs": SLOTS_PER_WORKER},
        extra=CAPS,
        deployments=ONE_DEPLOYMENT,
    )
    first, second = pool.start_worker(), pool.start_worker()
    pool.wait_ready(first, second)
    yield pool
    pool.stop()


@pytest.fixture
async def arq_pool(fpool: Pool) -> AsyncIterator[ArqRedis]:
    arq = await create_pool(
        RedisSettings.from_dsn(REDIS_URL),
        job_serializer=lambda o: json.dumps(o).encode(),
        job_deserializer=json.loads,
        default_queue_name=fpool.keys.queue,
    )
    yield arq
    await arq.aclose()


async def enqueue_plain(arq: ArqRedis, tenant: str, count: int) -> list[str]:
    ids = [uuid.uuid4().hex for _ in range(count)]
    request = {"model": "fast", "messages": user(), "tenant_id": tenant}
    for start in range(0, count, 500):
        await asyncio.gather(
            *[arq.enqueue_job("complete", request, _job_id=i) for i in ids[start : start + 500]]
        )
    return ids


async def test_a_newcomer_starts_at_once_behind_a_5000_job_backlog(
    fpool: Pool, arq_pool: ArqRedis, aredis: aioredis.Redis, provider: FakeProviderProcess
) -> None:
    provider.configure("fast-openai", tokens=3, token_delay_ms=100)  # each job holds a slot ~0.3 s
    backlog = await enqueue_plain(arq_pool, HEAVY, BACKLOG)
    try:
        async with LLMPool(fpool.settings, redis_url=REDIS_URL) as client:
            waits = []
            for _ in range(5):
                await asyncio.sleep(0.5)
                started = time.perf_counter()
                async for event in client.stream("fast", user(), LIGHT):
                    if isinstance(event, ChunkEvent):
                        waits.append(time.perf_counter() - started)
                        break
        depth = await aredis.zcard(fpool.keys.queue)
        print(
            f"\nnewcomer's time to first token behind {depth} queued jobs: {[round(w, 3) for w in waits]} s"
        )
        # First in first out, it would wait for the backlog: 5000 x 0.3 s / 10 slots = 150 s.
        assert depth > BACKLOG - 500
        assert max(waits) < 1.5, waits
    finally:
        await aredis.zrem(fpool.keys.queue, *backlog)
        await aredis.delete(*[f"arq:job:{i}" for i in backlog])


async def test_concurrency_cap_holds_across_workers(
    fpool: Pool, arq_pool: ArqRedis, aredis: aioredis.Redis, provider: FakeProviderProcess
) -> None:
    provider.configure("fast-openai", tokens=3, token_delay_ms=60)
    ids = await enqueue_plain(arq_pool, CAPPED, 8)
    most = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        running = sum(await asyncio.gather(*[aredis.exists(f"arq:in-progress:{i}") for i in ids]))
        most = max(most, running)
        replies = await aredis.mget([fpool.keys.reply(i) for i in ids])
        if all(replies):
            break
        await asyncio.sleep(0.02)
    assert all(r is not None and OkReply.model_validate_json(r).status == "ok" for r in replies)
    # Two workers with 5 free slots each, yet never more than the tenant's cap at once.
    assert most == 2
