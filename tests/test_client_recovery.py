"""The caller's side of "every request answered exactly once": ``LLMPool`` against a Redis that
drops its pub-sub connection, a request that publishes onto another's channel, an ACL that refuses a
channel, and a Redis that is not there. Each end-to-end test runs on a Redis server of its own."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from llm_pool import PoolError, PoolUnavailable, ReplyTimeout, SubscribeRefused
from llm_pool.client import Event, LLMPool
from llm_pool.client import _StreamTracker as StreamTracker
from llm_pool.schemas import (
    ChunkEvent,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    ErrorInfo,
    ErrorReply,
    OkReply,
    ResetEvent,
    Usage,
)
from llm_pool.testing.cluster import DEPLOYMENTS, FakeProviderProcess, RedisServer, free_port
from tests.helpers import TENANT, Pool, user


@pytest.fixture
def server() -> Iterator[RedisServer]:
    the_server = RedisServer(port=free_port())
    the_server.start()
    yield the_server
    the_server.stop()


@pytest.fixture
def rpool(tmp_path: Path, provider: FakeProviderProcess, server: RedisServer) -> Iterator[Pool]:
    """A pool on the private Redis; tests start its worker (after any ACL change).

    Its settings allow ``denied:*`` channels, so that only Redis's ACL refuses them.
    """
    allowed = {"allowed_channels": ["{prefix}:stream:*", "denied:*"]}
    the_pool = Pool(tmp_path, provider, redis_url=server.url, worker=allowed)
    yield the_pool
    the_pool.stop()


def start_worker(pool: Pool, tokens: int, token_delay_ms: float) -> None:
    pool.wait_ready(pool.start_worker())
    pool.provider.configure_deployments(DEPLOYMENTS, tokens=tokens, token_delay_ms=token_delay_ms)


def assembled(events: Sequence[Event]) -> str:
    """The text a caller shows: chunks appended, everything before a ``reset`` discarded."""
    text = ""
    for event in events:
        if isinstance(event, ResetEvent):
            text = ""
        elif isinstance(event, ChunkEvent):
            text += event.text
    return text


def check_one_answer(events: Sequence[Event], reply: OkReply | ErrorReply | None, request_id: str) -> str:
    assert isinstance(reply, OkReply), reply
    kinds = [e.type for e in events]
    assert kinds.count("done") == 1 and kinds[-1] == "done" and "error" not in kinds, kinds
    assert all(e.request_id == request_id for e in events)
    text = assembled(events)
    assert text == reply.content, (len(text), len(reply.content))
    return text


async def subscribed(client: aioredis.Redis, channel: str, timeout_s: float = 5) -> None:
    """Until someone listens on ``channel``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counts = dict(await client.pubsub_numsub(channel))
        if counts.get(channel.encode(), 0) > 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"nobody subscribed to {channel}")


def stall_until_reply(url: str, reply_key: str, timeout_s: float = 10) -> None:
    """Kill every pub-sub connection, then block this event loop until the reply key exists.

    The caller's process stalls (think a long GC pause) while its connection is dead, so the
    request's final event is published to nobody: deterministically, the event falls in the gap.
    """
    sync = redis.Redis.from_url(url)
    try:
        assert sync.client_kill_filter(_type="pubsub")
        deadline = time.monotonic() + timeout_s
        while not sync.exists(reply_key):
            assert time.monotonic() < deadline, "the request did not finish"
            time.sleep(0.02)  # blocking on purpose: nothing in this process may run
    finally:
        sync.close()


# --- the gap logic, in process ------------------------------------------------------------------

RID = "req-1"


def chunk(seq: int, text: str, request_id: str = RID) -> bytes:
    return ChunkEvent(text=text, request_id=request_id, seq=seq).model_dump_json().encode()


def done(request_id: str = RID) -> bytes:
    return DoneEvent(request_id=request_id, usage=Usage(), finish_reason="stop").model_dump_json().encode()


def reset(attempt: int) -> bytes:
    return ResetEvent(request_id=RID, attempt=attempt).model_dump_json().encode()


def ok(content: str, attempt: int = 1) -> OkReply:
    return OkReply(
        request_id=RID,
        content=content,
        finish_reason="stop",
        model="fast",
        served_by="x",
        fallback=False,
        usage=Usage(),
        attempt=attempt,
        latency_ms=1,
    )


def feed(tracker: StreamTracker, *raws: bytes) -> list[Event]:
    out = []
    for raw in raws:
        event = tracker.accept(raw)
        if event is not None:
            out.append(event)
    return out


def test_tracker_passes_an_unbroken_stream_through() -> None:
    tracker = StreamTracker(RID)
    events = feed(tracker, chunk(0, "a"), chunk(1, "b"), reset(2), chunk(0, "c"), chunk(1, "d"), done())
    assert [e.type for e in events] == ["chunk", "chunk", "reset", "chunk", "chunk", "done"]
    assert tracker.final_seen and not tracker.gap
    assert tracker.finish(ok("cd", attempt=2)) == [events[-1]]  # nothing was missed


def test_tracker_recovers_the_missing_tail_after_a_seq_gap() -> None:
    tracker = StreamTracker(RID)
    events = feed(tracker, chunk(0, "tok0 "), chunk(2, "tok2 "), chunk(3, "tok3 "), done())
    assert [e.type for e in events] == ["chunk"] and tracker.gap and tracker.final_seen
    tail = tracker.finish(ok("tok0 tok1 tok2 tok3 "))
    assert [e.type for e in tail] == ["chunk", "done"]
    assert tail[0] == ChunkEvent(text="tok1 tok2 tok3 ", request_id=RID, seq=1)
    assert assembled(events + tail) == "tok0 tok1 tok2 tok3 "


def test_tracker_resets_when_the_reply_does_not_continue_what_was_shown() -> None:
    tracker = StreamTracker(RID)
    shown = feed(tracker, chunk(0, "first "), chunk(1, "attempt "))
    tracker.drop()
    assert feed(tracker, reset(2), chunk(0, "second "), done()) == []  # nothing after the gap
    tail = tracker.finish(ok("second attempt", attempt=2))
    assert [e.type for e in tail] == ["reset", "chunk", "done"]
    assert tail[0] == ResetEvent(request_id=RID, attempt=2)
    assert assembled(shown + tail) == "second attempt"


def test_tracker_ends_a_failed_request_with_its_error() -> None:
    tracker = StreamTracker(RID)
    feed(tracker, chunk(0, "a"))
    tracker.drop()
    failed = ErrorReply(request_id=RID, error=ErrorInfo(code=ErrorCode.TIMEOUT, message="late"))
    assert tracker.finish(failed) == [ErrorEvent(request_id=RID, code=ErrorCode.TIMEOUT, message="late")]


def test_tracker_ignores_other_requests_and_garbage() -> None:
    tracker = StreamTracker(RID)
    events = feed(tracker, chunk(0, "a"), chunk(0, "X", "other"), done("other"), b"{nope", chunk(1, "b"))
    assert [e.text for e in events if isinstance(e, ChunkEvent)] == ["a", "b"]
    assert tracker.ignored == 3 and not tracker.final_seen and not tracker.gap


# --- end to end ---------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("kills", [1, 4])
async def test_stream_survives_pubsub_kills(rpool: Pool, server: RedisServer, kills: int) -> None:
    start_worker(rpool, tokens=300, token_delay_ms=5)
    request_id = uuid.uuid4().hex
    events: list[Event] = []
    first_chunk = asyncio.Event()

    async def kill_pubsub() -> int:
        """Kill every pub-sub connection (ours and the worker's) every 0.25 s, mid-stream."""
        killer = aioredis.Redis.from_url(server.url)
        try:
            await first_chunk.wait()
            for _ in range(kills):
                await asyncio.sleep(0.25)
                assert await killer.client_kill_filter(_type="pubsub") >= 1
        finally:
            await killer.aclose()
        return kills

    killing = asyncio.ensure_future(kill_pubsub())
    async with LLMPool(rpool.settings, redis_url=server.url) as client:
        started = time.monotonic()
        async for event in client.stream("fast", user(), TENANT, request_id=request_id, timeout_s=20):
            events.append(event)
            first_chunk.set()
        elapsed = time.monotonic() - started
        reply = await client.reply(request_id)
    assert killing.done() and killing.result() == kills, "every kill landed mid-stream"
    text = check_one_answer(events, reply, request_id)
    recovered = max(len(e.text) for e in events if isinstance(e, ChunkEvent))
    assert recovered > 20, "the missed text came back from the reply key"
    assert elapsed < 8, elapsed  # ~2 s of tokens, not the 30 s budget
    print(f"{kills} kill(s): {len(text)} chars, {recovered} recovered from the reply key, {elapsed:.2f} s")


@pytest.mark.e2e
async def test_stream_missing_its_final_event_reads_the_reply_at_once(
    rpool: Pool, server: RedisServer
) -> None:
    start_worker(rpool, tokens=30, token_delay_ms=40)
    request_id = uuid.uuid4().hex
    events: list[Event] = []
    async with LLMPool(rpool.settings, redis_url=server.url) as client:
        stream = client.stream("fast", user(), TENANT, request_id=request_id, timeout_s=20)
        async for event in stream:
            events.append(event)
            if isinstance(event, ChunkEvent) and event.seq == 5:
                break
        stall_until_reply(server.url, rpool.keys.reply(request_id))
        resumed = time.monotonic()
        async for event in stream:  # the same generator, after the stall
            events.append(event)
        elapsed = time.monotonic() - resumed
        reply = await client.reply(request_id)
    text = check_one_answer(events, reply, request_id)
    assert elapsed < 2, elapsed  # the 30 s budget would be the old behaviour
    print(f"final event missed: {len(text)} chars, stream ended {elapsed * 1000:.0f} ms after the stall")


@pytest.mark.e2e
async def test_complete_missing_its_final_event_reads_the_reply_at_once(
    rpool: Pool, server: RedisServer
) -> None:
    start_worker(rpool, tokens=30, token_delay_ms=40)
    request_id = uuid.uuid4().hex
    watcher = aioredis.Redis.from_url(server.url)
    try:
        async with LLMPool(rpool.settings, redis_url=server.url) as client:
            pending = asyncio.ensure_future(
                client.complete("fast", user(), TENANT, request_id=request_id, timeout_s=20)
            )
            await subscribed(watcher, rpool.keys.stream(request_id))
            await asyncio.sleep(0.3)  # the job is running
            assert await client.reply(request_id) is None
            stall_until_reply(server.url, rpool.keys.reply(request_id))
            resumed = time.monotonic()
            reply = await asyncio.wait_for(pending, 10)
            elapsed = time.monotonic() - resumed
    finally:
        await watcher.aclose()
    assert isinstance(reply, OkReply) and reply.request_id == request_id, reply
    assert elapsed < 2, elapsed
    print(f"complete() missed its final event and returned {elapsed * 1000:.0f} ms after the stall")


def foreign_events(other: str) -> list[bytes]:
    return [chunk(seq, "INJECTED ", other) for seq in range(3)] + [done(other), b"not json"]


def foreign_warnings(logs: Sequence[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == "foreign_events_ignored"]


@pytest.mark.e2e
async def test_events_of_another_request_are_ignored(rpool: Pool, server: RedisServer) -> None:
    start_worker(rpool, tokens=20, token_delay_ms=40)
    injector = aioredis.Redis.from_url(server.url)
    other = uuid.uuid4().hex
    try:
        async with LLMPool(rpool.settings, redis_url=server.url) as client:
            # stream(): the injection lands after the first real chunk.
            request_id = uuid.uuid4().hex
            events: list[Event] = []
            with capture_logs() as logs:
                async for event in client.stream("fast", user(), TENANT, request_id=request_id):
                    events.append(event)
                    if len(events) == 1:
                        for raw in foreign_events(other):
                            await injector.publish(rpool.keys.stream(request_id), raw)
            check_one_answer(events, await client.reply(request_id), request_id)
            [warning] = foreign_warnings(logs)
            assert warning["request_id"] == request_id and "INJECTED" not in json.dumps(warning)

            # complete(): a foreign `done` no longer ends the wait early.
            request_id = uuid.uuid4().hex
            with capture_logs() as logs:
                pending = asyncio.ensure_future(
                    client.complete("fast", user(), TENANT, request_id=request_id)
                )
                await subscribed(injector, rpool.keys.stream(request_id))
                for raw in foreign_events(other):
                    await injector.publish(rpool.keys.stream(request_id), raw)
                reply = await asyncio.wait_for(pending, 10)
            assert isinstance(reply, OkReply) and reply.request_id == request_id, reply
            assert len(foreign_warnings(logs)) == 1
    finally:
        await injector.aclose()


@pytest.mark.e2e
async def test_refused_subscription_fails_fast_and_only_that_request(
    rpool: Pool, server: RedisServer
) -> None:
    admin = aioredis.Redis.from_url(server.url)
    # The pool's own channels are allowed (workers need them); anything else is refused.
    await admin.execute_command("ACL", "SETUSER", "default", "resetchannels", f"&{rpool.prefix}:*")
    start_worker(rpool, tokens=20, token_delay_ms=40)
    try:
        async with LLMPool(rpool.settings, redis_url=server.url) as client:

            async def allowed_stream() -> list[Event]:
                return [e async for e in client.stream("fast", user(), TENANT)]

            running = asyncio.ensure_future(allowed_stream())
            await asyncio.sleep(0.3)
            refused_id = uuid.uuid4().hex
            started = time.monotonic()
            with pytest.raises(SubscribeRefused) as caught:
                await asyncio.wait_for(
                    client.complete(
                        "fast",
                        user(),
                        TENANT,
                        request_id=refused_id,
                        channel=f"denied:{refused_id}",
                        timeout_s=3,
                    ),
                    10,
                )
            elapsed = time.monotonic() - started
            assert "NOPERM" in str(caught.value) and f"denied:{refused_id}" in str(caught.value)
            assert isinstance(caught.value, PoolError) and caught.value.channel == f"denied:{refused_id}"
            assert elapsed < 1, elapsed
            assert await admin.exists(f"arq:job:{refused_id}") == 0, "nothing was enqueued"
            with pytest.raises(SubscribeRefused):
                async for _ in client.stream("fast", user(), TENANT, channel="denied:stream", timeout_s=3):
                    pass

            # The stream that was running meanwhile, and a new request, are served as usual.
            events = await asyncio.wait_for(running, 10)
            assert [e.type for e in events][-1] == "done" and len(assembled(events)) > 0
            reply = await asyncio.wait_for(client.complete("fast", user(), TENANT), 10)
            assert isinstance(reply, OkReply), reply
    finally:
        await admin.aclose()
    print(f"refused SUBSCRIBE raised after {elapsed:.3f} s: {caught.value}")


@pytest.mark.e2e
async def test_redis_not_listening_raises_pool_unavailable(rpool: Pool) -> None:
    port = free_port()
    url = f"redis://:s3cret-pw@127.0.0.1:{port}/0"
    async with LLMPool(rpool.settings, redis_url=url) as client:
        for call in (
            lambda: client.complete("fast", user(), TENANT),
            lambda: client.wait("some-id", timeout_s=5),
            lambda: client.submit("fast", user(), TENANT),
        ):
            started = time.monotonic()
            with pytest.raises(PoolUnavailable) as caught:
                await asyncio.wait_for(call(), 5)
            assert time.monotonic() - started < 1
            assert f"127.0.0.1:{port}" in str(caught.value) and "s3cret" not in str(caught.value)
        with pytest.raises(PoolUnavailable):
            async for _ in client.stream("fast", user(), TENANT):
                pass
    assert isinstance(caught.value, ConnectionError), "old `except ConnectionError` code still works"
    print(caught.value)


@pytest.mark.e2e
async def test_redis_lost_while_waiting_raises_at_the_budget(rpool: Pool, server: RedisServer) -> None:
    async with LLMPool(rpool.settings, redis_url=server.url) as client:
        request_id = await client.submit("fast", user(), TENANT)  # no worker: it stays queued
        pending = asyncio.ensure_future(client.wait(request_id, timeout_s=2))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        server.stop()
        with pytest.raises(PoolUnavailable) as caught:
            await asyncio.wait_for(pending, 10)
        elapsed = time.monotonic() - started
    assert 1 < elapsed < 3.5, elapsed
    assert f"127.0.0.1:{server.port}" in str(caught.value)
    print(f"after {elapsed:.1f} s: {caught.value}")


@pytest.mark.e2e
async def test_reply_timeout_says_what_it_saw(rpool: Pool, server: RedisServer) -> None:
    async with LLMPool(rpool.settings, redis_url=server.url) as client:
        request_id = await client.submit("fast", user(), TENANT)  # no worker
        started = time.monotonic()
        with pytest.raises(ReplyTimeout) as caught:
            await client.wait(request_id, timeout_s=1)
        elapsed = time.monotonic() - started
    message = str(caught.value)
    assert 1 <= elapsed < 2.5, elapsed
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, PoolError)
    assert "1.0 s" in message and "subscribed" in message and "0 events" in message, message
    assert rpool.keys.reply(request_id) in message, message
    print(message)
