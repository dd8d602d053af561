"""Time to first token, measured the same way for the pool, LiteLLM in-process and the proxy."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from bench.progress import bar

WARM_UP_STREAMS = 5


async def stream_times_ms(stream: AsyncIterable[object]) -> tuple[float, float]:
    """Milliseconds until ``stream`` yields its first item, and until it ends."""
    started = time.perf_counter()
    first = 0.0
    async for _ in stream:
        first = first or time.perf_counter() - started
    return first * 1000, (time.perf_counter() - started) * 1000


async def first_item_ms(stream: AsyncIterable[object]) -> float:
    """Milliseconds until ``stream`` yields its first item; the rest is read to its end."""
    return (await stream_times_ms(stream))[0]


async def ttft_rounds(
    open_stream: Callable[[], AsyncIterable[object]],
    streams: int,
    rounds: int,
    desc: str,
    ends: list[float] | None = None,
) -> list[float]:
    """A warm-up of a few streams, then ``rounds`` rounds of ``streams`` concurrent ones (ms each to
    the first item; with ``ends``, the times to each stream's end are appended there)."""
    warm_up = min(streams, WARM_UP_STREAMS)
    with bar(desc, total=streams * rounds + warm_up, unit="stream") as progress:

        async def one() -> tuple[float, float]:
            times = await stream_times_ms(open_stream())
            progress.update()
            return times

        await asyncio.gather(*[one() for _ in range(warm_up)])
        samples: list[float] = []
        for _ in range(rounds):
            for first, end in await asyncio.gather(*[one() for _ in range(streams)]):
                samples.append(first)
                if ends is not None:
                    ends.append(end)
    return samples


async def chunks_per_s(
    open_stream: Callable[[], AsyncIterable[Any]], streams: int, tokens: int, desc: str
) -> dict[str, float]:
    """``streams`` concurrent streams at once (``open_stream`` yields one item per chunk received):
    the chunks received per second, with a progress bar of ``streams * tokens``."""
    received = 0
    with bar(desc, total=streams * tokens, unit="chunk") as progress:

        async def one() -> None:
            nonlocal received
            async for _ in open_stream():
                received += 1
                progress.update()

        started = time.perf_counter()
        await asyncio.gather(*[one() for _ in range(streams)])
        elapsed = time.perf_counter() - started
    return {"chunks": received, "seconds": elapsed, "chunks_per_s": received / elapsed}


async def enqueue_to_done_ms(
    listener: aioredis.Redis, channel: str, enqueue: Callable[[], Awaitable[object]]
) -> float:
    """One streamed job: subscribe to its ``channel``, then ``enqueue()`` it; milliseconds from the
    enqueue to its final event (``done`` or ``error``) on the channel."""
    async with listener.pubsub() as pubsub:
        await pubsub.subscribe(channel)
        while (await pubsub.get_message(timeout=5)) is None:
            pass  # the subscription's confirmation
        started = time.perf_counter()
        await enqueue()
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=10)
            if message is not None and json.loads(message["data"])["type"] in ("done", "error"):
                return (time.perf_counter() - started) * 1000
