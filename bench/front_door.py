"""The HTTP front door (``llm-pool serve-http``) as the benchmark reads it: an aiohttp NDJSON client,
the same way ``bench/proxy.py`` reads the LiteLLM proxy's SSE."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import aiohttp

from bench.timing import chunks_per_s, ttft_rounds

PROMPT = [{"role": "user", "content": "hi"}]


class FrontDoorClient:
    def __init__(self, url: str) -> None:
        self.url = url
        self.tenant = str(uuid.uuid4())

    def session(self, connections: int) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections), timeout=aiohttp.ClientTimeout(total=300)
        )

    async def texts(self, session: aiohttp.ClientSession) -> AsyncIterator[str]:
        """One ``POST /complete/stream``: the text of each chunk line."""
        body = {"model": "fast", "messages": PROMPT, "tenant_id": self.tenant}
        async with session.post(f"{self.url}/complete/stream", json=body) as response:
            response.raise_for_status()
            async for line in response.content:  # one NDJSON line at a time
                event = json.loads(line)
                if event["type"] == "chunk":
                    yield event["text"]
                elif event["type"] == "error":
                    raise RuntimeError(f"the front door's stream failed: {event}")

    async def ttft(self, streams: int, rounds: int) -> list[float]:
        """Time to the first chunk line, ``rounds`` times ``streams`` concurrent streams (ms)."""
        async with self.session(streams) as session:
            return await ttft_rounds(lambda: self.texts(session), streams, rounds, "  front door streams")

    async def chunks(self, streams: int, tokens: int) -> dict[str, float]:
        """``streams`` concurrent streams at once: the chunk lines the clients receive per second."""
        async with self.session(streams) as session:
            return await chunks_per_s(
                lambda: self.texts(session), streams, tokens, "  chunks through the front door"
            )
