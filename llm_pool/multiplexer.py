"""One pub-sub connection shared by every waiter of a client (after SAQ's multiplexer).

``subscribe(channel)`` returns once Redis has confirmed the subscription, so a job enqueued after it
cannot publish into the void; messages are routed to per-channel queues by one reader task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from llm_pool.logging import OutageLog, get_logger
from llm_pool.tasks import cancel_and_wait

log = get_logger(__name__)


class Multiplexer:
    def __init__(self, redis: Redis, private_channel: str) -> None:
        self._redis = redis
        self._private_channel = private_channel
        self._pubsub: PubSub | None = None
        self._queues: dict[str, list[asyncio.Queue[bytes]]] = {}
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def _ensure_reader(self) -> PubSub:
        if self._pubsub is None:
            self._pubsub = self._redis.pubsub()
            # A private channel keeps the connection open while no waiter is subscribed.
            await self._pubsub.subscribe(self._private_channel)
            self._reader = asyncio.get_running_loop().create_task(self._read(), name="pubsub-reader")
        return self._pubsub

    async def _read(self) -> None:
        assert self._pubsub is not None
        outage = OutageLog(log, "pubsub_connection_lost", "pubsub_connection_restored", level="warning")
        while True:
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=False, timeout=5.0)
            except (RedisError, OSError) as exc:
                outage.failed(exc)
                await asyncio.sleep(0.2)
                continue
            outage.succeeded()
            if message is None:
                continue
            channel = message["channel"]
            name = channel.decode() if isinstance(channel, bytes) else str(channel)
            if message["type"] == "subscribe":
                future = self._confirmations.pop(name, None)
                if future is not None and not future.done():
                    future.set_result(None)
            elif message["type"] == "message":
                for queue in self._queues.get(name, []):
                    queue.put_nowait(message["data"])

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[asyncio.Queue[bytes]]:
        """Yield a queue of the channel's messages; the subscription is live when this yields."""
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        async with self._lock:
            pubsub = await self._ensure_reader()
            if channel not in self._queues:
                self._confirmations[channel] = asyncio.get_running_loop().create_future()
                await pubsub.subscribe(channel)
            self._queues.setdefault(channel, []).append(queue)
            confirmed = self._confirmations.get(channel)
        if confirmed is not None:
            await confirmed
        try:
            yield queue
        finally:
            async with self._lock:
                queues = self._queues.get(channel, [])
                if queue in queues:
                    queues.remove(queue)
                if not queues:
                    self._queues.pop(channel, None)
                    # If the connection is gone, the subscription went with it.
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.unsubscribe(channel)

    async def close(self) -> None:
        await cancel_and_wait(self._reader)
        self._reader = None
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            self._pubsub = None
