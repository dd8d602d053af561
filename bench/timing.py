"""Time to first token, measured the same way for the pool, LiteLLM in-process and the proxy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Callable

from bench.progress import bar

WARM_UP_STREAMS = 5


async def first_item_ms(stream: AsyncIterable[object]) -> float:
    """Milliseconds until ``stream`` yields its first item; the rest is read to its end."""
    started = time.perf_counter()
    first = 0.0
    async for _ in stream:
        first = first or time.perf_counter() - started
    return first * 1000


async def ttft_rounds(
    open_stream: Callable[[], AsyncIterable[object]], streams: int, rounds: int, desc: str
) -> list[float]:
    """A warm-up of a few streams, then ``rounds`` rounds of ``streams`` concurrent ones (ms each)."""
    warm_up = min(streams, WARM_UP_STREAMS)
    with bar(desc, total=streams * rounds + warm_up, unit="stream") as progress:

        async def one() -> float:
            ms = await first_item_ms(open_stream())
            progress.update()
            return ms

        await asyncio.gather(*[one() for _ in range(warm_up)])
        samples: list[float] = []
        for _ in range(rounds):
            samples += await asyncio.gather(*[one() for _ in range(streams)])
    return samples
