"""Cancellation (contract section 5): one Redis round trip per tick for all running requests.

While requests run, the watcher reads all their ``P:cancel:{id}`` keys with a single MGET every
``interval_s`` and cancels the task of any request whose key is set; with nothing running it sends
nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from llm_pool.tasks import cancel_and_wait


class CancelWatcher:
    def __init__(self, redis: Redis, key_of: Callable[[str], str], interval_s: float = 0.25) -> None:
        self._redis = redis
        self._key_of = key_of
        self._interval_s = interval_s
        self._running: dict[str, asyncio.Task[object]] = {}
        self._cancelled: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()

    async def is_requested(self, request_id: str) -> bool:
        return bool(await self._redis.exists(self._key_of(request_id)))

    def watch(self, request_id: str, task: asyncio.Task[object]) -> None:
        self._running[request_id] = task
        self._wakeup.set()

    def unwatch(self, request_id: str) -> bool:
        """Stop watching; True if the request was cancelled by its caller."""
        self._running.pop(request_id, None)
        if request_id in self._cancelled:
            self._cancelled.discard(request_id)
            return True
        return False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cancel-watcher")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            if not self._running:
                self._wakeup.clear()
                await self._wakeup.wait()
            await asyncio.sleep(self._interval_s)
            ids = list(self._running)
            if not ids:
                continue
            try:
                flags = await self._redis.mget([self._key_of(i) for i in ids])
            except (RedisError, OSError):
                continue  # the outage is reported by the heartbeat; try again next tick
            for request_id, flag in zip(ids, flags, strict=True):
                task = self._running.get(request_id)
                if flag is not None and task is not None and not task.done():
                    self._cancelled.add(request_id)
                    task.cancel()
