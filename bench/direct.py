"""LiteLLM without the pool: the in-process baseline that the pool is compared with.

``python -m bench.direct ttft STREAMS ROUNDS``: time to first token of ``Router.acompletion(stream=True)``
``python -m bench.direct ceiling STREAMS``: chunks/s of one process consuming STREAMS streams at once.
``python -m bench.direct side-by-side SAMPLES GAP_S``: the same 1-token stream three ways, one after
the other, GAP_S apart, SAMPLES times: through the Router in this process (to its first token and
to its end), enqueued with plain arq (to its ``done`` event), and enqueued with ``LLMPool.submit``.
Settings come from ``LLM_POOL_SETTINGS`` (the same file the workers use); prints one JSON line,
and a progress bar on stderr.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import time
import uuid

from arq.connections import create_pool

from bench.progress import bar
from bench.timing import enqueue_to_done_ms, stream_times_ms, ttft_rounds
from llm_pool.client import LLMPool
from llm_pool.connections import arq_settings, async_redis
from llm_pool.keys import Keys
from llm_pool.router import PoolRouter
from llm_pool.schemas import CompletionRequest
from llm_pool.settings import load_settings

SIDE_BY_SIDE_WARM_UP = 3


def _request() -> CompletionRequest:
    return CompletionRequest.model_validate(
        {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "tenant_id": str(uuid.uuid4())}
    )


async def ttft(streams: int, rounds: int) -> dict[str, list[float]]:
    router = PoolRouter(load_settings())
    request = _request()

    ends: list[float] = []
    samples = await ttft_rounds(
        lambda: router.stream("fast", request), streams, rounds, "  direct streams", ends=ends
    )
    return {"ttft_ms": samples, "end_ms": ends}


async def ceiling(streams: int) -> dict[str, float]:
    router = PoolRouter(load_settings())
    request = _request()
    chunks = 0

    async def one() -> None:
        nonlocal chunks
        async for _ in router.stream("fast", request):
            chunks += 1
            progress.update()

    with bar("  ceiling chunks", unit="chunk") as progress:
        await asyncio.gather(*[one() for _ in range(2)])  # warm-up
        chunks = 0
        started = time.perf_counter()
        await asyncio.gather(*[one() for _ in range(streams)])
        elapsed = time.perf_counter() - started
    return {"chunks": chunks, "seconds": elapsed, "chunks_per_s": chunks / elapsed}


async def side_by_side(samples: int, gap_s: float) -> dict[str, list[float]]:
    """Each sample: the stream in process, then by plain arq, then by ``LLMPool`` (ms), each after
    ``gap_s`` of quiet, so that each meets the machine in the same state (warm-up samples dropped)."""
    settings = load_settings()
    keys = Keys(settings.redis.key_prefix)
    router = PoolRouter(settings)
    request = _request()
    raw = request.model_dump(mode="json", exclude_none=True)
    times: dict[str, list[float]] = {"first_ms": [], "end_ms": [], "arq_ms": [], "llmpool_ms": []}
    arq = await create_pool(
        arq_settings(settings.redis),
        job_serializer=lambda o: json.dumps(o).encode(),
        job_deserializer=json.loads,
        default_queue_name=settings.queue_name,
    )
    listener = async_redis(settings.redis)
    try:
        async with LLMPool(settings) as pool:
            with bar("  side by side", total=SIDE_BY_SIDE_WARM_UP + samples, unit="sample") as progress:
                for sample in range(SIDE_BY_SIDE_WARM_UP + samples):
                    first, end = await stream_times_ms(router.stream("fast", request))
                    await asyncio.sleep(gap_s)
                    request_id = uuid.uuid4().hex
                    by_arq = await enqueue_to_done_ms(
                        listener,
                        keys.stream(request_id),
                        functools.partial(arq.enqueue_job, "complete_stream", raw, _job_id=request_id),
                    )
                    await asyncio.sleep(gap_s)
                    request_id = uuid.uuid4().hex
                    by_pool = await enqueue_to_done_ms(
                        listener,
                        keys.stream(request_id),
                        functools.partial(
                            pool.submit,
                            "fast",
                            raw["messages"],
                            raw["tenant_id"],
                            stream=True,
                            request_id=request_id,
                        ),
                    )
                    await asyncio.sleep(gap_s)
                    if sample >= SIDE_BY_SIDE_WARM_UP:
                        for name, value in zip(times, (first, end, by_arq, by_pool), strict=True):
                            times[name].append(value)
                    progress.update()
    finally:
        await arq.aclose()
        await listener.aclose()
    return times


def main() -> None:
    mode = sys.argv[1]
    if mode == "ttft":
        result: object = asyncio.run(ttft(int(sys.argv[2]), int(sys.argv[3])))
    elif mode == "side-by-side":
        result = asyncio.run(side_by_side(int(sys.argv[2]), float(sys.argv[3])))
    else:
        result = asyncio.run(ceiling(int(sys.argv[2])))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
