"""LiteLLM without the pool: the in-process baseline that the pool is compared with.

``python -m bench.direct ttft STREAMS ROUNDS``: time to first token of ``Router.acompletion(stream=True)``
``python -m bench.direct ceiling STREAMS``: chunks/s of one process consuming STREAMS streams at once.
Settings come from ``LLM_POOL_SETTINGS`` (the same file the workers use); prints one JSON line,
and a progress bar on stderr.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

from bench.progress import bar
from bench.timing import ttft_rounds
from llm_pool.router import PoolRouter
from llm_pool.schemas import CompletionRequest
from llm_pool.settings import load_settings


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


def main() -> None:
    mode = sys.argv[1]
    if mode == "ttft":
        result: object = asyncio.run(ttft(int(sys.argv[2]), int(sys.argv[3])))
    else:
        result = asyncio.run(ceiling(int(sys.argv[2])))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
