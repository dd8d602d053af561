"""How an idle worker learns of a new job at once: one wake-up token per job, taken by one worker.

Every job enqueued by ``LLMPool`` pushes a token on the list ``P:wakeups`` (``llm_pool/enqueue.py``).
A worker with a free slot blocks on that list (``BLPOP``): each token wakes exactly one worker,
which claims; the others sleep on. (A shared pub-sub wake-up woke every idle worker for every job:
with 8 workers, 2.6 times the claim calls of one, nearly all of them finding nothing.) A busier
worker blocks a little later, so the least loaded one is usually first in line.

Jobs enqueued by plain arq push no token. For them, one worker at a time (the holder of the lease
``P:wake-relay``) listens to the queue's keyspace notifications (``notify-keyspace-events`` with
``K`` and ``z``) and pushes a token for each ``zadd`` (the pool's own enqueue script adds its entry
with ``ZINCRBY``, whose event is ``zincr``: it has pushed its token already, so each job gets one).
A relay with nothing to do claims the job itself instead, once per look at the queue: that spares
the token's round trip through Redis and another process's wake-up (``how="here"`` in the
``llm_pool_wake_relay_jobs`` metric, ``how="token"`` otherwise).
``worker.queue_notifications`` says whether to: ``off``; ``use`` (the default: relay when the
server has them on; a worker never changes the server's configuration on its own); ``enable`` (turn
them on with ``CONFIG SET``, again after every reconnect or failover). Without them, plain-arq jobs
wait for the poll (``worker.poll_delay_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import cast

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError, ResponseError

from llm_pool.enqueue import WAKEUPS_KEPT
from llm_pool.keys import Keys
from llm_pool.logging import OutageLog, get_logger
from llm_pool.tasks import cancel_and_wait

log = get_logger(__name__)

LEASE_LUA = (files("worker") / "relay_lease.lua").read_text(encoding="utf-8")
TOKEN_WAIT_S = 5  # a blocked BLPOP returns after this long and blocks again
LOOK_WAIT_S = 1.0  # after a token, how long to wait for the claim loop to look, at most
RELAY_LEASE_MS = 15_000
RELAY_RENEW_S = 5.0
RELAY_RETRY_S = 5.0  # how often a worker that does not relay checks whether the relay is gone
NOTIFICATIONS_RECHECK_S = 30.0  # with notifications off, how often the relay looks again


class Wakeups:
    """Sets ``wake`` when a token arrives, and takes the next one once the worker has claimed
    (``looked``); relays plain-arq enqueues when it holds the lease."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        wake: asyncio.Event,
        room: asyncio.Event,
        looked: asyncio.Event,
        busy_delay_s: Callable[[], float],
        idle: Callable[[], bool],
        on_relayed: Callable[[str], None],
        worker_id: str,
        queue_notifications: str,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._wake = wake
        self._room = room
        self._looked = looked
        self._busy_delay_s = busy_delay_s
        self._idle = idle
        self._on_relayed = on_relayed
        self._worker_id = worker_id
        self._mode = queue_notifications
        self._lease = redis.register_script(LEASE_LUA)
        db = int(redis.connection_pool.connection_kwargs.get("db", 0))
        self._channel = f"__keyspace@{db}__:{keys.queue}"
        self._tasks: list[asyncio.Task[None]] = []
        self._said_off = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._take_tokens(), name="wakeups")]
        if self._mode != "off":
            self._tasks.append(loop.create_task(self._relay(), name="wake-relay"))

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        with contextlib.suppress(RedisError, OSError):
            if await self._redis.get(self._keys.wake_relay) == self._worker_id.encode():
                await self._redis.delete(self._keys.wake_relay)  # let another worker relay at once

    # --- tokens -----------------------------------------------------------------------------------

    async def _take_tokens(self) -> None:
        outage = OutageLog(log, "wakeups_unavailable", "wakeups_available_again", level="warning")
        while True:
            await self._room.wait()  # a worker without a free slot leaves tokens to the others
            try:
                token = await cast(
                    Awaitable[list[bytes] | None],
                    self._redis.blpop([self._keys.wakeups], timeout=TOKEN_WAIT_S),
                )
            except (RedisError, OSError) as exc:
                outage.failed(exc)
                self._wake.set()  # poll until Redis is back
                await asyncio.sleep(1.0)
                continue
            outage.succeeded()
            if token is not None:
                # Wait for the claim this token asks for before blocking again: the claim goes out
                # first (both share the event loop), and the next token finds the room up to date.
                self._looked.clear()
                self._wake.set()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(LOOK_WAIT_S):
                        await self._looked.wait()
                await asyncio.sleep(self._busy_delay_s())

    # --- the relay --------------------------------------------------------------------------------

    async def _relay(self) -> None:
        outage = OutageLog(log, "wake_relay_unavailable", "wake_relay_available_again", level="warning")
        pubsub: PubSub | None = None
        try:
            while True:
                try:
                    lease: list[str | int] = [self._worker_id, RELAY_LEASE_MS]
                    if (pubsub is None and await self._redis.exists(self._keys.wake_relay)) or not (
                        await self._lease(keys=[self._keys.wake_relay], args=lease)
                    ):
                        await _close(pubsub)
                        pubsub = None
                        await asyncio.sleep(RELAY_RETRY_S)
                        continue
                    if pubsub is None:
                        if not await self._notifications_on():
                            await asyncio.sleep(NOTIFICATIONS_RECHECK_S)
                            continue
                        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                        await pubsub.subscribe(self._channel)
                        log.info("wake_relay_started", worker_id=self._worker_id)
                    await self._relay_for(pubsub, RELAY_RENEW_S)
                except (RedisError, OSError) as exc:
                    outage.failed(exc)
                    await _close(pubsub)
                    pubsub = None
                    await asyncio.sleep(1.0)
                    continue
                outage.succeeded()
        finally:
            await _close(pubsub)

    async def _notifications_on(self) -> bool:
        """Whether the server sends the queue's keyspace notifications (turned on if told to);
        True when ``CONFIG`` is refused (a managed Redis): the operator's word holds then."""
        try:
            config = await self._redis.config_get("notify-keyspace-events")
        except ResponseError:
            return True
        flags = str(config.get("notify-keyspace-events", ""))
        if "K" in flags and ("z" in flags or "A" in flags):
            return True
        if self._mode != "enable":
            if not self._said_off:
                self._said_off = True
                log.info(
                    "queue_notifications_off",
                    detail="jobs enqueued by plain arq wait for the poll; set notify-keyspace-events "
                    "Kz on the server, or worker.queue_notifications = 'enable'",
                )
            return False
        try:
            await self._redis.config_set("notify-keyspace-events", "".join(sorted(set(flags + "Kz"))))
        except ResponseError as exc:
            log.warning("queue_notifications_not_enabled", error=str(exc)[:120])
            return False
        return True

    async def _relay_for(self, pubsub: PubSub, seconds: float) -> None:
        """Wake one worker per ``zadd`` on the queue for ``seconds``: this one when it is idle and
        has looked at the queue since it last woke itself, else whoever takes a token."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            message = await pubsub.get_message(timeout=left)
            if message is None or message.get("data") != b"zadd":
                continue
            if self._looked.is_set() and self._idle():
                self._looked.clear()
                self._wake.set()
                self._on_relayed("here")
            else:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.rpush(self._keys.wakeups, b"1")
                    pipe.ltrim(self._keys.wakeups, -WAKEUPS_KEPT, -1)
                    await pipe.execute()
                self._on_relayed("token")


async def _close(pubsub: PubSub | None) -> None:
    if pubsub is not None:
        with contextlib.suppress(RedisError, OSError):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
