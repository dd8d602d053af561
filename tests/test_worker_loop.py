"""The worker's own loop in process (no subprocess, no provider): claims, leases, identity, drain.

The router's deployments answer with LiteLLM's own ``mock_response``; Redis is the real one, under a
key prefix of the test's own.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis

from llm_pool.client import LLMPool
from llm_pool.keys import Keys
from llm_pool.schemas import Heartbeat, OkReply
from llm_pool.settings import Settings
from llm_pool.testing.cluster import forget_keys
from tests.helpers import REDIS_URL, TENANT, user, wait_for_key
from worker.heartbeat import HeartbeatTask, WorkerIdInUse
from worker.leases import LeaseKeeper
from worker.loop import PoolWorker, RedisUnreachable


def settings(prefix: str, **worker: object) -> Settings:
    deployment = {"model": "openai/gpt-4o-mini", "mock_response": "mocked answer"}
    return Settings.model_validate(
        {
            "redis": {"url": REDIS_URL, "key_prefix": prefix},
            "worker": {"worker_id": f"loop-{prefix}", "heartbeat_interval_s": 1, **worker},
            "groups": {"fast": [deployment], "quality": [deployment]},
        }
    )


@pytest.fixture
def prefix(redis_sync: redis.Redis) -> Iterator[str]:
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    forget_keys(redis_sync, f"{name}:*")


@pytest.fixture
async def running(prefix: str) -> AsyncIterator[tuple[PoolWorker, Settings]]:
    pool_settings = settings(prefix, job_lease_s=1.5, drain_grace_s=2)
    worker = PoolWorker(
        pool_settings, redis=aioredis.Redis.from_url(REDIS_URL), lease_redis=redis.Redis.from_url(REDIS_URL)
    )
    task = asyncio.get_running_loop().create_task(worker.main())
    heartbeat = Keys(prefix).heartbeat(f"loop-{prefix}")
    check = aioredis.Redis.from_url(REDIS_URL)
    assert await wait_for_key(check, heartbeat, 20, poll_s=0.02) is not None, "the worker did not start"
    yield worker, pool_settings
    worker.drain()
    await asyncio.wait_for(task, 10)
    assert not await check.exists(heartbeat), "a stopped worker leaves the pool"
    await check.aclose()


async def test_the_loop_answers_requests_and_drains(running: tuple[PoolWorker, Settings]) -> None:
    worker, pool_settings = running
    async with LLMPool(pool_settings, redis_url=REDIS_URL) as client:
        started = time.perf_counter()
        reply = await client.complete("fast", user(), TENANT)
        first_s = time.perf_counter() - started
        assert isinstance(reply, OkReply) and reply.content == "mocked answer"
        replies = await asyncio.gather(*(client.complete("fast", user(), TENANT) for _ in range(30)))
    assert all(isinstance(r, OkReply) for r in replies)
    await asyncio.sleep(0.5)  # each job's end is recorded just after its reply
    assert worker.running == 0
    assert first_s < 2.0, f"woken by the token, not a poll: {first_s:.3f}s"


async def test_an_idle_worker_drains_at_once(prefix: str, aredis: aioredis.Redis) -> None:
    worker = PoolWorker(
        settings(prefix, drain_grace_s=30),
        redis=aioredis.Redis.from_url(REDIS_URL),
        lease_redis=redis.Redis.from_url(REDIS_URL),
    )
    task = asyncio.get_running_loop().create_task(worker.main())
    assert await wait_for_key(aredis, Keys(prefix).heartbeat(f"loop-{prefix}"), 20) is not None
    started = time.monotonic()
    worker.drain()
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 1.0, "nothing to wait for: no grace period"


async def test_an_unreachable_redis_is_named_once() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    pool_settings = settings("unused").model_copy(
        update={"redis": settings("unused").redis.model_copy(update={"url": url})}
    )
    worker = PoolWorker(
        pool_settings, redis=aioredis.Redis.from_url(url), lease_redis=redis.Redis.from_url(url)
    )
    with pytest.raises(RedisUnreachable) as raised:
        await worker.main()
    message = str(raised.value)
    assert f"127.0.0.1:{port}" in message and "hunter2" not in message and "REDIS_URL" in message


def test_the_lease_keeper_renews_only_what_it_keeps(redis_sync: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix)
    kept, dropped = (f"{prefix}-{n}" for n in ("kept", "dropped"))
    leases = LeaseKeeper(redis.Redis.from_url(REDIS_URL), keys, lease_ms=60_000)
    try:
        for job_id in (kept, dropped):
            redis_sync.set(keys.claim(job_id), "1", px=1_000)
            leases.keep(job_id)
        leases.drop(dropped)
        leases.renew()
        assert 55_000 < int(redis_sync.pttl(keys.claim(kept))) <= 60_000  # type: ignore[arg-type]
        assert int(redis_sync.pttl(keys.claim(dropped))) <= 1_000  # type: ignore[arg-type]
    finally:
        redis_sync.delete(keys.claim(kept), keys.claim(dropped))
        leases.stop()


def beat(pid: int, host: str | None = None) -> Heartbeat:
    return Heartbeat(
        worker_id="w",
        host=host or socket.gethostname(),
        pid=pid,
        version="test",
        started_at="2026-01-01T00:00:00+00:00",
        ts=str(time.time()),
        queue="q",
        max_jobs=1,
        jobs_running=0,
        jobs_done=0,
        jobs_failed=0,
        groups=[],
    )


async def test_a_worker_id_is_taken_when_free_or_stale_and_refused_when_alive(
    aredis: aioredis.Redis, prefix: str
) -> None:
    key = Keys(prefix).heartbeat("w")
    mine = HeartbeatTask(aredis, key, 0.2, lambda: beat(os.getpid()))

    await mine.take_identity()  # free
    assert Heartbeat.model_validate_json(await aredis.get(key) or b"").pid == os.getpid()

    dead = await asyncio.create_subprocess_exec("true")  # a pid of this machine that no longer runs
    await dead.wait()
    await aredis.set(key, beat(dead.pid).model_dump_json(), px=10_000)
    started = time.monotonic()
    await mine.take_identity()  # its process is gone: taken over at once
    assert time.monotonic() - started < 0.2

    await aredis.set(key, beat(1, host="elsewhere").model_dump_json(), px=10_000)
    await mine.take_identity()  # not rewritten within 1.5 intervals: stale
    assert Heartbeat.model_validate_json(await aredis.get(key) or b"").pid == os.getpid()

    async def live_holder() -> None:
        while True:
            await aredis.set(key, beat(1, host="elsewhere").model_dump_json(), px=10_000)
            await asyncio.sleep(0.05)

    holder = asyncio.get_running_loop().create_task(live_holder())
    await asyncio.sleep(0.06)
    try:
        with pytest.raises(WorkerIdInUse, match="host elsewhere, pid 1"):
            await mine.take_identity()
    finally:
        holder.cancel()
