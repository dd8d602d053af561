"""The worker's outbox on fakeredis: order of chunks and final event, reply and ledger written once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any, cast

import fakeredis
import pytest
from redis.asyncio import Redis

from worker.outbox import DUPLICATE, WRITTEN, Final, LedgerEntry, Outbox


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
async def fake(server: fakeredis.FakeServer) -> AsyncIterator[Redis]:
    """The test's view of Redis; the outbox writes through its own (sync) client to the same server."""
    client: Redis = fakeredis.FakeAsyncRedis(server=server)
    yield client
    await client.aclose()


def outbox_for(server: fakeredis.FakeServer) -> Outbox:
    return Outbox(fakeredis.FakeRedis(server=server))


def final(ledger: LedgerEntry | None, reply: bytes = b'{"status":"ok"}') -> Final:
    return Final(
        reply_key="p:reply:r1",
        reply_json=reply,
        reply_ttl_s=60,
        channel="p:stream:r1",
        event_json=b'{"type":"done"}',
        ledger=ledger,
    )


async def test_chunks_then_reply_then_final_event_in_order(fake: Redis, server: fakeredis.FakeServer) -> None:
    pubsub = fake.pubsub()
    await pubsub.subscribe("p:stream:r1")
    outbox = outbox_for(server)
    outbox.start()
    for i in range(50):
        outbox.publish("p:stream:r1", json.dumps({"type": "chunk", "seq": i}).encode())
    ledger = LedgerEntry(
        "p:usage:t:2026-01-01", prompt_tokens=3, completion_tokens=8, cost_usd=0.25, ttl_s=100
    )
    assert await outbox.finish(final(ledger)) == WRITTEN
    received: list[dict[str, Any]] = []
    while len(received) < 51:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        if message is not None:
            received.append(json.loads(message["data"]))
    assert [m.get("seq") for m in received[:50]] == list(range(50))
    assert received[-1] == {"type": "done"}
    assert await fake.get("p:reply:r1") == b'{"status":"ok"}'
    assert 0 < await fake.ttl("p:reply:r1") <= 60
    ledger_hash = await cast(Awaitable[dict[bytes, bytes]], fake.hgetall("p:usage:t:2026-01-01"))
    assert ledger_hash == {
        b"requests": b"1",
        b"prompt_tokens": b"3",
        b"completion_tokens": b"8",
        b"cost_usd": b"0.25",
    }
    await outbox.close()
    await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_second_final_for_the_same_request_changes_nothing(
    fake: Redis, server: fakeredis.FakeServer
) -> None:
    outbox = outbox_for(server)
    outbox.start()
    ledger = LedgerEntry("p:usage:t:d", prompt_tokens=1, completion_tokens=1, cost_usd=0.5, ttl_s=100)
    first, second = await asyncio.gather(
        outbox.finish(final(ledger, b'{"n":1}')), outbox.finish(final(ledger, b'{"n":2}'))
    )
    assert (first, second) == (WRITTEN, DUPLICATE)
    assert await fake.get("p:reply:r1") == b'{"n":1}'
    assert await cast(Awaitable[bytes | None], fake.hget("p:usage:t:d", "requests")) == b"1"
    await outbox.close()
