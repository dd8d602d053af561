"""Callers' clocks and callers' channels: neither may keep a job from its one reply and final event.

Deadlines and scheduling use Redis's clock. An envelope's ``et`` (the caller's clock) more than
``worker.max_clock_skew_s`` ahead of Redis is not trusted: the job is claimable now and its deadline
counts from when a worker first saw it. A job deferred on purpose (a future queue score with a
current ``et``) still waits. A request's ``channel`` must match ``worker.allowed_channels``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from llm_pool.testing.cluster import DEPLOYMENTS, FakeProviderProcess
from tests.helpers import (
    Pool,
    assert_workers_serving,
    envelope,
    final_events,
    forget_jobs,
    get_json,
    new_id,
    own_pool,
    provider_calls,
    put_job,
    redis_now_ms,
    request_json,
    wait_for_key,
    worker_state,
)
from tests.plain import Listener, plain_arq

pytestmark = pytest.mark.e2e

TEN_MINUTES_MS = 600_000


@pytest.fixture(scope="module")
def cpool(tmp_path_factory: pytest.TempPathFactory, provider: FakeProviderProcess) -> Iterator[Pool]:
    with own_pool(tmp_path_factory.mktemp("clocks"), provider) as pool:
        yield pool


async def test_envelope_et_far_in_the_future_runs_once(tmp_path: Path, provider: FakeProviderProcess) -> None:
    """``et`` = 10**16 ms (year 318,857) with a normal queue score: answered once, never re-run."""
    max_tries = 2
    with own_pool(tmp_path, provider, worker={"max_tries": max_tries, "job_lease_s": 2}) as pool:
        provider.reset()
        client = aioredis.Redis.from_url(pool.redis_url)
        request_id = new_id()
        retry_key = f"arq:retry:{request_id}"
        try:
            async with Listener(client, pool.keys.stream(request_id)) as listener:
                job = envelope("complete", request_json(), 10**16)
                await put_job(client, pool.keys.queue, request_id, job, await redis_now_ms(client))
                try:
                    events = await listener.until_final(timeout_s=10)
                except TimeoutError:
                    raise AssertionError(
                        f"no final event within 10 s; arq:retry is {await client.get(retry_key)!r} "
                        f"(max_tries={max_tries}), provider calls {provider_calls(provider)}, "
                        f"workers: {worker_state(pool)}"
                    ) from None
                later = await listener.quiet_for(3)  # two leases: long enough to see a re-run
            assert events[-1]["type"] == "done", f"expected done, got {events[-1]}"
            assert later == [], f"events after the final one (the job ran again): {later}"
            reply = await get_json(client, pool.keys.reply(request_id))
            assert reply is not None and reply["status"] == "ok" and reply["attempt"] == 1, reply
            assert provider_calls(provider) == 1, f"the provider was called {provider_calls(provider)} times"
            tries = int(await client.get(retry_key) or 0)
            assert tries <= max_tries, f"arq:retry:{request_id} is {tries}, over max_tries={max_tries}"
            assert await client.zscore(pool.keys.queue, request_id) is None, "the job is still queued"
            assert_workers_serving(pool)
        finally:
            await forget_jobs(client, request_id)
            await client.aclose()


async def test_job_from_a_clock_ahead_runs_now_but_a_deferred_job_waits(cpool: Pool) -> None:
    """A caller 10 minutes ahead (``et`` and score) is served at once; plain arq's ``_defer_by=2``
    (future score, current ``et``) still waits its 2 s."""
    client = aioredis.Redis.from_url(cpool.redis_url)
    arq = await plain_arq(cpool.redis_url, cpool.keys.queue)
    ahead, deferred = new_id(), new_id()
    try:
        async with (
            Listener(client, cpool.keys.stream(ahead)) as ahead_listener,
            Listener(client, cpool.keys.stream(deferred)) as deferred_listener,
        ):
            future = await redis_now_ms(client) + TEN_MINUTES_MS
            await put_job(
                client, cpool.keys.queue, ahead, envelope("complete", request_json(), future), future
            )
            request = json.loads(request_json())
            assert await arq.enqueue_job("complete", request, _job_id=deferred, _defer_by=2) is not None
            enqueued = time.monotonic()
            ahead_events = asyncio.ensure_future(
                final_events(ahead_listener, 5, f"a job stamped 10 min ahead ({worker_state(cpool)})")
            )
            await asyncio.sleep(1 - (time.monotonic() - enqueued))
            early = await client.get(cpool.keys.reply(deferred))
            events = await ahead_events
            assert events[-1]["type"] == "done", f"the job from a clock ahead ended with {events[-1]}"
            reply = await get_json(client, cpool.keys.reply(ahead))
            assert reply is not None and reply["status"] == "ok", reply
            assert early is None, f"the job deferred by 2 s was answered within 1 s: {early!r}"
            deferred_events = await final_events(deferred_listener, 5, "the job deferred by 2 s")
            answered_after = time.monotonic() - enqueued
        assert deferred_events[-1]["type"] == "done", deferred_events[-1]
        assert 1.5 <= answered_after <= 4.5, f"the deferred job was answered after {answered_after:.1f} s"
        reply = await get_json(client, cpool.keys.reply(deferred))
        assert reply is not None and reply["status"] == "ok", reply
    finally:
        await forget_jobs(client, ahead, deferred)
        await arq.aclose()
        await client.aclose()


async def test_job_from_a_clock_behind_is_not_a_timeout(cpool: Pool) -> None:
    """``et`` and score 10 minutes in the past (default timeout 30 s): served, not ``timeout``."""
    client = aioredis.Redis.from_url(cpool.redis_url)
    request_id = new_id()
    try:
        async with Listener(client, cpool.keys.stream(request_id)) as listener:
            past = await redis_now_ms(client) - TEN_MINUTES_MS
            await put_job(
                client, cpool.keys.queue, request_id, envelope("complete", request_json(), past), past
            )
            events = await final_events(listener, 10, "a job stamped 10 min behind")
        reply = await get_json(client, cpool.keys.reply(request_id))
        assert events[-1]["type"] == "done", f"a job stamped 10 min behind ended with {events[-1]}"
        assert reply is not None and reply["status"] == "ok", reply
    finally:
        await forget_jobs(client, request_id)
        await client.aclose()


async def test_deadline_of_a_job_from_a_clock_ahead_counts_from_now(
    cpool: Pool, provider: FakeProviderProcess
) -> None:
    """``et`` and score 10 minutes ahead, ``timeout_s: 3``, a 10 s stream: ``timeout`` after ~3 s."""
    provider.configure_deployments(DEPLOYMENTS, tokens=200, token_delay_ms=50)
    client = aioredis.Redis.from_url(cpool.redis_url)
    request_id = new_id()
    try:
        async with Listener(client, cpool.keys.stream(request_id)) as listener:
            future = await redis_now_ms(client) + TEN_MINUTES_MS
            job = envelope("complete_stream", request_json(timeout_s=3), future)
            await put_job(client, cpool.keys.queue, request_id, job, future)
            enqueued = time.monotonic()
            events = await final_events(
                listener, 8, f"a 3 s request stamped 10 min ahead ({worker_state(cpool)})"
            )
            ended_after = time.monotonic() - enqueued
        final = events[-1]
        assert final["type"] == "error" and final["code"] == "timeout", (
            f"expected a timeout, got {final} after {ended_after:.1f} s"
        )
        assert 2.5 <= ended_after <= 6.5, f"the 3 s deadline ended the request after {ended_after:.1f} s"
        reply = await get_json(client, cpool.keys.reply(request_id))
        assert reply is not None and reply["error"]["code"] == "timeout", reply
    finally:
        provider.reset()
        await forget_jobs(client, request_id)
        await client.aclose()


async def test_channel_outside_the_pool_is_refused(cpool: Pool) -> None:
    """``channel: "other_pool:stream:victim"``: ``invalid_request`` (naming the channel), its error
    event on ``P:stream:{id}``, nothing on the other pool's channel; a channel under
    ``{prefix}:stream:`` still works."""
    client = aioredis.Redis.from_url(cpool.redis_url)
    arq = await plain_arq(cpool.redis_url, cpool.keys.queue)
    own_id, request_id = new_id(), new_id()
    try:
        # Allowed: a channel of this pool's own stream namespace.
        own_channel = f"{cpool.prefix}:stream:custom-{own_id}"
        async with Listener(client, own_channel) as listener:
            request = json.loads(request_json(channel=own_channel))
            await arq.enqueue_job("complete_stream", request, _job_id=own_id)
            events = await final_events(listener, 10, f"a request on {own_channel}")
        assert events[-1]["type"] == "done" and events[0]["type"] == "chunk", events

        # Refused: another pool's channel.
        victim_channel = f"other_pool:stream:victim-{request_id}"
        async with (
            Listener(client, victim_channel) as victim,
            Listener(client, cpool.keys.stream(request_id)) as own,
        ):
            request = json.loads(request_json(channel=victim_channel))
            await arq.enqueue_job("complete_stream", request, _job_id=request_id)
            try:
                events = await own.until_final(timeout_s=10)
            except TimeoutError:
                leaked = await victim.quiet_for(0.5)
                raise AssertionError(
                    f"no final event on {cpool.keys.stream(request_id)} within 10 s; the reply is "
                    f"{await get_json(client, cpool.keys.reply(request_id))}; {victim_channel} received "
                    f"{[e['type'] for e in victim.events + leaked]}"
                ) from None
            leaked = await victim.quiet_for(1)
        assert victim.events + leaked == [], f"{victim_channel} received {victim.events + leaked}"
        assert events[-1]["type"] == "error" and events[-1]["code"] == "invalid_request", events
        reply = await get_json(client, cpool.keys.reply(request_id))
        assert reply is not None and reply["status"] == "error", reply
        assert reply["error"]["code"] == "invalid_request" and "channel" in reply["error"]["message"], reply
        assert_workers_serving(cpool)
    finally:
        await forget_jobs(client, own_id, request_id)
        await arq.aclose()
        await client.aclose()


async def test_allowed_channels_setting_admits_other_patterns(
    tmp_path: Path, provider: FakeProviderProcess
) -> None:
    """With ``allowed_channels = ["{prefix}:stream:*", "ws:*"]``, a ``ws:`` channel gets the stream."""
    settings = {"allowed_channels": ["{prefix}:stream:*", "ws:*"]}
    with own_pool(tmp_path, provider, worker=settings) as pool:
        client = aioredis.Redis.from_url(pool.redis_url)
        arq = await plain_arq(pool.redis_url, pool.keys.queue)
        request_id = new_id()
        channel = f"ws:abc-{request_id}"
        try:
            async with Listener(client, channel) as listener:
                request = json.loads(request_json(channel=channel))
                await arq.enqueue_job("complete_stream", request, _job_id=request_id)
                events = await final_events(listener, 10, f"a request on {channel}")
            assert [e["type"] for e in events] == ["chunk"] * (len(events) - 1) + ["done"], events
            reply = await get_json(client, pool.keys.reply(request_id))
            assert reply is not None and reply["status"] == "ok", reply
            assert reply["content"] == "".join(e["text"] for e in events[:-1])
        finally:
            await forget_jobs(client, request_id)
            await arq.aclose()
            await client.aclose()


async def test_a_plain_arq_job_waiting_behind_full_workers_keeps_its_deadline(
    tmp_path: Path, provider: FakeProviderProcess
) -> None:
    """The only slot is busy for ~6 s; a plain-arq job with ``timeout_s: 2`` waits behind it.

    A full worker still stamps new queue entries as they arrive, so the job's deadline counts from
    its enqueue (a clock within ``max_clock_skew_s``), not from when a slot came free: it ends with
    ``timeout`` "while it was queued" instead of running late."""
    with own_pool(tmp_path, provider, worker={"max_jobs": 1}, router={"timeout_s": 30}) as pool:
        provider.configure_deployments(DEPLOYMENTS, tokens=60, token_delay_ms=100)
        client = aioredis.Redis.from_url(pool.redis_url)
        arq = await plain_arq(pool.redis_url, pool.keys.queue)
        busy, late = new_id(), new_id()
        try:
            async with Listener(client, pool.keys.stream(late)) as listener:
                await arq.enqueue_job("complete", json.loads(request_json()), _job_id=busy)
                await asyncio.sleep(1.0)  # the slot is taken
                await arq.enqueue_job("complete", json.loads(request_json(timeout_s=2)), _job_id=late)
                events = await final_events(listener, 20, "a job queued behind a full worker")
            final = events[-1]
            assert final["type"] == "error" and final["code"] == "timeout", final
            assert "queued" in final["message"], final
            assert await wait_for_reply_ok(client, pool.keys.reply(busy)), "the busy job still ends ok"
        finally:
            provider.reset()
            await arq.aclose()
            await forget_jobs(client, busy, late)
            await client.aclose()


async def wait_for_reply_ok(client: aioredis.Redis, key: str) -> bool:
    raw = await wait_for_key(client, key, 20)
    return raw is not None and json.loads(raw)["status"] == "ok"
