"""``LLMPool`` as a public API (docs/api.md): its surface, its budget, its errors when Redis is away,
what ``ReplyTimeout`` says, what ``cancel`` returns, and what breaking out of ``stream()`` does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

import llm_pool
import llm_pool.client
from llm_pool import LLMPool, OkReply, PoolUnavailable, ReplyTimeout, RequestOptions, Usage
from llm_pool.testing.cluster import DEPLOYMENTS, ROOT, free_port
from tests.helpers import REDIS_URL, TENANT, Pool, user

PUBLIC = ["cancel", "close", "complete", "keys", "reply", "stream", "submit", "validate", "wait"]


def test_the_public_surface_is_documented() -> None:
    assert sorted(n for n in dir(LLMPool) if not n.startswith("_")) == PUBLIC
    assert llm_pool.RequestOptions is RequestOptions and "RequestOptions" in llm_pool.__all__
    api = (ROOT / "docs" / "api.md").read_text()
    for name in PUBLIC:
        assert f"`{name}" in api or f".{name}" in api, f"docs/api.md does not document {name}"
        if name != "keys":
            doc = getattr(LLMPool, name).__doc__ or ""
            assert len(doc) > 60, f"LLMPool.{name} has no real docstring"
    for option in RequestOptions.__annotations__:
        assert f"`{option}`" in api, f"docs/api.md does not document the option {option}"
    for error in ("InvalidRequestError", "SubscribeRefused", "PoolUnavailable", "ReplyTimeout"):
        assert error in api
    assert "docs/api.md" in (ROOT / "README.md").read_text(), "the README links the API reference"


@pytest.mark.e2e
async def test_every_method_raises_pool_unavailable_on_a_closed_port(idle: Pool) -> None:
    port = free_port()
    url = f"redis://:s3cret-pw@127.0.0.1:{port}/0"

    async def streamed(client: LLMPool) -> None:
        async for _ in client.stream("fast", user(), TENANT):
            pass

    calls: dict[str, Callable[[LLMPool], Awaitable[Any]]] = {
        "complete": lambda c: c.complete("fast", user(), TENANT),
        "stream": streamed,
        "submit": lambda c: c.submit("fast", user(), TENANT),
        "wait": lambda c: c.wait("some-id", timeout_s=5),
        "reply": lambda c: c.reply("some-id"),
        "cancel": lambda c: c.cancel("some-id"),
    }
    assert sorted(calls) == sorted(set(PUBLIC) - {"close", "keys", "validate"})  # validate: no Redis
    async with LLMPool(idle.settings, redis_url=url) as client:
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(PoolUnavailable) as caught:
                await asyncio.wait_for(call(client), 5)
            message = str(caught.value)
            assert time.monotonic() - started < 1, name
            assert isinstance(caught.value, ConnectionError), name
            assert caught.value.address == f"127.0.0.1:{port}/0" and caught.value.address in message
            assert "s3cret" not in message and "Check that Redis is running" in message, message
    # close() (by `async with`) did not raise either.


@pytest.mark.e2e
async def test_the_budget_is_timeout_s_plus_the_margin(idle: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm_pool.client, "WAIT_MARGIN_S", 0.5)
    async with LLMPool(idle.settings, redis_url=REDIS_URL) as client:
        started = time.monotonic()
        with pytest.raises(ReplyTimeout) as caught:
            await client.complete("fast", user(), TENANT, timeout_s=0.7, request_id="api-budget")
        elapsed = time.monotonic() - started
    assert 1.2 <= elapsed < 2.5, elapsed  # 0.7 + 0.5, and at most one last read of Redis
    assert "(budget 1.2 s)" in str(caught.value), caught.value


@pytest.mark.e2e
async def test_reply_timeout_says_whether_a_worker_is_alive(idle: Pool) -> None:
    queue = idle.keys.queue
    async with LLMPool(idle.settings, redis_url=REDIS_URL) as client:
        request_id = await client.submit("fast", user(), TENANT, request_id="api-nobody")
        with pytest.raises(ReplyTimeout) as caught:
            await client.wait(request_id, timeout_s=0.5)
        message = str(caught.value)
        assert f"it is still waiting in {queue}, not taken by any worker" in message, message
        assert f"no worker is alive for {queue} (no {idle.keys.heartbeat_pattern} key)" in message

        beat = {
            "worker_id": "stuck-1",
            "host": "h",
            "pid": 1,
            "version": llm_pool.__version__,
            "started_at": datetime.now(UTC).isoformat(),
            "ts": datetime.now(UTC).isoformat(),
            "queue": queue,
            "max_jobs": 4,
            "jobs_running": 4,
            "jobs_done": 0,
            "jobs_failed": 0,
            "groups": ["fast"],
        }
        admin = aioredis.Redis.from_url(REDIS_URL)
        try:
            await admin.set(idle.keys.heartbeat("stuck-1"), json.dumps(beat), ex=30)
        finally:
            await admin.aclose()
        with pytest.raises(ReplyTimeout) as caught:
            await client.wait(request_id, timeout_s=0.5)
        assert f"1 worker(s) alive for {queue} (stuck-1), 4/4 job slots busy" in str(caught.value)
        with pytest.raises(ReplyTimeout) as caught:
            await client.wait("api-never-enqueued", timeout_s=0.3)
        assert f"it is neither in {queue} nor answered" in str(caught.value), caught.value


@pytest.mark.e2e
async def test_cancel_says_whether_there_was_anything_to_cancel(idle: Pool) -> None:
    admin = aioredis.Redis.from_url(REDIS_URL)
    try:
        async with LLMPool(idle.settings, redis_url=REDIS_URL) as client:
            queued = await client.submit("fast", user(), TENANT, request_id="api-queued")
            assert await client.cancel(queued) is True
            assert 0 < await admin.ttl(idle.keys.cancel(queued)) <= 600

            assert await client.cancel("api-unknown") is False
            assert not await admin.exists(idle.keys.cancel("api-unknown"))

            reply = OkReply(
                request_id="api-done",
                content="hi",
                finish_reason="stop",
                model="fast",
                served_by="x",
                fallback=False,
                usage=Usage(),
                attempt=1,
                latency_ms=3,
            )
            await admin.set(idle.keys.reply("api-done"), reply.model_dump_json(), ex=60)
            assert await client.cancel("api-done") is False
            assert not await admin.exists(idle.keys.cancel("api-done"))
            assert await client.reply("api-done") == reply
            assert await client.reply("api-unknown") is None
    finally:
        await admin.aclose()


@pytest.mark.e2e
async def test_breaking_out_of_a_stream_leaves_the_request_running(
    pool: Pool, client: LLMPool, aredis: aioredis.Redis
) -> None:
    pool.provider.configure_deployments(DEPLOYMENTS, token_delay_ms=50, tokens=20)
    request_id = uuid.uuid4().hex
    channel = client.keys.stream(request_id)
    async with contextlib.aclosing(client.stream("fast", user(), TENANT, request_id=request_id)) as events:
        async for event in events:
            assert event.type == "chunk" and event.request_id == request_id
            break
    # Closed: the channel is unsubscribed at once (the client's pub-sub connection is the only listener).
    [(_, listeners)] = await aredis.pubsub_numsub(channel)
    assert listeners == 0
    assert await aredis.zscore(pool.keys.queue, request_id) is not None, "the request still runs"
    reply = await client.wait(request_id, timeout_s=15)
    assert isinstance(reply, OkReply) and len(reply.content) > 0 and reply.request_id == request_id
