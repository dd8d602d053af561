"""The client's ``Multiplexer`` (llm_pool/multiplexer.py) against the shared Redis, in this process:
subscriptions confirmed before use, shared per channel, and a dropped connection signalled to every
waiter (``DROPPED``, then ``RESUBSCRIBED`` once the channel is subscribed again)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import cast

import pytest
import redis.asyncio as aioredis

from llm_pool.errors import PoolUnavailable
from llm_pool.keys import Keys
from llm_pool.multiplexer import Item, Multiplexer, Signal
from tests.helpers import REDIS_URL, kill_clients_named

TIMEOUT_S = 5.0


@pytest.fixture
async def mux(scratch_keys: Keys) -> AsyncIterator[tuple[Multiplexer, str]]:
    """A multiplexer whose connections carry a name of their own (so a test can kill them)."""
    name = f"mux-{uuid.uuid4().hex[:8]}"
    client = aioredis.Redis.from_url(REDIS_URL, client_name=name)
    multiplexer = Multiplexer(client, scratch_keys.stream("private-" + name))
    yield multiplexer, name
    await multiplexer.close()
    await client.aclose()


async def next_item(queue: asyncio.Queue[Item]) -> Item:
    return await asyncio.wait_for(queue.get(), TIMEOUT_S)


async def subscribers(client: aioredis.Redis, channel: str) -> int:
    counts = cast(list[tuple[bytes, int]], await client.pubsub_numsub(channel))
    return int(counts[0][1])


async def test_a_subscription_is_live_when_it_yields(
    mux: tuple[Multiplexer, str], aredis: aioredis.Redis, scratch_keys: Keys
) -> None:
    multiplexer, _ = mux
    channel = scratch_keys.stream("a")
    async with multiplexer.subscribe(channel, TIMEOUT_S) as queue:
        assert await aredis.publish(channel, b"first") == 1  # no wait: already subscribed
        await aredis.publish(channel, b"second")
        assert [await next_item(queue), await next_item(queue)] == [b"first", b"second"]
    assert await subscribers(aredis, channel) == 0, "the last waiter's exit unsubscribes"


async def test_waiters_of_one_channel_share_its_subscription(
    mux: tuple[Multiplexer, str], aredis: aioredis.Redis, scratch_keys: Keys
) -> None:
    multiplexer, _ = mux
    channel, other = scratch_keys.stream("shared"), scratch_keys.stream("other")
    async with multiplexer.subscribe(channel, TIMEOUT_S) as first, multiplexer.subscribe(other, TIMEOUT_S):
        async with multiplexer.subscribe(channel, TIMEOUT_S) as second:
            assert await subscribers(aredis, channel) == 1, "one connection for every channel"
            await aredis.publish(channel, b"both")
            assert await next_item(first) == b"both" and await next_item(second) == b"both"
        await aredis.publish(channel, b"still")
        assert await next_item(first) == b"still", "the remaining waiter keeps the subscription"
        assert second.empty()
        assert await subscribers(aredis, other) == 1
    assert await subscribers(aredis, channel) == 0 and await subscribers(aredis, other) == 0


async def test_a_dropped_connection_is_signalled_then_resubscribed(
    mux: tuple[Multiplexer, str], aredis: aioredis.Redis, scratch_keys: Keys
) -> None:
    multiplexer, name = mux
    channel = scratch_keys.stream("dropped")
    async with (
        multiplexer.subscribe(channel, TIMEOUT_S) as queue,
        multiplexer.subscribe(channel, TIMEOUT_S) as twin,
    ):
        assert await kill_clients_named(aredis, name) == 1
        for waiter in (queue, twin):
            assert await next_item(waiter) == Signal.DROPPED
            assert await next_item(waiter) == Signal.RESUBSCRIBED
        assert await subscribers(aredis, channel) == 1
        await aredis.publish(channel, b"after")
        assert await next_item(queue) == b"after" and await next_item(twin) == b"after"
        # A second drop is signalled the same way.
        assert await kill_clients_named(aredis, name) == 1
        assert [await next_item(queue), await next_item(queue)] == [Signal.DROPPED, Signal.RESUBSCRIBED]


async def test_no_redis_is_pool_unavailable(scratch_keys: Keys) -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0")
    multiplexer = Multiplexer(client, scratch_keys.stream("private"))
    try:
        with pytest.raises(PoolUnavailable):
            async with multiplexer.subscribe(scratch_keys.stream("x"), TIMEOUT_S):
                pytest.fail("subscribed without a server")
    finally:
        await multiplexer.close()
        await client.aclose()
