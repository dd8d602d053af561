"""The programs around the pool, written with plain arq and redis-py and no llm_pool import:
an orchestrator that enqueues, and a WebSocket handler that listens to a channel."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.asyncio as aioredis
from arq.connections import ArqRedis, RedisSettings, create_pool


async def plain_arq(redis_url: str, queue: str) -> ArqRedis:
    return await create_pool(
        RedisSettings.from_dsn(redis_url),
        job_serializer=lambda o: json.dumps(o).encode(),
        job_deserializer=json.loads,
        default_queue_name=queue,
    )


class Listener:
    """Subscribes to one channel and collects its JSON messages until a final event."""

    def __init__(self, client: aioredis.Redis, channel: str) -> None:
        self._pubsub = client.pubsub()
        self.channel = channel
        self.events: list[dict[str, Any]] = []

    async def __aenter__(self) -> Listener:
        await self._pubsub.subscribe(self.channel)
        # Wait for Redis to confirm, so nothing published after this can be missed.
        while True:
            message = await self._pubsub.get_message(timeout=5)
            if message and message["type"] == "subscribe":
                return self

    async def __aexit__(self, *exc: object) -> None:
        await self._pubsub.unsubscribe(self.channel)
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def until_final(self, timeout_s: float = 30) -> list[dict[str, Any]]:
        async def collect() -> None:
            while True:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is None:
                    continue
                event = json.loads(message["data"])
                self.events.append(event)
                if event["type"] in ("done", "error"):
                    return

        await asyncio.wait_for(collect(), timeout_s)
        return self.events

    async def quiet_for(self, seconds: float) -> list[dict[str, Any]]:
        """Anything published in the next ``seconds`` (nothing may follow a final event)."""
        extra: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            if message is not None:
                extra.append(json.loads(message["data"]))
        return extra
