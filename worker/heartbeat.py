"""The worker's heartbeat key (contract section 4): liveness and numbers for operators."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from llm_pool.connections import out_of_memory
from llm_pool.logging import OutageLog, get_logger
from llm_pool.schemas import Heartbeat
from llm_pool.tasks import cancel_and_wait

log = get_logger(__name__)

RETRY_S = 0.25


class HeartbeatTask:
    """Sets ``P:heartbeat:{worker_id}`` every interval with a TTL of three intervals."""

    def __init__(self, redis: Redis, key: str, interval_s: float, snapshot: Callable[[], Heartbeat]) -> None:
        self._redis = redis
        self._key = key
        self._interval_s = interval_s
        self._snapshot = snapshot
        self._task: asyncio.Task[None] | None = None
        self._outage = OutageLog(log, "heartbeat_failed", "heartbeat_recovered")

    async def beat(self) -> None:
        """Write the key once; raises if Redis cannot take it.

        A full Redis (``maxmemory``, ``noeviction``) refuses the SET but still allows PEXPIRE: the
        last value is kept alive meanwhile, so a worker that is alive stays in the pool."""
        ttl_ms = int(self._interval_s * 3 * 1000)
        try:
            await self._redis.set(self._key, self._snapshot().model_dump_json(), px=ttl_ms)
        except ResponseError as exc:
            if out_of_memory(exc):
                await self._redis.pexpire(self._key, ttl_ms)
            raise

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
                self._outage.succeeded()
            except (RedisError, OSError) as exc:
                # Redis away or full: try again soon, so the key is back as soon as Redis takes it.
                self._outage.failed(exc)
                await asyncio.sleep(min(self._interval_s, RETRY_S))
                continue
            await asyncio.sleep(self._interval_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="heartbeat")

    async def stop(self) -> None:
        """Stop beating and remove the key, so the worker leaves the pool at once."""
        await cancel_and_wait(self._task)
        self._task = None
        with contextlib.suppress(RedisError, OSError):  # if Redis is away, the key expires by itself
            await self._redis.delete(self._key)
