"""One pub-sub connection shared by every waiter of a client (after SAQ's multiplexer).

It owns the subscriptions and tells their waiters the truth about them:

- ``subscribe(channel, timeout_s)`` yields once Redis has confirmed the subscription, so a job
  enqueued after it cannot publish into the void. A refused SUBSCRIBE (ACL ``NOPERM``) raises
  ``SubscribeRefused`` in the waiters of that channel only; no confirmation in time, ``ReplyTimeout``;
  no connection, ``PoolUnavailable``.
- One reader task routes messages to per-channel queues. When the connection drops, every live
  channel's queues get ``Signal.DROPPED`` (messages may have been lost), and once the channel is
  subscribed again on the new connection, ``Signal.RESUBSCRIBED``: the waiter reads the reply key
  then, since pub-sub keeps nothing for late listeners.

Redis answers SUBSCRIBE commands in order, and its refusal does not name the channel, so the
multiplexer sends one channel per SUBSCRIBE and remembers the unanswered ones in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection, ConnectionPool
from redis.exceptions import RedisError, ResponseError

from llm_pool.errors import PoolUnavailable, ReplyTimeout, SubscribeRefused, redis_address, refusal_reason
from llm_pool.logging import OutageLog, get_logger
from llm_pool.tasks import cancel_and_wait

log = get_logger(__name__)


class Signal(enum.Enum):
    """What a subscriber's queue holds besides messages."""

    DROPPED = "dropped"  # the connection dropped: messages published since may be lost
    RESUBSCRIBED = "resubscribed"  # the channel is subscribed again: nothing published from now is lost


Item = bytes | Signal


@dataclass
class _Channel:
    # Resolved when Redis answers the channel's SUBSCRIBE: None when subscribed, else the refusal.
    answer: asyncio.Future[str | None]
    queues: list[asyncio.Queue[Item]] = field(default_factory=list)
    dropped: bool = False

    @property
    def live(self) -> bool:
        return self.answer.done() and self.answer.result() is None


class _PubSub(PubSub):
    """redis-py's PubSub, except that after a reconnect the multiplexer says what to re-subscribe."""

    def __init__(self, pool: ConnectionPool, reconnected: Callable[[], list[str]]) -> None:
        super().__init__(pool)
        self._reconnected = reconnected

    async def on_connect(self, connection: Connection) -> None:
        self.channels = {}
        self.pending_unsubscribe_channels = set()
        for channel in self._reconnected():
            await self.subscribe(channel)


class Multiplexer:
    def __init__(self, redis: Redis, private_channel: str) -> None:
        self._redis = redis
        # Subscribed while no waiter is, so Redis's idle-client timeout never closes the connection.
        self._private: str | None = private_channel
        self._pubsub: _PubSub | None = None
        self._channels: dict[str, _Channel] = {}
        self._unanswered: deque[str] = deque()  # channels of SUBSCRIBEs sent, in order
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def subscribe(self, channel: str, timeout_s: float) -> AsyncIterator[asyncio.Queue[Item]]:
        """Yield a queue of the channel's messages and signals; the subscription is live when it yields."""
        queue: asyncio.Queue[Item] = asyncio.Queue()
        deadline = asyncio.get_running_loop().time() + timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                state = await self._join(channel, queue)
        except TimeoutError:
            raise ReplyTimeout(f"no SUBSCRIBE {channel} sent within {timeout_s:.1f} s") from None
        except (RedisError, OSError) as exc:
            raise PoolUnavailable(redis_address(self._redis), exc, f"SUBSCRIBE {channel} failed") from exc
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    refusal = await asyncio.shield(state.answer)
            except TimeoutError:
                raise ReplyTimeout(
                    f"Redis did not confirm SUBSCRIBE {channel} within {timeout_s:.1f} s; nothing enqueued"
                ) from None
            if refusal is not None:
                raise SubscribeRefused(channel, refusal)
            yield queue
        finally:
            await self._leave(channel, queue)

    async def close(self) -> None:
        await cancel_and_wait(self._reader)
        self._reader = None
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            self._pubsub = None

    # --- subscriptions ------------------------------------------------------------------------

    async def _join(self, channel: str, queue: asyncio.Queue[Item]) -> _Channel:
        async with self._lock:
            pubsub = await self._connect()
            # Reconnect first if need be: a reconnect re-subscribes every channel already known.
            await pubsub.connect()  # type: ignore[no-untyped-call]
            state = self._channels.get(channel)
            if state is None:
                state = _Channel(asyncio.get_running_loop().create_future())
                self._channels[channel] = state
                self._unanswered.append(channel)
                try:
                    await pubsub.subscribe(channel)
                except BaseException:
                    del self._channels[channel]
                    with contextlib.suppress(ValueError):
                        self._unanswered.remove(channel)
                    raise
            state.queues.append(queue)
            return state

    async def _leave(self, channel: str, queue: asyncio.Queue[Item]) -> None:
        async with self._lock:
            state = self._channels.get(channel)
            if state is None or queue not in state.queues:
                return
            state.queues.remove(queue)
            if state.queues:
                return
            del self._channels[channel]
            if self._pubsub is not None and not (state.answer.done() and state.answer.result() is not None):
                # If the connection is gone, the subscription went with it.
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.unsubscribe(channel)

    async def _connect(self) -> _PubSub:
        if self._pubsub is None:
            pubsub = _PubSub(self._redis.connection_pool, self._reconnected)
            try:
                if self._private is not None:
                    self._unanswered.append(self._private)
                    await pubsub.subscribe(self._private)
                else:
                    await pubsub.connect()  # type: ignore[no-untyped-call]
            except BaseException:
                self._unanswered.clear()
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise
            self._pubsub = pubsub
            self._reader = asyncio.get_running_loop().create_task(self._read(), name="pubsub-reader")
        return self._pubsub

    def _reconnected(self) -> list[str]:
        """On a new connection (any task may have opened it): the channels to subscribe again."""
        self._dropped()
        self._unanswered.clear()  # answers to the old connection's commands will never come
        channels = [name for name, state in self._channels.items() if not state.answer.done()]
        if self._private is not None:
            channels.insert(0, self._private)
        self._unanswered.extend(channels)
        return channels

    def _dropped(self) -> None:
        for state in self._channels.values():
            if state.live:
                state.answer = asyncio.get_running_loop().create_future()
                state.dropped = True
                for queue in state.queues:
                    queue.put_nowait(Signal.DROPPED)

    # --- the reader -------------------------------------------------------------------------

    async def _read(self) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        outage = OutageLog(log, "pubsub_connection_lost", "pubsub_connection_restored", level="warning")
        reconnect = False
        while True:
            try:
                if reconnect:  # under the lock, so that no SUBSCRIBE is sent meanwhile
                    async with self._lock:
                        await pubsub.connect()  # type: ignore[no-untyped-call]
                    reconnect = False
                message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=5.0)
            except ResponseError as exc:  # the answer to a SUBSCRIBE: refused
                self._refused(exc)
                continue
            except (RedisError, OSError) as exc:
                self._dropped()
                reconnect = True
                delay = 0.2 if outage.failing else 0.0  # reconnect at once, then every 0.2 s
                outage.failed(exc)
                await asyncio.sleep(delay)
                continue
            outage.succeeded()
            if message is None:
                continue
            raw = message["channel"]
            channel = raw.decode() if isinstance(raw, bytes) else str(raw)
            if message["type"] == "subscribe":
                self._confirmed(channel)
            elif message["type"] == "message":
                state = self._channels.get(channel)
                for queue in state.queues if state is not None else ():
                    queue.put_nowait(message["data"])

    def _confirmed(self, channel: str) -> None:
        with contextlib.suppress(ValueError):
            self._unanswered.remove(channel)  # the first occurrence: the oldest SUBSCRIBE
        state = self._channels.get(channel)
        if state is None or state.answer.done():
            return
        state.answer.set_result(None)
        if state.dropped:
            state.dropped = False
            for queue in state.queues:
                queue.put_nowait(Signal.RESUBSCRIBED)

    def _refused(self, exc: ResponseError) -> None:
        if not self._unanswered:
            log.warning("pubsub_unexpected_error", error=type(exc).__name__)
            return
        channel = self._unanswered.popleft()
        reason = refusal_reason(exc)
        if channel == self._private:
            self._private = None
            log.warning("pubsub_private_channel_refused", channel=channel, reason=reason)
            return
        state = self._channels.get(channel)
        if state is not None and not state.answer.done():
            state.answer.set_result(reason)
            if state.dropped:  # its waiters had their answer; they read the reply key instead
                log.warning("pubsub_resubscribe_refused", channel=channel, reason=reason)
