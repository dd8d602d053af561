"""Redis as production runs it: a crash loses nothing acknowledged, an evicting Redis is refused.

Each test runs its own redis-server (a crash, an eviction policy) on a free loopback port.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from llm_pool.client import LLMPool
from llm_pool.testing.cluster import FakeProviderProcess, RedisServer, free_port
from tests.helpers import Pool, private_redis, user
from tests.plain import plain_arq

pytestmark = pytest.mark.e2e

AOF = {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"}


async def test_an_evicting_redis_stops_the_worker_with_one_line(
    tmp_path: Path, provider: FakeProviderProcess
) -> None:
    with private_redis({"maxmemory": "100mb", "maxmemory-policy": "allkeys-lru"}) as server:
        pool = Pool(tmp_path, provider, redis_url=server.url)
        worker = pool.start_worker()
        try:
            code = worker.wait(timeout_s=60)
        finally:
            pool.stop()
        log = pool.logs()
    assert code == 2, f"exit code {code}; log:\n{log[-2000:]}"
    assert "maxmemory-policy is 'allkeys-lru'" in log and "noeviction" in log, log[-2000:]
    assert "Traceback" not in log, log[-2000:]


async def test_a_redis_that_keeps_nothing_is_warned_about(
    tmp_path: Path, provider: FakeProviderProcess
) -> None:
    with private_redis() as server:  # --save "" --appendonly no
        pool = Pool(tmp_path, provider, redis_url=server.url)
        try:
            pool.wait_ready(pool.start_worker())
        finally:
            pool.stop()
    assert pool.logs().count("redis_not_persistent") == 1, pool.logs()[-2000:]


async def test_queued_jobs_survive_a_redis_crash_with_aof(
    tmp_path: Path, provider: FakeProviderProcess
) -> None:
    """50 jobs queued (half by plain arq, half by ``LLMPool``) and no worker; Redis SIGKILLed 1.5 s
    later and restarted from its append-only file; then a worker answers each exactly once."""
    server = RedisServer(port=free_port(), directory=tmp_path, config=AOF)
    server.start()
    tenant = str(uuid.uuid4())
    pool = Pool(tmp_path, provider, redis_url=server.url)
    ids = [uuid.uuid4().hex for _ in range(50)]
    client = aioredis.Redis.from_url(server.url)
    try:
        arq = await plain_arq(server.url, pool.keys.queue)
        request = {"model": "fast", "messages": user(), "tenant_id": tenant}
        for request_id in ids[:25]:
            assert await arq.enqueue_job("complete", request, _job_id=request_id)
        await arq.aclose()
        async with LLMPool(pool.settings, redis_url=server.url) as caller:
            for request_id in ids[25:]:
                await caller.submit("fast", user(), tenant, request_id=request_id)
        await asyncio.sleep(1.5)  # appendfsync everysec: what was written a second ago is on disk
        server.kill()
        server.start()
        assert await client.zcard(pool.keys.queue) == 50, "the queue came back from the AOF"
        worker = pool.start_worker()
        pool.wait_ready(worker)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if await client.exists(*[pool.keys.reply(i) for i in ids]) == len(ids):
                break
            await asyncio.sleep(0.2)
        replies = [json.loads(raw) for raw in await client.mget([pool.keys.reply(i) for i in ids]) if raw]
        ledger = await client.hgetall(pool.keys.usage(tenant))
    finally:
        pool.stop()
        await client.aclose()
        server.stop()
    assert len(replies) == 50, f"{50 - len(replies)} of 50 queued jobs were lost in the crash"
    assert all(r["status"] == "ok" and r["attempt"] == 1 for r in replies), replies[:3]
    assert int(ledger[b"requests"]) == 50, f"the tenant's ledger counted {ledger[b'requests']!r}"
    assert "redis_not_persistent" not in pool.logs()
