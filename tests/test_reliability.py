"""Things going wrong for real: SIGKILLed workers, SIGTERM drains, cancellation, a Redis restart."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import redis
import redis.asyncio as aioredis

from llm_pool.client import LLMPool, ReplyTimeout
from llm_pool.schemas import ErrorCode, ErrorReply, Heartbeat, OkReply
from llm_pool.testing.cluster import DEPLOYMENTS, FakeProviderProcess, RedisServer, WorkerProcess
from tests.helpers import REDIS_URL, TENANT, Pool, job_ended, user
from tests.plain import Listener

pytestmark = pytest.mark.e2e

FAST_RELIABILITY = {"job_lease_s": 2, "drain_grace_s": 8, "max_tries": 2, "poll_delay_s": 0.2}


def slow_provider(pool: Pool, tokens: int = 40, delay_ms: float = 100) -> None:
    pool.provider.configure_deployments(DEPLOYMENTS, tokens=tokens, token_delay_ms=delay_ms)


@pytest.fixture
def rpool(tmp_path: Path, provider: FakeProviderProcess) -> Iterator[Pool]:
    """A pool of its own, with short leases and grace periods, that tests may break."""
    the_pool = Pool(tmp_path, provider, worker=FAST_RELIABILITY)
    yield the_pool
    the_pool.stop()


async def running_on(pool: Pool, workers: list[WorkerProcess], timeout_s: float = 5) -> WorkerProcess:
    """The worker whose heartbeat says it is running a job."""
    client = aioredis.Redis.from_url(pool.redis_url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for worker in workers:
                raw = await client.get(pool.keys.heartbeat(worker.worker_id))
                if raw and Heartbeat.model_validate_json(raw).jobs_running > 0:
                    return worker
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()
    raise AssertionError("no worker reported a running job")


async def test_killed_worker_job_runs_again_with_reset(rpool: Pool, aredis: aioredis.Redis) -> None:
    a, b = rpool.start_worker(), rpool.start_worker()
    rpool.wait_ready(a, b)
    slow_provider(rpool, tokens=30, delay_ms=100)
    request_id = uuid.uuid4().hex
    async with LLMPool(rpool.settings, redis_url=REDIS_URL) as client:
        async with Listener(aredis, rpool.keys.stream(request_id)) as listener:
            await client.submit("fast", user(), TENANT, stream=True, request_id=request_id)
            victim = await running_on(rpool, [a, b])
            await asyncio.sleep(0.5)
            victim.kill()
            killed_at = time.monotonic()
            events = await listener.until_final(timeout_s=30)
        recovered_after = time.monotonic() - killed_at
        reply = await client.reply(request_id)
    assert isinstance(reply, OkReply), reply
    kinds = [e["type"] for e in events]
    assert kinds.count("done") == 1 and kinds[-1] == "done" and "reset" in kinds
    reset_at = len(kinds) - 1 - kinds[::-1].index("reset")
    assert events[reset_at]["attempt"] == 2 and reply.attempt == 2
    after = [e for e in events[reset_at + 1 :] if e["type"] == "chunk"]
    assert [e["seq"] for e in after] == list(range(30))
    assert "".join(e["text"] for e in after) == reply.content
    # The lease is 2 s: the job ran again long before arq's 310 s.
    assert recovered_after < 2 + 0.2 + 4 + 3, recovered_after
    print(f"killed worker's stream finished {recovered_after:.1f} s after the SIGKILL")


async def test_poison_job_ends_with_internal_after_max_tries(rpool: Pool, aredis: aioredis.Redis) -> None:
    slow_provider(rpool, tokens=100, delay_ms=100)
    request_id = uuid.uuid4().hex
    async with LLMPool(rpool.settings, redis_url=REDIS_URL) as client:
        async with Listener(aredis, rpool.keys.stream(request_id)) as listener:
            await client.submit("fast", user(), TENANT, stream=True, request_id=request_id)
            for _ in range(int(FAST_RELIABILITY["max_tries"])):
                worker = rpool.start_worker()
                rpool.wait_ready(worker)
                await running_on(rpool, [worker], timeout_s=10)
                worker.kill()  # the job "kills" every worker that runs it
            survivor = rpool.start_worker()
            rpool.wait_ready(survivor)
            events = await listener.until_final(timeout_s=30)
        reply = await client.reply(request_id)
    assert isinstance(reply, ErrorReply) and reply.error.code == ErrorCode.INTERNAL, reply
    assert "never finished" in reply.error.message
    assert events[-1]["type"] == "error" and events[-1]["code"] == "internal"
    assert await job_ended(aredis, rpool.keys, request_id), "the job left the queue"


async def test_sigterm_lets_running_streams_finish(rpool: Pool, aredis: aioredis.Redis) -> None:
    worker = rpool.start_worker()
    rpool.wait_ready(worker)
    slow_provider(rpool, tokens=20, delay_ms=100)
    request_id = uuid.uuid4().hex
    async with LLMPool(rpool.settings, redis_url=REDIS_URL) as client:
        async with Listener(aredis, rpool.keys.stream(request_id)) as listener:
            await client.submit("fast", user(), TENANT, stream=True, request_id=request_id)
            await running_on(rpool, [worker])
            worker.terminate()
            # A job enqueued during the drain is left for other workers.
            later = await client.submit("fast", user(), TENANT)
            events = await listener.until_final(timeout_s=20)
        exit_code = worker.wait(timeout_s=20)
        assert exit_code == 0
        assert [e["type"] for e in events].count("reset") == 0 and events[-1]["type"] == "done"
        assert isinstance(await client.reply(request_id), OkReply)
        assert await client.reply(later) is None, "a draining worker took a new job"
        assert await aredis.zscore(rpool.keys.queue, later) is not None
        successor = rpool.start_worker()
        rpool.wait_ready(successor)
        assert isinstance(await client.wait(later, timeout_s=20), OkReply)


async def test_sigterm_hands_unfinished_jobs_back(tmp_path: Path, provider: FakeProviderProcess) -> None:
    pool = Pool(tmp_path, provider, worker={**FAST_RELIABILITY, "drain_grace_s": 1})
    try:
        first = pool.start_worker()
        pool.wait_ready(first)
        slow_provider(pool, tokens=60, delay_ms=100)
        async with LLMPool(pool.settings, redis_url=REDIS_URL) as client:
            request_id = await client.submit("fast", user(), TENANT, stream=True)
            await running_on(pool, [first])
            first.terminate()
            assert first.wait(timeout_s=20) == 0
            assert await client.reply(request_id) is None
            second = pool.start_worker()
            pool.wait_ready(second)
            reply = await client.wait(request_id, timeout_s=30)
        assert isinstance(reply, OkReply) and reply.attempt == 2, reply
    finally:
        pool.stop()


@pytest.mark.parametrize("stream", [False, True])
async def test_cancel_running_request_closes_the_provider_stream(
    rpool: Pool, aredis: aioredis.Redis, stream: bool
) -> None:
    worker = rpool.start_worker()
    rpool.wait_ready(worker)
    slow_provider(rpool, tokens=100, delay_ms=100)
    before = rpool.provider.stats()
    async with LLMPool(rpool.settings, redis_url=REDIS_URL) as client:
        request_id = await client.submit("fast", user(), TENANT, stream=stream)
        await running_on(rpool, [worker])
        await asyncio.sleep(0.3)
        cancelled_at = time.monotonic()
        await client.cancel(request_id)
        reply = await client.wait(request_id, timeout_s=10)
    assert time.monotonic() - cancelled_at < 1.5, "a running request stops within a second"
    assert isinstance(reply, ErrorReply) and reply.error.code == ErrorCode.CANCELLED
    await asyncio.sleep(0.3)
    after = rpool.provider.stats()
    disconnects = sum(
        after.get(name, {}).get("disconnects", 0) - before.get(name, {}).get("disconnects", 0)
        for name in after
    )
    assert disconnects >= 1, "the provider saw its connection closed"


async def test_cancel_queued_request_never_starts(rpool: Pool, aredis: aioredis.Redis) -> None:
    async with LLMPool(rpool.settings, redis_url=REDIS_URL) as client:
        request_id = await client.submit("fast", user(), TENANT)  # no worker yet: it waits
        await client.cancel(request_id)
        worker = rpool.start_worker()
        rpool.wait_ready(worker)
        reply = await client.wait(request_id, timeout_s=10)
    assert isinstance(reply, ErrorReply) and reply.error.code == ErrorCode.CANCELLED
    assert rpool.provider.stats() == {} or all(
        s.get("requests", 0) == 0 for s in rpool.provider.stats().values()
    ), "the provider was never called"


REDIS_SERVER = shutil.which("redis-server")


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_workers_survive_a_redis_restart(tmp_path: Path, provider: FakeProviderProcess) -> None:
    port = 6390 + uuid.uuid4().int % 100
    url = f"redis://127.0.0.1:{port}/0"

    server = RedisServer(port=port, directory=tmp_path)
    start_redis, stop_redis = server.start, server.stop

    start_redis()
    pool = Pool(tmp_path, provider, worker=FAST_RELIABILITY, redis_url=url)
    try:
        a, b = pool.start_worker(), pool.start_worker()
        pool.wait_ready(a, b)
        async with LLMPool(pool.settings, redis_url=url) as client:
            assert isinstance(await client.complete("fast", user(), TENANT), OkReply)
            stop_redis()
            await asyncio.sleep(1)
            # A caller waiting while Redis is down gets a clear error at its own timeout.
            started = time.monotonic()
            with pytest.raises((ReplyTimeout, redis.ConnectionError, OSError)):
                await asyncio.wait_for(client.complete("fast", user(), TENANT, timeout_s=1), 15)
            assert time.monotonic() - started < 15
            await asyncio.sleep(10 - (time.monotonic() - started))  # a 10 s outage in all
            start_redis()  # empty: everything the pool had in Redis is gone
            await asyncio.sleep(3)
            assert a.alive and b.alive, "the workers survived the outage"
            # Heartbeats are back, and new work is served.
            for worker in (a, b):
                worker.wait_ready(url, pool.keys.heartbeat(worker.worker_id), timeout_s=10)
            replies = await asyncio.gather(*[client.complete("fast", user(), TENANT) for _ in range(4)])
            assert all(isinstance(r, OkReply) for r in replies), replies
            # This Redis holds only this pool: its keys are all under the prefix, or arq's own.
            names = [k.decode() for k in cast(list[bytes], redis.Redis.from_url(url).keys("*"))]
            assert names and all(n.startswith((f"{pool.prefix}:", "arq:")) for n in names), names
    finally:
        pool.stop()
        stop_redis()
    logs = pool.logs()
    for worker in (a, b):
        text = worker.log_path.read_text()
        assert text.count('"redis_unavailable"') == 1, "one line per outage, not one per retry"
    assert "Traceback" not in logs


async def test_rate_limited_provider_is_retried_after_retry_after(
    tmp_path: Path, provider: FakeProviderProcess
) -> None:
    pool = Pool(tmp_path, provider, worker=FAST_RELIABILITY, router={"num_retries": 2})
    try:
        worker = pool.start_worker()
        pool.wait_ready(worker)
        provider.configure_deployments(DEPLOYMENTS, fault="429", retry_after_s=1)
        async with LLMPool(pool.settings, redis_url=REDIS_URL) as client:
            pending = asyncio.ensure_future(client.complete("fast", user(), TENANT))
            await asyncio.sleep(0.4)
            provider.reset()  # the rate limit lifts before the retry-after has passed
            reply = await pending
        assert isinstance(reply, OkReply), reply
        assert reply.latency_ms >= 500, "the retry waited for the provider's retry-after"
    finally:
        pool.stop()


async def test_partial_stream_failure_can_end_the_request(
    tmp_path: Path, provider: FakeProviderProcess
) -> None:
    pool = Pool(tmp_path, provider, worker={**FAST_RELIABILITY, "resume_partial_streams": False})
    try:
        worker = pool.start_worker()
        pool.wait_ready(worker)
        provider.configure_deployments(DEPLOYMENTS, fault="drop", drop_after=3)
        async with LLMPool(pool.settings, redis_url=REDIS_URL) as client:
            events = [e async for e in client.stream("fast", user(), TENANT)]
        assert [e.type for e in events] == ["chunk"] * 3 + ["error"]
        assert events[-1].code == ErrorCode.PROVIDERS_UNAVAILABLE  # type: ignore[union-attr]
    finally:
        pool.stop()


async def test_rolling_restart_under_load_loses_nothing(rpool: Pool) -> None:
    originals = [rpool.start_worker(), rpool.start_worker()]
    rpool.wait_ready(*originals)
    slow_provider(rpool, tokens=10, delay_ms=50)
    async with LLMPool(rpool.settings, redis_url=REDIS_URL) as client:

        async def load() -> list[str]:
            ids = []
            for index in range(60):
                ids.append(await client.submit("fast", user(), TENANT, stream=index % 2 == 0))
                await asyncio.sleep(0.15)
            return ids

        async def roll() -> None:
            for old in originals:  # one at a time: start the successor, then drain the old one
                successor = rpool.start_worker()
                await asyncio.to_thread(rpool.wait_ready, successor)
                old.terminate()
                await asyncio.to_thread(old.wait, 30)

        ids, _ = await asyncio.gather(load(), roll())
        replies = await asyncio.gather(*[client.wait(i, timeout_s=60) for i in ids])
    assert all(isinstance(r, OkReply) for r in replies), [r for r in replies if not isinstance(r, OkReply)]
    assert not any(w.alive for w in originals)
