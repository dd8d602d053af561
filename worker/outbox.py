"""Everything a worker writes about a request, in order: batched by a writer thread, or from the
event loop while the worker is quiet.

Chunks are queued without waiting, and one writer thread sends whatever has accumulated as a single
pipeline, so a worker publishing for many streams pays one round trip per batch instead of one per
token, and no chunk can overtake another: they leave in the order they were queued. The final step
of a request (reply key, ledger, final event) is queued behind that request's chunks and awaited,
and runs as one Lua script so that the reply is written once and the ledger counted once.

The thread has a cost when a worker is nearly idle: each hand-over waits for the GIL while the event
loop runs (LiteLLM parsing the rest of the stream, its end-of-stream logging), a millisecond or more
per request. So the event loop also writes, on one connection of its own (``direct``):

- a request whose first write finds the worker quiet (``quiet()``: a few requests running) and the
  thread with nothing queued or in flight writes all its chunks and its final write there
  (``RequestWriter``), in order, without waiting for answers; under load the thread's batches are
  cheaper (one pipeline for many chunks, where the loop's connection sends each on its own);
- any other request's final write goes there too when the thread is idle at that moment (its chunks
  are all in Redis then).

A request keeps its path, so its writes never overtake each other; when that connection fails, the
thread takes over (what was sent on it is then in Redis or gone), with its retries.

With ``redis.min_replicas_ack`` > 0, a batch holding final writes ends with ``WAIT n timeout`` on
the same connection, and those writes are reported done only after it: a request lets go of its
lease only once that many replicas have its reply, so a failover to one of them keeps it. A WAIT
that confirms fewer is logged (``replica_ack_shortfall``) and counted, and the write still counts
as done: the primary has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.client import Pipeline as SyncPipeline
from redis.exceptions import NoScriptError, RedisError, ResponseError

from llm_pool.connections import out_of_memory
from llm_pool.logging import OutageLog, get_logger

log = get_logger(__name__)

FINALIZE_LUA = (files("worker") / "finalize.lua").read_text(encoding="utf-8")

# What ``Outbox.finish`` reports (``finalize.lua``'s return value).
DUPLICATE = 0  # the reply key existed: an earlier run had answered
WRITTEN = 1
EVENT_REFUSED = 2  # the reply is written, but Redis refused the final event (an ACL on the channel)
UNREAD_ANSWERS_MAX = 1000  # posted commands whose answers pile up before they are read


@dataclass(frozen=True)
class LedgerEntry:
    key: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    ttl_s: int
    tpm_key: str | None = None


@dataclass
class Final:
    """The last write of a request: reply key, then ledger, then the final event."""

    reply_key: str
    reply_json: bytes
    reply_ttl_s: int
    channel: str
    event_json: bytes
    ledger: LedgerEntry | None
    done: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(frozen=True)
class Publish:
    channel: str
    data: bytes


class Outbox:
    """Ordered, batched writer; one per worker process, on a thread of its own (and, for a quiet
    worker, the event loop's connection: ``writer()``).

    Under load the writes leave from a dedicated thread with a synchronous Redis connection, not
    from an asyncio task: a worker busy with LiteLLM runs event-loop iterations of hundreds of
    milliseconds under load, and a writer task would wait one such iteration per round trip
    (measured: 0.7 s per flush, 1.3 s from a chunk to its listener, with 100 streams). The thread
    only needs the GIL, which Python hands over every few milliseconds.
    """

    def __init__(
        self,
        redis: SyncRedis,
        max_batch: int = 1000,
        retry_delay_s: float = 0.2,
        *,
        min_replicas_ack: int = 0,
        replica_ack_timeout_ms: int = 1000,
        on_ack_shortfall: Callable[[int], None] | None = None,
        direct: Redis | None = None,
        quiet: Callable[[], bool] = lambda: True,
    ) -> None:
        """``min_replicas_ack``: replicas that must confirm a batch's final writes (``WAIT``) before
        they are reported done, within ``replica_ack_timeout_ms``; ``on_ack_shortfall(acknowledged)``
        is called (from the outbox's thread or the event loop) when fewer do. ``direct``: the event
        loop's client, for writes made from the loop while the thread is idle (none: always the
        thread); ``quiet()``: whether a request starting now may write from the loop."""
        self._redis = redis
        self._direct = _Line(direct) if direct is not None else None
        self._quiet = quiet
        self._min_replicas_ack = min_replicas_ack
        self._replica_ack_timeout_ms = replica_ack_timeout_ms
        self._on_ack_shortfall = on_ack_shortfall
        self._max_batch = max_batch
        self._retry_delay_s = retry_delay_s
        self._items: deque[Publish | Final] = deque()
        self._ready = threading.Condition()
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finalize = redis.register_script(FINALIZE_LUA)
        self._outage = OutageLog(log, "outbox_redis_unavailable", "outbox_redis_recovered")
        self._full = OutageLog(log, "outbox_redis_full", "outbox_redis_accepts_writes")

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    async def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued (for at most ``timeout_s``), then stop the thread."""
        if self._thread is None:
            return
        await asyncio.to_thread(self._idle.wait, timeout_s)
        with self._ready:
            self._stopping = True
            self._ready.notify()
        await asyncio.to_thread(self._thread.join, timeout_s)
        self._thread = None
        self._redis.close()
        if self._direct is not None:
            await self._direct.close()

    def _put(self, item: Publish | Final) -> None:
        with self._ready:
            self._items.append(item)
            self._idle.clear()
            self._ready.notify()

    def publish(self, channel: str, data: bytes) -> None:
        """Queue one pub-sub message; it leaves with the next batch."""
        self._put(Publish(channel, data))

    async def finish(self, final: Final) -> int:
        """Queue the final write and wait until Redis has it: ``WRITTEN``, ``DUPLICATE`` (the reply
        existed) or ``EVENT_REFUSED``. While Redis is out of memory the write is retried (the job
        keeps its lease meanwhile): a request that ran is never run again for want of memory.
        Raises the Redis error if Redis refuses the write for any other reason."""
        if self._direct is not None and self._idle.is_set() and not self._stopping:
            status = await self._finish_on(self._direct, final, wait=False)
            if status is not None:
                return status
        return await self._finish_on_thread(final)

    def writer(self) -> RequestWriter:
        """The writer of one request's chunks and final write (see the module's docstring)."""
        return RequestWriter(self)

    def _line_if_idle(self) -> _Line | None:
        """The event loop's connection, when a request may start on it: connected, the worker
        quiet, and nothing queued for or in flight on the thread."""
        line = self._direct
        if line is None or not line.connected or self._stopping:
            return None
        return line if self._idle.is_set() and self._quiet() else None

    async def _finish_on_thread(self, final: Final) -> int:
        self._put(final)
        return await asyncio.shield(final.done)

    async def _finish_on(self, line: _Line, final: Final, *, wait: bool) -> int | None:
        """The final write sent on the event loop's connection (``wait``: for a write in progress
        there, else give up at once); None if it did not go through (the thread then sends it
        again: ``finalize.lua`` writes a reply once, whatever the number of sends)."""
        commands: list[list[str | bytes | int | float]] = [self._final_command(final)]
        if self._min_replicas_ack > 0:
            commands.append(["WAIT", self._min_replicas_ack, self._replica_ack_timeout_ms])
        answers = await line.send(commands, wait=wait)
        if answers is None:
            return None
        if len(answers) > 1:
            self._check_acks(answers[1], 1)
        return int(answers[0])

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._items and not self._stopping:
                    self._idle.set()
                    self._ready.wait()
                if not self._items:
                    return
                batch = [self._items.popleft() for _ in range(min(len(self._items), self._max_batch))]
            try:
                self._send(batch)
            except Exception as exc:  # a bug must fail the waiters, not silently stop all writes
                log.exception("outbox_batch_failed")
                for item in batch:
                    if isinstance(item, Final):
                        self._resolve(item, exc)

    def _resolve(self, final: Final, result: object) -> None:
        def settle() -> None:
            if final.done.done():
                return
            if isinstance(result, BaseException):
                final.done.set_exception(result)
            else:
                final.done.set_result(result if isinstance(result, int) else WRITTEN)

        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(settle)

    def _send(self, batch: list[Publish | Final]) -> None:
        while True:
            confirm = self._min_replicas_ack > 0 and any(isinstance(item, Final) for item in batch)
            try:
                pipe = self._redis.pipeline(transaction=False)
                for item in batch:
                    if isinstance(item, Publish):
                        pipe.publish(item.channel, item.data)
                    else:
                        self._queue_final(pipe, item)
                if confirm:
                    # On the pipeline's connection: WAIT counts replicas that have its writes.
                    pipe.execute_command(  # type: ignore[no-untyped-call]
                        "WAIT", self._min_replicas_ack, self._replica_ack_timeout_ms
                    )
                results = pipe.execute(raise_on_error=False)
            except (RedisError, OSError) as exc:
                self._outage.failed(exc)
                # Chunks are best effort (a reconnecting listener reads the reply key); the final
                # writes are what callers wait for, so those are kept and retried.
                finals = [item for item in batch if isinstance(item, Final)]
                if not finals or self._stopping:
                    for final in finals:
                        self._resolve(final, exc)
                    return
                batch = list(finals)
                time.sleep(self._retry_delay_s)
                continue
            self._outage.succeeded()
            if confirm:
                self._check_acks(results.pop(), sum(isinstance(item, Final) for item in batch))
            refused: list[Publish | Final] = []
            full = False
            for item, result in zip(batch, results, strict=True):
                if isinstance(item, Final):
                    if isinstance(result, NoScriptError):
                        refused.append(item)  # the script did not run: load it, then send again
                    elif isinstance(result, RedisError) and out_of_memory(result) and not self._stopping:
                        refused.append(item)
                        full = True
                        self._full.failed(result)
                    else:
                        self._resolve(item, result)
            if not full:
                self._full.succeeded()
            if not refused:
                return
            batch = refused
            if full:
                time.sleep(self._retry_delay_s)
            else:
                self._load_finalize()

    def _load_finalize(self) -> None:
        with contextlib.suppress(RedisError, OSError):  # else the next attempt tells
            self._redis.script_load(FINALIZE_LUA)

    def _check_acks(self, answer: object, finals: int) -> None:
        """WAIT's answer: fewer replicas than asked (or a refused WAIT) is logged and counted."""
        wanted = self._min_replicas_ack
        if isinstance(answer, int) and answer >= wanted:
            return
        acknowledged = answer if isinstance(answer, int) else 0
        fields: dict[str, object] = {"acknowledged": acknowledged, "wanted": wanted}
        fields.update(timeout_ms=self._replica_ack_timeout_ms, final_writes=finals)
        if isinstance(answer, Exception):  # WAIT refused (an ACL without it, a replica)
            fields["error"] = f"{type(answer).__name__}: {answer}"[:200]
        log.warning("replica_ack_shortfall", **fields)
        if self._on_ack_shortfall is not None:
            self._on_ack_shortfall(acknowledged)

    def _queue_final(self, pipe: SyncPipeline, final: Final) -> None:
        # EVALSHA itself: redis-py's Script in a pipeline asks SCRIPT EXISTS first, one more round
        # trip per final write. A NOSCRIPT answer (a restarted or new primary) loads it (_send).
        pipe.execute_command(*self._final_command(final))  # type: ignore[no-untyped-call]

    def _final_command(self, final: Final) -> list[str | bytes | int | float]:
        """``finalize.lua``'s EVALSHA for ``final``."""
        ledger = final.ledger
        tpm_key = ledger.tpm_key if ledger else None
        keys = [final.reply_key, ledger.key if ledger else final.reply_key, tpm_key or final.reply_key]
        args: list[str | bytes | int | float] = [
            final.reply_json,
            final.reply_ttl_s,
            final.channel,
            final.event_json,
            ledger.ttl_s if ledger else 0,
            ledger.prompt_tokens if ledger else 0,
            ledger.completion_tokens if ledger else 0,
            f"{ledger.cost_usd:.12f}" if ledger else "0",
            "1" if ledger else "0",
            "1" if tpm_key else "0",
        ]
        return ["EVALSHA", self._finalize.sha, len(keys), *keys, *args]


class RequestWriter:
    """One request's writes, in the order made: its chunks (``publish``), then ``finish``.

    The first write picks the path: the event loop's connection when the worker is quiet and the
    thread has nothing queued or in flight, else the thread; the request keeps it, and moves to the
    thread only once that connection has failed.
    """

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._routed = False
        self._line: _Line | None = None

    @property
    def from_loop(self) -> bool:
        """Whether this request's writes go from the event loop (known after its first write)."""
        return self._line is not None

    def _route(self) -> None:
        if not self._routed:
            self._routed = True
            self._line = self._outbox._line_if_idle()

    async def publish(self, channel: str, data: bytes) -> None:
        """Send one pub-sub message (best effort: a listener that misses one reads the reply key)."""
        self._route()
        if self._line is not None:
            if await self._line.post(["PUBLISH", channel, data]):
                return
            self._line = None  # the connection failed: the thread from here on
        self._outbox.publish(channel, data)

    async def finish(self, final: Final) -> int:
        """As ``Outbox.finish``, after every chunk this writer sent."""
        self._route()
        if self._line is None:
            return await self._outbox.finish(final)
        status = await self._outbox._finish_on(self._line, final, wait=True)
        if status is not None:
            return status
        # Everything sent on the connection was answered (the answer was an error: a full Redis,
        # a missing script...) or is gone with it: the thread's retries take over.
        return await self._outbox._finish_on_thread(final)


class _Line:
    """One connection of the event loop's client, held for writes made from the loop.

    A command through the client's pool yields to the event loop once before it is sent (redis-py's
    check that a pooled connection has no stray data waits for a loop iteration with hiredis): at
    the end of a stream that iteration runs LiteLLM's end-of-stream logging first, about a
    millisecond. A held connection sends at once. ``post`` writes a command whose answer nobody
    needs (a chunk); ``send`` writes commands and reads their answers, after the answers of
    everything posted before. Any failure drops the connection; the next ``send`` takes a fresh one
    (after a failover: to the new primary).
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._connection: AbstractConnection | None = None
        self._lock = asyncio.Lock()  # one reader of answers at a time
        self._unread = 0  # answers to posted commands not read yet

    @property
    def connected(self) -> bool:
        return self._connection is not None

    async def post(self, command: list[str | bytes | int | float]) -> bool:
        """Write ``command`` now, without waiting for its answer; False if the connection failed."""
        connection = self._connection
        if connection is None or not connection.is_connected:
            await self._drop()  # redis-py would connect again, and the unread answers would be lost
            return False
        try:
            await connection.send_packed_command(connection.pack_command(*command), check_health=False)
        except (RedisError, OSError):
            await self._drop()
            return False
        except asyncio.CancelledError:
            await asyncio.shield(self._drop())  # the command may be half sent
            raise
        self._unread += 1
        if self._unread >= UNREAD_ANSWERS_MAX:
            return await self.send([]) is not None  # read what has piled up (a long stream)
        return True

    async def send(
        self, commands: list[list[str | bytes | int | float]], *, wait: bool = True
    ) -> list[Any] | None:
        """Write ``commands`` and read their answers; None if they did not all succeed, or (without
        ``wait``) if another ``send`` is reading."""
        if not wait and self._lock.locked():
            return None
        async with self._lock:
            try:
                if self._connection is not None and not self._connection.is_connected:
                    await self._drop()  # its unread answers are gone with it
                if self._connection is None:
                    self._connection = await self._redis.connection_pool.get_connection()
                connection = self._connection
                unread, self._unread = self._unread, 0
                if commands:
                    await connection.send_packed_command(
                        connection.pack_commands(commands), check_health=False
                    )
                for _ in range(unread):
                    with contextlib.suppress(ResponseError):  # a refused PUBLISH: chunks are best effort
                        await connection.read_response()
                return [await connection.read_response() for _ in commands]
            except (RedisError, OSError):
                await self._drop()
                return None
            except asyncio.CancelledError:
                await asyncio.shield(self._drop())  # answers may still be on their way
                raise

    async def close(self) -> None:
        await self._drop()

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        self._unread = 0
        if connection is not None:
            with contextlib.suppress(RedisError, OSError):
                await connection.disconnect()
            await self._redis.connection_pool.release(connection)
