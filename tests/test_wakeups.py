"""Wake-ups: each new job wakes one idle worker, and plain-arq jobs are pushed too.

Each test runs its own redis-server, so that ``INFO commandstats`` counts only this pool's commands
and keyspace notifications can be configured.
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
from llm_pool.schemas import OkReply
from llm_pool.testing.cluster import DEPLOYMENTS, FakeProviderProcess, WorkerProcess, free_port
from tests.helpers import TENANT, Pool, own_pool, private_redis, scrape, user, value, wait_for_key
from tests.plain import plain_arq

pytestmark = pytest.mark.e2e

SLOW_POLL = {"poll_delay_s": 3, "heartbeat_interval_s": 1}


async def evalsha_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def scripts_per_request(pool: Pool, server_url: str, requests: int) -> float:
    """Lua script calls per request (enqueue, claims, final write), net of the idle polling."""
    client = aioredis.Redis.from_url(server_url)
    try:
        idle_before = await evalsha_calls(client)
        await asyncio.sleep(3)
        idle_per_s = (await evalsha_calls(client) - idle_before) / 3
        async with LLMPool(pool.settings, redis_url=server_url) as caller:
            before, started = await evalsha_calls(client), time.monotonic()
            for _ in range(requests):
                reply = await caller.complete("fast", user(), TENANT)
                assert isinstance(reply, OkReply), reply
                await asyncio.sleep(0.05)  # the other workers go back to waiting
            spent = await evalsha_calls(client) - before
        return (spent - idle_per_s * (time.monotonic() - started)) / requests
    finally:
        await client.aclose()


async def test_a_job_wakes_one_worker_not_all(tmp_path: Path, provider: FakeProviderProcess) -> None:
    provider.configure_deployments(DEPLOYMENTS, tokens=1)
    per_request = {}
    for workers in (1, 6):
        (tmp_path / str(workers)).mkdir()
        with (
            private_redis() as server,
            own_pool(
                tmp_path / str(workers), provider, workers, redis_url=server.url, worker=SLOW_POLL
            ) as pool,
        ):
            per_request[workers] = await scripts_per_request(pool, server.url, 30)
    print(f"Lua calls per request: {per_request[1]:.2f} with 1 idle worker, {per_request[6]:.2f} with 6")
    # A shared wake-up made every idle worker claim: about 2.6x the calls with 8 workers.
    assert per_request[6] <= 1.5 * per_request[1], per_request


async def plain_arq_pickup_ms(pool: Pool, server_url: str, jobs: int) -> list[float]:
    """Enqueue -> reply key of 1-token plain-arq jobs, one at a time (ms)."""
    arq = await plain_arq(server_url, pool.keys.queue)
    client = aioredis.Redis.from_url(server_url)
    times = []
    try:
        for _ in range(jobs):
            request_id = uuid.uuid4().hex
            request = {"model": "fast", "messages": user(), "tenant_id": TENANT}
            started = time.monotonic()
            await arq.enqueue_job("complete", request, _job_id=request_id)
            raw = await wait_for_key(client, pool.keys.reply(request_id), 10, poll_s=0.001)
            times.append((time.monotonic() - started) * 1000)
            assert raw is not None and json.loads(raw)["status"] == "ok", raw
            await asyncio.sleep(0.2)
    finally:
        await arq.aclose()
        await client.aclose()
    return sorted(times)


async def test_plain_arq_jobs_are_pushed_by_keyspace_notifications(
    tmp_path: Path, provider: FakeProviderProcess
) -> None:
    """With the poll at 3 s, plain-arq jobs start at once when the server has keyspace
    notifications (``use``), or when the worker turns them on (``enable``); without, they wait."""
    provider.configure_deployments(DEPLOYMENTS, tokens=1)
    results = {}
    cases = {
        "server has them": ({"notify-keyspace-events": "Kz"}, "use"),
        "worker enables them": ({}, "enable"),
        "off": ({}, "use"),
    }
    for index, (name, (config, mode)) in enumerate(cases.items()):
        worker = {**SLOW_POLL, "queue_notifications": mode}
        (tmp_path / str(index)).mkdir()
        with (
            private_redis(config) as server,
            own_pool(tmp_path / str(index), provider, 2, redis_url=server.url, worker=worker) as pool,
        ):
            await asyncio.sleep(0.5)  # a relay takes the lease
            results[name] = await plain_arq_pickup_ms(pool, server.url, 8)
    medians = {name: times[len(times) // 2] for name, times in results.items()}
    print("plain-arq enqueue -> reply, median ms:", {k: round(v, 1) for k, v in medians.items()})
    assert medians["server has them"] < 100, results
    assert medians["worker enables them"] < 100, results
    assert medians["off"] > 300, results  # the poll: up to 3 s


async def rpush_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_rpush", {}).get("calls", 0))


async def test_each_job_wakes_one_worker_with_the_relay_on(
    tmp_path: Path, provider: FakeProviderProcess
) -> None:
    """The relay wakes one worker per plain-arq ``zadd``: itself when it is idle, else with a token.
    The pool's enqueue script pushes its own token and adds its entry with ``ZINCRBY`` (event
    ``zincr``), so the relay leaves it alone."""
    provider.configure_deployments(DEPLOYMENTS, tokens=1)
    with private_redis({"notify-keyspace-events": "Kz"}) as server:
        pool = Pool(tmp_path, provider, redis_url=server.url, worker=SLOW_POLL)
        urls = []
        for _ in range(2):
            port = free_port()
            env = {**pool.env, "LLM_POOL__METRICS__PORT": str(port), "LLM_POOL__METRICS__HOST": "127.0.0.1"}
            pool.workers.append(WorkerProcess(f"w-{uuid.uuid4().hex[:6]}", env, pool.tmp))
            urls.append(f"http://127.0.0.1:{port}/metrics")
        client = aioredis.Redis.from_url(server.url)
        events = client.pubsub()
        try:
            pool.wait_ready(*pool.workers)
            await asyncio.sleep(0.5)  # a relay takes the lease
            await events.subscribe(f"__keyspace@0__:{pool.keys.queue}")
            before = await rpush_calls(client)
            async with LLMPool(pool.settings, redis_url=server.url) as caller:
                for _ in range(5):
                    assert isinstance(await caller.complete("fast", user(), TENANT), OkReply)
            await plain_arq_pickup_ms(pool, server.url, 5)
            relayed = {
                how: sum(value(scrape(url), "llm_pool_wake_relay_jobs_total", how=how) for url in urls)
                for how in ("here", "token")
            }
            assert relayed["here"] + relayed["token"] == 5, relayed
            assert relayed["here"] >= 1, "an idle relay claims the job itself"
            pushed = await rpush_calls(client) - before
            assert pushed == 5 + relayed["token"], "one wake-up token per job the relay did not take"
            seen = []
            deadline = time.monotonic() + 1
            while time.monotonic() < deadline:  # None also stands for the ignored confirmation
                message = await events.get_message(ignore_subscribe_messages=True, timeout=0.1)
                if message is not None:
                    seen.append(message["data"])
            assert seen.count(b"zincr") == 5 and seen.count(b"zadd") == 5, seen
        finally:
            await events.aclose()
            await client.aclose()
            pool.stop()
