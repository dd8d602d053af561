"""The worker's heartbeat key (contract section 4): liveness and numbers for operators."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from llm_pool.connections import out_of_memory
from llm_pool.logging import OutageLog, get_logger
from llm_pool.schemas import Heartbeat
from llm_pool.tasks import cancel_and_wait

log = get_logger(__name__)

RETRY_S = 0.25
# How long a worker watches another process's heartbeat under its own id, in heartbeat intervals:
# a live worker rewrites it every interval (a saturated one up to about a second late).
LIVENESS_WATCH_INTERVALS = 1.5


class WorkerIdInUse(Exception):
    """Another live worker already has this ``worker.worker_id``."""


def _process_gone(beat: Heartbeat) -> bool:
    """Whether the heartbeat was written by a process of this machine that no longer runs (or by an
    earlier incarnation of this one: the same pid in a restarted container)."""
    if beat.host != socket.gethostname():
        return False
    if beat.pid == os.getpid():
        return True
    try:
        os.kill(beat.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _parsed(raw: bytes | None) -> Heartbeat | None:
    """A heartbeat key's value, or None when there is none or it is not a heartbeat."""
    try:
        return Heartbeat.model_validate_json(raw) if raw is not None else None
    except ValidationError:
        return None


class HeartbeatTask:
    """Sets ``P:heartbeat:{worker_id}`` every interval with a TTL of three intervals."""

    def __init__(self, redis: Redis, key: str, interval_s: float, snapshot: Callable[[], Heartbeat]) -> None:
        self._redis = redis
        self._key = key
        self._interval_s = interval_s
        self._snapshot = snapshot
        self._ttl_ms = int(interval_s * 3 * 1000)
        self._task: asyncio.Task[None] | None = None
        self._outage = OutageLog(log, "heartbeat_failed", "heartbeat_recovered")

    async def beat(self) -> None:
        """Write the key once; raises if Redis cannot take it.

        A full Redis (``maxmemory``, ``noeviction``) refuses the SET but still allows PEXPIRE: the
        last value is kept alive meanwhile, so a worker that is alive stays in the pool."""
        try:
            await self._redis.set(self._key, self._snapshot().model_dump_json(), px=self._ttl_ms)
        except ResponseError as exc:
            if out_of_memory(exc):
                await self._redis.pexpire(self._key, self._ttl_ms)
            raise

    async def take_identity(self) -> None:
        """The first beat: write the key only if no other live worker holds it.

        The key is written with ``NX``. If it is there already, it is stale when its process is
        gone (same host, pid not running) or when it is not rewritten within
        ``LIVENESS_WATCH_INTERVALS`` heartbeat intervals (a crashed worker's key, until its TTL
        ends); then this worker takes it over. Otherwise raises ``WorkerIdInUse``."""
        if await self._redis.set(self._key, self._snapshot().model_dump_json(), px=self._ttl_ms, nx=True):
            return
        seen = await self._redis.get(self._key)
        found = _parsed(seen)
        if seen is not None and not (found is not None and _process_gone(found)):
            await asyncio.sleep(self._interval_s * LIVENESS_WATCH_INTERVALS)
            now = await self._redis.get(self._key)
            if now is not None and now != seen:
                holder = _parsed(now)
                who = (
                    f"host {holder.host}, pid {holder.pid}, started {holder.started_at}"
                    if holder
                    else "unreadable heartbeat"
                )
                raise WorkerIdInUse(
                    f"another live worker has this worker id ({who}); "
                    "give each worker its own worker.worker_id, or leave it empty"
                )
        log.info("worker_id_taken_over", detail="the previous holder stopped beating")
        await self.beat()

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
