"""Failures with a real server: one killed mid-stream, a stream cancelled, and llama-server closing
its connection after every streamed response (while it still advertises keep-alive)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from llm_pool.client import Event, LLMPool
from llm_pool.schemas import ChunkEvent, DoneEvent, ErrorReply, OkReply, ResetEvent
from llm_pool.testing.llama_server import wait_for_idle_slots
from tests.helpers import user
from tests.real.conftest import RealPool

pytestmark = [pytest.mark.real, pytest.mark.e2e]

# Tokens of a stream that lasts seconds on llama-server (the text model never ends by itself).
LONG = 30_000


async def test_quality_server_killed_mid_stream_resumes_on_fast(
    real_pool: RealPool, real_client: LLMPool
) -> None:
    quality, fast = real_pool.server("quality"), real_pool.server("fast")
    before = fast.token_counts()
    tenant = str(uuid.uuid4())
    events: list[Event] = []
    async for event in real_client.stream("quality", user(), tenant, params={"max_tokens": 2_000}):
        events.append(event)
        if isinstance(event, ChunkEvent) and quality.alive and event.seq == 5:
            quality.kill()
    kinds = [type(e).__name__ for e in events]
    seen = f"events: {kinds.count('ChunkEvent')} chunks, then {kinds[-3:]}; the last: {events[-1]!r}"
    resets = [i for i, e in enumerate(events) if isinstance(e, ResetEvent)]
    assert resets, f"no reset: the quality server finished before it was killed; {seen}"
    assert isinstance(events[-1], DoneEvent), f"{seen}; the workers' logs end:\n{real_pool.logs()[-3000:]}"
    assert kinds.count("DoneEvent") == 1, seen
    reply = await real_client.wait(events[-1].request_id)
    assert isinstance(reply, OkReply), reply
    assert reply.fallback
    assert reply.usage.completion_tokens == 2_000
    assert fast.counted_since(before).completion_tokens == 2_000  # fast's server wrote the reply
    after_reset = [e.text for e in events[resets[-1] :] if isinstance(e, ChunkEvent)]
    assert "".join(after_reset) == reply.content
    assert reply.finish_reason == "length"
    assert reply.usage == events[-1].usage


async def test_cancelled_stream_frees_the_servers_slot_within_2_s(
    real_pool: RealPool, real_client: LLMPool
) -> None:
    server = real_pool.server("quality")
    tenant = str(uuid.uuid4())
    request_id = uuid.uuid4().hex
    stream = real_client.stream("quality", user(), tenant, params={"max_tokens": LONG}, request_id=request_id)
    async for event in stream:
        if isinstance(event, ChunkEvent) and event.seq == 5:
            break
    await stream.aclose()
    assert server.busy(), "the stream ended before it was cancelled"
    before = server.token_counts()
    cancelled_at = time.monotonic()
    assert await real_client.cancel(request_id)
    idle_after_s = await asyncio.to_thread(wait_for_idle_slots, server, 2.0)
    assert time.monotonic() - cancelled_at < 2.0
    generated = server.token_counts() - before
    assert generated.completion_tokens < LONG, "the slot went idle because the stream ended, not the cancel"
    reply = await real_client.wait(request_id)
    assert isinstance(reply, ErrorReply)
    assert reply.error.code == "cancelled"
    assert idle_after_s < 2.0


async def test_200_alternating_streamed_and_plain_requests_without_an_error(
    real_pool: RealPool, real_client: LLMPool
) -> None:
    tenant = str(uuid.uuid4())
    params = {"max_tokens": 8}
    errors: list[str] = []
    for i in range(200):
        group = "quality" if i % 4 < 2 else "claude"  # both protocols, both alternations
        if i % 2 == 0:
            events = [e async for e in real_client.stream(group, user(), tenant, params=params)]
            final = events[-1]
            if not isinstance(final, DoneEvent) or any(isinstance(e, ResetEvent) for e in events):
                errors.append(f"{i}: stream {[type(e).__name__ for e in events]}")
        else:
            reply = await real_client.complete(group, user(), tenant, params=params)
            if not isinstance(reply, OkReply) or reply.usage.completion_tokens != 8:
                errors.append(f"{i}: complete {reply}")
    assert errors == []
