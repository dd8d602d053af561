"""``LLMPool``: the caller's side of contract v1 (the orchestrator's client); docs/api.md documents it.

It owns "every request is answered exactly once" as the caller sees it. Every wait blocks on Redis
pub-sub, never on a sleep, and is bounded by the request's budget: the client subscribes to the
request's channel (confirmed by Redis) before it enqueues, and ends on the request's own final
event or on the reply key, which it reads whenever events may have been missed (after a
re-subscription, while a stream has a gap, and when the budget runs out). ``_StreamTracker`` decides
which events reach the caller, so a stream is never handed back truncated and marked ``done``.
Failures are the typed errors of ``llm_pool.errors``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from types import TracebackType
from typing import Any, TypedDict, TypeVar

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, RedisError
from typing_extensions import Unpack

from llm_pool import pool_state
from llm_pool.connections import async_redis
from llm_pool.enqueue import Enqueuer

# Re-exported: callers imported these two from here before llm_pool.errors existed.
from llm_pool.errors import InvalidRequestError as InvalidRequestError
from llm_pool.errors import PoolUnavailable, redis_address
from llm_pool.errors import ReplyTimeout as ReplyTimeout
from llm_pool.keys import MAX_REQUEST_ID_CHARS, Keys
from llm_pool.logging import get_logger
from llm_pool.multiplexer import Item, Multiplexer, Signal
from llm_pool.schemas import (
    ChunkEvent,
    CompletionRequest,
    DoneEvent,
    ErrorEvent,
    ErrorReply,
    OkReply,
    ResetEvent,
    describe_validation_error,
    final_event,
    limit_violation,
    parse_event,
    parse_reply,
)
from llm_pool.serialization import json_problem
from llm_pool.settings import Settings, load_settings

# The public API (docs/api.md); the rest of the module is internal.
__all__ = [
    "CALL_TIMEOUT_S",
    "WAIT_MARGIN_S",
    "Event",
    "InvalidRequestError",
    "LLMPool",
    "Reply",
    "ReplyTimeout",
    "RequestOptions",
]

Reply = OkReply | ErrorReply
Event = ChunkEvent | DoneEvent | ErrorEvent | ResetEvent
T = TypeVar("T")

log = get_logger(__name__)

# How long past the request's own deadline (its timeout_s) a caller waits for its final event.
WAIT_MARGIN_S = 10.0
# The bound of the single-command calls, reply() and cancel().
CALL_TIMEOUT_S = 10.0
# While a stream has a gap, the reply key is read this often (and on every re-subscription).
RECHECK_S = 1.0
# A read of the reply key may take this long even when the budget has run out (and so may the
# look at the request's state and the workers that ReplyTimeout reports).
LAST_READ_S = 1.0


class RequestOptions(TypedDict, total=False):
    """The optional arguments of ``complete``, ``stream`` and ``submit`` (contract section 1.2).

    ``tools``, ``tool_choice``: OpenAI-style tool definitions and choice. ``channel``: where events
    go instead of ``P:stream:{request_id}`` (must match ``worker.allowed_channels``). ``params``:
    sampling parameters (``temperature``, ``max_tokens``, ...). ``timeout_s``: the request's
    deadline, counted from its enqueue (at most ``worker.max_timeout_s``; default
    ``worker.default_timeout_s``). ``metadata``: string pairs echoed in the reply. ``request_id``:
    1 to 128 characters (default a new UUID hex); reusing one is idempotent.
    """

    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    channel: str
    params: dict[str, Any]
    timeout_s: float
    metadata: dict[str, str]
    request_id: str


class _StreamTracker:
    """Which of a channel's messages a caller gets, and what it is still owed at the end.

    No I/O. ``accept`` takes each message and returns the event to yield, if any: other requests'
    events and garbage are ignored (counted in ``ignored``). After a gap (``drop()``: the connection
    dropped; or a ``seq`` that is not the next one) no chunk is passed on until the end, and
    ``finish(reply)`` turns the reply key into what the caller missed: the rest of the text when the
    reply continues what it was shown, else a ``reset`` and the whole text; then the final event.
    """

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.gap = False
        self.final_seen = False
        self.events = 0  # the request's own events
        self.ignored = 0  # other requests' events and messages that are not events
        self.first_ignored = ""  # what the first ignored message was (never its text)
        self._shown: list[str] = []  # text passed on since the last reset
        self._next_seq = 0

    def drop(self) -> None:
        self.gap = True

    def accept(self, raw: bytes) -> Event | None:
        try:
            event = parse_event(raw)
        except ValidationError:
            self._ignore("a message that is not an event")
            return None
        if event.request_id != self.request_id:
            self._ignore(f"{event.type} of request {event.request_id[:64]!r}")
            return None
        self.events += 1
        if isinstance(event, DoneEvent | ErrorEvent):
            self.final_seen = True
        elif self.gap:
            pass
        elif isinstance(event, ResetEvent):
            self._shown, self._next_seq = [], 0
        elif event.seq != self._next_seq:
            self.gap = True
        else:
            self._shown.append(event.text)
            self._next_seq += 1
        return None if self.gap else event

    def finish(self, reply: Reply) -> list[Event]:
        """The events that end the stream, from the reply key."""
        if isinstance(reply, ErrorReply):
            return [final_event(reply)]
        shown = "".join(self._shown)
        missed: list[Event] = []
        if reply.content.startswith(shown):
            if rest := reply.content[len(shown) :]:
                missed.append(ChunkEvent(text=rest, request_id=self.request_id, seq=self._next_seq))
        else:
            missed.append(ResetEvent(request_id=self.request_id, attempt=reply.attempt))
            if reply.content:
                missed.append(ChunkEvent(text=reply.content, request_id=self.request_id, seq=0))
        return [*missed, final_event(reply)]

    def _ignore(self, what: str) -> None:
        self.ignored += 1
        self.first_ignored = self.first_ignored or what


class _Wait:
    """One request's budget, and what its caller has seen so far (for ``ReplyTimeout``)."""

    def __init__(self, request_id: str, channel: str, reply_key: str, budget_s: float) -> None:
        self.request_id = request_id
        self.channel = channel
        self.reply_key = reply_key
        self.budget_s = budget_s
        self.started = time.monotonic()
        self.subscribed = False
        self.enqueued: bool | None = None  # None: waiting on a request enqueued by someone else
        self.drops = 0
        self.reply_reads = 0
        self.reply: Reply | None = None

    def remaining(self) -> float:
        return self.started + self.budget_s - time.monotonic()

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0

    async def next(self, queue: asyncio.Queue[Item], gap: bool) -> Item | None:
        """The next message or signal; None when it is time to read the reply key."""
        remaining = self.remaining()
        if remaining <= 0:
            return None
        try:
            return await asyncio.wait_for(queue.get(), min(remaining, RECHECK_S) if gap else remaining)
        except TimeoutError:
            return None

    def describe(self, tracker: _StreamTracker, reply_key_state: str) -> str:
        enqueued = {None: "enqueued beforehand", True: "enqueued", False: "not enqueued"}[self.enqueued]
        return (
            f"request {self.request_id}: no reply after {time.monotonic() - self.started:.1f} s "
            f"(budget {self.budget_s:.1f} s); subscribed to {self.channel}: "
            f"{'yes' if self.subscribed else 'no'}; {enqueued}; {tracker.events} events received "
            f"({tracker.ignored} ignored); pub-sub connection dropped {self.drops} time(s); "
            f"reply key {self.reply_key} read {self.reply_reads} time(s): {reply_key_state}"
        )


class LLMPool:
    """The orchestrator's client of the pool (contract v1): see docs/api.md.

    ``async with LLMPool() as pool: reply = await pool.complete("quality", messages, tenant_id=...)``.
    One instance serves any number of concurrent tasks of one event loop: it holds one Redis
    connection pool for commands and one shared pub-sub connection. It connects on first use.

    Public methods: ``complete``, ``stream``, ``submit``, ``wait``, ``reply``, ``cancel``, ``close``
    (and ``async with``); the ``keys`` property names the pool's Redis keys and channels. Every
    failure is a ``PoolError``: ``InvalidRequestError`` (nothing enqueued), ``SubscribeRefused``
    (nothing enqueued), ``PoolUnavailable`` (Redis unreachable or refusing), ``ReplyTimeout`` (no
    final state within the budget). A request that ends in error is not an exception: it is an
    ``ErrorReply`` (or an ``error`` event).

    Budget of a call that waits (``complete``, ``stream``, ``wait``; ``submit`` for its enqueue):
    the request's ``timeout_s`` (default ``worker.default_timeout_s``) plus ``WAIT_MARGIN_S``
    (10 s), counted from the call; it bounds the SUBSCRIBE confirmation, the enqueue and the wait
    together. The worker ends the request with a ``timeout`` reply once ``timeout_s`` has passed
    since the enqueue, so ``ReplyTimeout`` means no worker answered at all within the margin.
    """

    def __init__(self, settings: Settings | None = None, *, redis_url: str | None = None) -> None:
        """``settings``: default ``load_settings()`` (settings.toml, ``LLM_POOL_SETTINGS``, env;
        raises ``SettingsError``). ``redis_url`` replaces ``redis.url`` (with Sentinels: its db and
        credentials). Nothing is connected yet."""
        self._settings = settings or load_settings()
        self._keys = Keys(self._settings.redis.key_prefix)
        section = self._settings.redis
        if redis_url:
            section = section.model_copy(update={"url": redis_url})
        self._redis: Redis = async_redis(section)
        self._address = redis_address(self._redis)
        self._mux = Multiplexer(self._redis, self._keys.client_channel(uuid.uuid4().hex))
        self._enqueuer = Enqueuer(self._redis, self._keys)

    @property
    def keys(self) -> Keys:
        """The names of the pool's keys and channels under ``redis.key_prefix``, e.g.
        ``pool.keys.stream(request_id)`` (a request's default channel) or ``pool.keys.reply(id)``."""
        return self._keys

    async def __aenter__(self) -> LLMPool:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the pub-sub connection and the connection pool; never raises for an absent Redis.
        Requests already enqueued carry on in the pool."""
        await self._mux.close()
        await self._redis.aclose()

    # --- submitting -----------------------------------------------------------------------------

    async def complete(
        self, model: str, messages: list[dict[str, Any]], tenant_id: str, **options: Unpack[RequestOptions]
    ) -> Reply:
        """Run one request (job ``complete``: no chunks) and return its reply.

        ``model`` is a group (``quality``, ``fast``), ``messages`` OpenAI-style messages,
        ``tenant_id`` a UUID; ``options`` are ``RequestOptions``. Subscribes to the request's channel,
        enqueues, and waits for its final event, within the budget (class docstring). Returns an
        ``OkReply`` or an ``ErrorReply`` (``.error.code``: contract section 2). With a
        ``request_id`` that already has a reply, returns that reply and enqueues nothing.

        Raises ``InvalidRequestError``, ``SubscribeRefused``, ``PoolUnavailable``, ``ReplyTimeout``.
        Cancelling the calling task stops the wait, not the request (use ``cancel``).
        """
        request_id, request = self._build_request(model, messages, tenant_id, **options)
        wait = self._wait(request_id, self._channel_of(request_id, request), self._wait_budget_s(request))
        return await self._reply_after(wait, (request, False))

    async def stream(
        self, model: str, messages: list[dict[str, Any]], tenant_id: str, **options: Unpack[RequestOptions]
    ) -> AsyncGenerator[Event, None]:
        """Run one request as a stream (job ``complete_stream``) and yield its events as they arrive.

        Arguments as ``complete``. Yields ``ChunkEvent``s (``seq`` from 0), possibly ``ResetEvent``s
        (discard the text so far), and ends with exactly one ``DoneEvent`` or ``ErrorEvent``; the
        chunks' text after the last reset is the reply's ``content``. After a gap (a dropped
        connection, a skipped ``seq``) no chunk is yielded until the request ends; then the text the
        caller missed comes from the reply key: one chunk with the rest, or a ``reset`` and one
        chunk with the whole text. Every event carries ``request_id``.

        Same budget and exceptions as ``complete``; they are raised from the iteration. Breaking out
        of the loop does not stop the request: it runs to its end (reply key, ledger) unless you
        ``cancel(event.request_id)``. The channel is unsubscribed when the generator is closed: at
        once with ``contextlib.aclosing(pool.stream(...))``, otherwise when it is garbage-collected.
        """
        request_id, request = self._build_request(model, messages, tenant_id, **options)
        wait = self._wait(request_id, self._channel_of(request_id, request), self._wait_budget_s(request))
        async for event in self._events(wait, (request, True)):
            yield event

    async def submit(
        self,
        model: str,
        messages: list[dict[str, Any]],
        tenant_id: str,
        *,
        stream: bool = False,
        **options: Unpack[RequestOptions],
    ) -> str:
        """Enqueue without waiting (``stream=True``: job ``complete_stream``); return the request id.

        Arguments as ``complete``. Read the result later with ``wait`` (or ``reply``); a streamed
        request's chunks go to its channel whether anyone listens or not (subscribe first, e.g. from
        a WebSocket handler, to see them). Enqueueing an id that is already known is a no-op.

        Raises ``InvalidRequestError``, ``PoolUnavailable``, and ``ReplyTimeout`` if Redis does not
        answer the enqueue within the budget.
        """
        request_id, request = self._build_request(model, messages, tenant_id, **options)
        wait = self._wait(request_id, self._channel_of(request_id, request), self._wait_budget_s(request))
        await self._bounded(wait, "enqueueing", self._enqueue(request_id, request, stream))
        return request_id

    def validate(
        self, model: str, messages: list[dict[str, Any]], tenant_id: str, **options: Unpack[RequestOptions]
    ) -> str:
        """Check a request exactly as ``complete``, ``stream`` and ``submit`` will, touching nothing;
        return its request id (``options["request_id"]`` or a new one). Raises ``InvalidRequestError``.
        For callers that must refuse a request before they commit to an answer (the HTTP front door
        answers 400 before it starts a stream)."""
        return self._build_request(model, messages, tenant_id, **options)[0]

    # --- waiting, reading, cancelling -------------------------------------------------------------

    async def wait(
        self, request_id: str, *, channel: str | None = None, timeout_s: float | None = None
    ) -> Reply:
        """Block until the request's final state, then return its reply.

        ``channel``: the request's own ``channel`` if it was given one (default
        ``P:stream:{request_id}``). ``timeout_s``: the whole wait, no margin added (default
        ``worker.default_timeout_s`` + ``WAIT_MARGIN_S``; pass the request's ``timeout_s`` plus a
        margin if it had a longer one). Reads the reply key right after subscribing, so a request
        that already finished returns at once.

        Raises ``ReplyTimeout`` (saying what it saw: the request queued, running or unknown, and
        whether any worker is alive), ``PoolUnavailable``, ``SubscribeRefused``.
        """
        budget = timeout_s if timeout_s is not None else self._wait_budget_s(None)
        wait = self._wait(request_id, channel or self._keys.stream(request_id), budget)
        return await self._reply_after(wait, None)

    async def reply(self, request_id: str) -> Reply | None:
        """The reply key's content; None while the request has no final state, and for an unknown
        id or one whose reply expired (``worker.reply_ttl_s``). One GET, bounded by
        ``CALL_TIMEOUT_S``; raises ``PoolUnavailable``."""
        return await self._call(f"reading {self._keys.reply(request_id)}", self._read_reply(request_id))

    async def cancel(self, request_id: str) -> bool:
        """Ask the pool to stop a request (contract section 5); True if it was queued or running.

        Sets ``P:cancel:{request_id}`` (expires after 600 s) only when the request is in the queue
        (queued, or running on a worker): a queued one ends with ``cancelled`` without reaching a
        provider, a running one within about 0.25 s. Returns False, writing nothing, for an unknown
        id (never enqueued, or its reply expired) or a request that already finished. Wait for the
        ``cancelled`` reply with ``wait``. Bounded by ``CALL_TIMEOUT_S``; raises ``PoolUnavailable``.
        """
        found = await self._call(
            f"cancelling {request_id}", pool_state.cancel(self._redis, self._keys, request_id)
        )
        return found.state in ("queued", "running")

    # --- building and enqueueing ------------------------------------------------------------

    def _build_request(
        self, model: str, messages: list[dict[str, Any]], tenant_id: str, **options: Unpack[RequestOptions]
    ) -> tuple[str, CompletionRequest]:
        """Validate a request as the worker will; raises ``InvalidRequestError``."""
        fields: dict[str, Any] = {k: v for k, v in options.items() if k != "request_id"}
        request_id = options.get("request_id") or uuid.uuid4().hex
        if not 0 < len(request_id) <= MAX_REQUEST_ID_CHARS:
            raise InvalidRequestError(f"request_id: must be 1 to {MAX_REQUEST_ID_CHARS} characters")
        raw = {"model": model, "messages": messages, "tenant_id": tenant_id, **fields}
        problem = json_problem(raw)
        if problem is not None:
            raise InvalidRequestError(problem.replace("the job", "the request", 1))
        try:
            request = CompletionRequest.model_validate(raw)
        except ValidationError as exc:
            raise InvalidRequestError(describe_validation_error(exc)) from None
        limits = self._settings.worker
        if request.channel is not None and not self._keys.channel_allowed(
            request.channel, limits.allowed_channels
        ):
            patterns = ", ".join(limits.allowed_channels)
            raise InvalidRequestError(
                f"channel: not an allowed channel (worker.allowed_channels: {patterns})"
            )
        too_big = limit_violation(request, limits.max_messages, limits.max_tools)
        if too_big is None:
            size = len(request.model_dump_json(exclude_none=True))
            if size > limits.max_payload_bytes:
                too_big = f"the request is {size} bytes; the limit is {limits.max_payload_bytes}"
        if too_big is not None:
            raise InvalidRequestError(too_big)
        return request_id, request

    def _channel_of(self, request_id: str, request: CompletionRequest) -> str:
        return request.channel or self._keys.stream(request_id)

    async def _enqueue(self, request_id: str, request: CompletionRequest, stream: bool) -> Reply | None:
        """Enqueue (a no-op if the id is known); the reply if the request had already finished.

        With ``redis.min_replicas_ack`` > 0, returns only after ``WAIT`` on the enqueue's own
        connection: fewer replicas than asked within ``redis.replica_ack_timeout_ms`` is one
        warning, and the request stands (the primary has it)."""
        function = "complete_stream" if stream else "complete"
        argument = request.model_dump(mode="json", exclude_none=True)
        wanted = self._settings.redis.min_replicas_ack
        if wanted <= 0:
            existing = await self._enqueuer.enqueue(function, request_id, argument)
            return parse_reply(existing) if existing is not None else None
        # WAIT counts the replicas that have this connection's writes: one connection for both.
        async with self._redis.client() as connection:
            existing = await Enqueuer(connection, self.keys).enqueue(function, request_id, argument)
            if existing is not None:
                return parse_reply(existing)
            timeout_ms = self._settings.redis.replica_ack_timeout_ms
            answer = await connection.execute_command("WAIT", wanted, timeout_ms)  # type: ignore[no-untyped-call]
            acknowledged = int(answer)
        if acknowledged < wanted:
            log.warning(
                "replica_ack_shortfall",
                request_id=request_id,
                acknowledged=acknowledged,
                wanted=wanted,
                timeout_ms=timeout_ms,
                detail="enqueued on the primary; a failover now could lose it",
            )
        return None

    def _wait_budget_s(self, request: CompletionRequest | None) -> float:
        timeout = request.timeout_s if request and request.timeout_s else None
        return (timeout or self._settings.worker.default_timeout_s) + WAIT_MARGIN_S

    def _wait(self, request_id: str, channel: str, budget_s: float) -> _Wait:
        return _Wait(request_id, channel, self._keys.reply(request_id), budget_s)

    async def _read_reply(self, request_id: str) -> Reply | None:
        raw = await self._redis.get(self._keys.reply(request_id))
        return parse_reply(raw) if raw is not None else None

    async def _reply_after(self, wait: _Wait, enqueue: tuple[CompletionRequest, bool] | None) -> Reply:
        async for _ in self._events(wait, enqueue):
            pass
        return wait.reply if wait.reply is not None else await self._reply_of_final_event(wait)

    async def _events(
        self, wait: _Wait, enqueue: tuple[CompletionRequest, bool] | None
    ) -> AsyncIterator[Event]:
        tracker = _StreamTracker(wait.request_id)
        async with self._mux.subscribe(wait.channel, wait.remaining()) as queue:
            wait.subscribed = True
            if enqueue is not None:
                wait.enqueued = False
                reply = await self._bounded(wait, "enqueueing", self._enqueue(wait.request_id, *enqueue))
                wait.enqueued = True
            else:
                reply = await self._bounded(wait, "reading the reply key", self._read_reply(wait.request_id))
            warned = False
            while reply is None:
                item = await wait.next(queue, tracker.gap)
                if item is Signal.DROPPED:
                    tracker.drop()
                    wait.drops += 1
                elif item is None or item is Signal.RESUBSCRIBED:
                    reply = await self._check_reply(wait, tracker)
                else:
                    event = tracker.accept(item)
                    if tracker.ignored and not warned:
                        warned = True
                        log.warning(
                            "foreign_events_ignored",
                            request_id=wait.request_id,
                            channel=wait.channel,
                            first=tracker.first_ignored,
                        )
                    if event is not None:
                        yield event
                    if tracker.final_seen:
                        if event is not None:
                            return  # the final event itself; the reply key is read by whoever needs it
                        reply = await self._reply_of_final_event(wait)
        wait.reply = reply
        for event in tracker.finish(reply):
            yield event

    async def _reply_of_final_event(self, wait: _Wait) -> Reply:
        """The reply key, written before the final event was published (contract section 3)."""
        reply = await self._bounded(wait, "reading the reply key", self._read_reply(wait.request_id))
        if reply is None:
            raise ReplyTimeout(f"request {wait.request_id}: final event seen but {wait.reply_key} is gone")
        return reply

    async def _check_reply(self, wait: _Wait, tracker: _StreamTracker) -> Reply | None:
        """The reply key, when events may have been missed; at the budget's end, the error instead."""
        try:
            async with asyncio.timeout(max(wait.remaining(), LAST_READ_S)):
                reply = await self._read_reply(wait.request_id)
        except (RedisError, OSError) as exc:
            if not wait.expired:
                return None  # Redis may be back within the budget
            raise PoolUnavailable(self._address, exc, wait.describe(tracker, "unreadable")) from exc
        wait.reply_reads += 1
        if reply is None and wait.expired:
            found, situation = await self._situation(wait.request_id)
            if found is not None:
                return found  # it finished while we looked
            raise ReplyTimeout(f"{wait.describe(tracker, 'absent')}; {situation}")
        return reply

    async def _situation(self, request_id: str) -> tuple[Reply | None, str]:
        """For ``ReplyTimeout``: where the request is and whether any worker is alive for the queue
        (at most ``LAST_READ_S``); the reply instead, if it has just been written."""
        queue = self._keys.queue
        try:
            async with asyncio.timeout(LAST_READ_S):
                found = await pool_state.look_up(self._redis, self._keys, request_id)
        except (RedisError, OSError, TimeoutError) as exc:
            where = f"its state could not be read ({type(exc).__name__})"
        else:
            if found.reply is not None:
                return parse_reply(found.reply), ""
            where = {
                "queued": f"it is still waiting in {queue}, not taken by any worker",
                "running": "a worker holds it (arq:in-progress is set) but has not finished it",
                "unknown": f"it is neither in {queue} nor answered (never enqueued here, or removed)",
            }[found.state]
        try:
            async with asyncio.timeout(LAST_READ_S):
                beats = await pool_state.live_workers(self._redis, self._keys)
            workers = [w for w in beats if w.queue == queue]
        except NoPermissionError:
            alive = "whether a worker is alive is unknown (the Redis user may not SCAN heartbeat keys)"
        except (RedisError, OSError, TimeoutError) as exc:
            alive = f"whether a worker is alive is unknown ({type(exc).__name__})"
        else:
            if not workers:
                alive = (
                    f"no worker is alive for {queue} (no {self._keys.heartbeat_pattern} key): "
                    "start one (python -m worker) against this Redis and prefix"
                )
            else:
                busy = sum(w.jobs_running for w in workers)
                slots = sum(w.max_jobs for w in workers)
                names = ", ".join(sorted(w.worker_id for w in workers)[:5])
                alive = f"{len(workers)} worker(s) alive for {queue} ({names}), {busy}/{slots} job slots busy"
        return None, f"{where}; {alive}"

    async def _bounded(self, wait: _Wait, what: str, call: Awaitable[T]) -> T:
        """One Redis call within the budget (a read of the reply key may take ``LAST_READ_S``)."""
        try:
            async with asyncio.timeout(max(wait.remaining(), LAST_READ_S)):
                return await call
        except TimeoutError:
            raise ReplyTimeout(
                f"request {wait.request_id}: {what} got no answer from Redis at {self._address} "
                f"within the budget ({wait.budget_s:.1f} s)"
            ) from None
        except (RedisError, OSError) as exc:
            raise PoolUnavailable(self._address, exc, f"request {wait.request_id}: {what}") from exc

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        """One short call (``reply``, ``cancel``), bounded by ``CALL_TIMEOUT_S``."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                return await call
        except TimeoutError:
            silent = TimeoutError(f"no answer within {CALL_TIMEOUT_S:g} s")
            raise PoolUnavailable(self._address, silent, what) from None
        except (RedisError, OSError) as exc:
            raise PoolUnavailable(self._address, exc, what) from exc
