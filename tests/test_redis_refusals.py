"""Redis saying no to a worker (an ACL, a full Redis): every job still ends with one reply and one
final event, and a written reply is never undone or run again. Each test runs its own redis-server."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from llm_pool.testing.cluster import DEPLOYMENTS, FakeProviderProcess
from tests.helpers import (
    Pool,
    acl_worker_url,
    assert_workers_serving,
    final_events,
    get_json,
    new_id,
    own_pool,
    private_redis,
    provider_calls,
    request_json,
    same_minute,
    set_worker_acl,
    wait_for_key,
    worker_state,
)
from tests.plain import Listener, plain_arq

pytestmark = pytest.mark.e2e


async def test_refused_decr_still_ends_both_requests(tmp_path: Path, provider: FakeProviderProcess) -> None:
    """The workers' ACL lacks DECR (used when a rate limit refuses); tenant rpm = 1, two requests:
    both end with a reply and a final event."""
    with private_redis() as server:
        password = new_id()
        pool = Pool(
            tmp_path,
            provider,
            redis_url=acl_worker_url(server, password),
            extra="[tenants.default]\nrpm = 1\n",
        )
        set_worker_acl(server, password, "~*", "&*", "+@all", "-decr")
        client = aioredis.Redis.from_url(server.url)  # the orchestrator: Redis's default user
        arq = await plain_arq(server.url, pool.keys.queue)
        try:
            worker = pool.start_worker()
            pool.wait_ready(worker)
            same_minute(needed_s=8)
            outcomes: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
            for attempt in ("first", "second"):
                request_id = new_id()
                async with Listener(client, pool.keys.stream(request_id)) as listener:
                    assert await arq.enqueue_job(
                        "complete", json.loads(request_json()), _job_id=request_id
                    ), "plain arq refused the enqueue"
                    events = await final_events(
                        listener, 10, f"the {attempt} request at rpm = 1 ({worker_state(pool)})"
                    )
                outcomes.append((events[-1], await get_json(client, pool.keys.reply(request_id))))
            (first_event, first_reply), (second_event, second_reply) = outcomes
            assert first_event["type"] == "done", first_event
            assert first_reply is not None and first_reply["status"] == "ok", first_reply
            assert second_event["type"] == "error", second_event
            assert second_reply is not None and second_reply["status"] == "error", second_reply
            code, message = second_reply["error"]["code"], second_reply["error"]["message"]
            assert second_event["code"] == code, (second_event, second_reply)
            # Redis words an ACL refusal "NOPERM ..." for a command, and (7.0) "The user executing
            # the script can't run this command ..." inside a script: either names the refusal.
            names_refusal = any(w in message for w in ("NOPERM", "can't run this command", "permission"))
            assert code == "over_budget" or (code == "internal" and names_refusal), (
                f"the refused request ended with {code}: {message!r}"
            )
            assert_workers_serving(pool, server.url)
        finally:
            pool.stop()
            await arq.aclose()
            await client.aclose()


async def test_refused_final_publish_keeps_the_written_reply(
    tmp_path: Path, provider: FakeProviderProcess
) -> None:
    """The workers' ACL allows no publishing to ``P:stream:*``: ``complete`` writes its reply key,
    the final PUBLISH is refused, and the job is still a success for arq (``"s": true``)."""
    with private_redis() as server:
        password = new_id()
        pool = Pool(tmp_path, provider, redis_url=acl_worker_url(server, password))
        # Keys: all. Channels: none (the workers subscribe to none; wake-ups are a list).
        set_worker_acl(server, password, "~*", "resetchannels", "+@all")
        client = aioredis.Redis.from_url(server.url)
        arq = await plain_arq(server.url, pool.keys.queue)
        request_id = new_id()
        try:
            worker = pool.start_worker()
            pool.wait_ready(worker)
            provider.reset()
            assert await arq.enqueue_job("complete", json.loads(request_json()), _job_id=request_id)
            raw_reply = await wait_for_key(client, pool.keys.reply(request_id), 10)
            assert raw_reply is not None, f"no reply key within 10 s ({worker_state(pool)})"
            reply = json.loads(raw_reply)
            assert reply["status"] == "ok" and reply["attempt"] == 1, reply
            raw_result = await wait_for_key(client, f"arq:result:{request_id}", 10)
            assert raw_result is not None, "arq recorded no result within 10 s"
            result = json.loads(raw_result)
            assert result["s"] is True, (
                f"arq's result says the job failed although its reply was written: s={result['s']}, "
                f"r={result.get('r')}"
            )
            await asyncio.sleep(1)
            assert provider_calls(provider) == 1, f"the provider was called {provider_calls(provider)} times"
            assert await client.get(pool.keys.reply(request_id)) == raw_reply, "the reply key changed"
            assert_workers_serving(pool, server.url)
        finally:
            pool.stop()
            await arq.aclose()
            await client.aclose()


async def test_out_of_memory_final_writes_wait_for_memory(
    tmp_path: Path, provider: FakeProviderProcess
) -> None:
    """60 running requests; Redis (maxmemory 25mb, noeviction) fills up as they finish and stays full
    for 5 s. Every accepted request gets its reply once memory is freed, from its first run (no
    second provider call), and the heartbeat is back within about two intervals."""
    count, full_for_s = 60, 4.0  # full for longer than the heartbeat's TTL (3 intervals of 1 s)
    config = {"maxmemory": "25mb", "maxmemory-policy": "noeviction"}
    slow_calls_ok = {"timeout_s": 30, "stream_timeout_s": 30}  # the test pool's router allows 3 s
    with (
        private_redis(config) as server,
        own_pool(tmp_path, provider, redis_url=server.url, router=slow_calls_ok) as pool,
    ):
        provider.reset()
        provider.configure_deployments(DEPLOYMENTS, tokens=30, token_delay_ms=100)  # 3 s each
        client = aioredis.Redis.from_url(server.url)
        arq = await plain_arq(server.url, pool.keys.queue)
        heartbeat = pool.keys.heartbeat(pool.workers[0].worker_id)
        interval_s = pool.settings.worker.heartbeat_interval_s
        fillers: list[str] = []
        stop_filling = asyncio.Event()

        async def fill(size: int) -> bool:
            """One more filler key; True once Redis refuses it (out of memory)."""
            name = f"filler:{len(fillers)}"
            try:
                await client.set(name, b"x" * size)
            except redis.exceptions.OutOfMemoryError:
                return True
            fillers.append(name)
            return False

        async def keep_full() -> None:
            while not stop_filling.is_set():  # take whatever Redis frees (expiring keys, buffers)
                await fill(4096)
                await asyncio.sleep(0.02)

        try:
            accepted: list[str] = []
            for index in range(count):
                request_id = new_id()
                function = "complete_stream" if index % 2 else "complete"
                if await arq.enqueue_job(function, json.loads(request_json()), _job_id=request_id):
                    accepted.append(request_id)
            reply_keys = [pool.keys.reply(r) for r in accepted]
            deadline = time.monotonic() + 5
            running = 0
            while running < len(accepted) and time.monotonic() < deadline:
                running = len([k async for k in client.scan_iter(match="arq:in-progress:*", count=1000)])
                await asyncio.sleep(0.05)
            assert running == len(accepted), f"only {running} of {len(accepted)} requests started"

            while not await fill(256 * 1024):
                pass
            answered_before_full = int(await client.exists(*reply_keys))
            assert answered_before_full < len(accepted), "the requests finished before Redis was full"
            filler_task = asyncio.ensure_future(keep_full())
            await asyncio.sleep(full_for_s)
            stop_filling.set()
            await filler_task
            await client.delete(*fillers)
            freed = time.monotonic()

            back_after: float | None = None
            while time.monotonic() - freed < 2 * interval_s + 0.5:
                if await client.exists(heartbeat):
                    back_after = time.monotonic() - freed
                    break
                await asyncio.sleep(0.05)
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                if await client.exists(*reply_keys) == len(reply_keys):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1)  # a re-run, if any, calls the provider again meanwhile
            raw_replies = await client.mget(reply_keys)
            replies = [json.loads(raw) for raw in raw_replies if raw is not None]
            calls = provider_calls(provider)

            assert len(replies) == len(accepted), (
                f"{len(accepted) - len(replies)} of {len(accepted)} accepted requests have no reply "
                f"8 s after memory was freed ({worker_state(pool)}); answered ones: "
                f"{[(r['status'], r['attempt'], r.get('error')) for r in replies][:5]}"
            )
            rerun = [r for r in replies if r["attempt"] != 1]
            assert rerun == [], f"{len(rerun)} requests ran again, e.g. {rerun[0]}"
            died = [r for r in replies if "died" in r.get("error", {}).get("message", "")]
            assert died == [], f"{len(died)} replies say the worker died, e.g. {died[0]}"
            failed = [r for r in replies if r["status"] != "ok"]
            assert failed == [], f"{len(failed)} requests failed, e.g. {failed[0]}"
            assert calls == len(accepted), f"{calls} provider calls for {len(accepted)} requests"
            assert back_after is not None, (
                f"no heartbeat key within {2 * interval_s + 0.5:g} s of freeing memory "
                f"(heartbeat_interval_s = {interval_s:g})"
            )
            assert_workers_serving(pool)
        finally:
            stop_filling.set()
            await arq.aclose()
            await client.aclose()
