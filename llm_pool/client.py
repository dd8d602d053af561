"""``LLMPool``: the caller's side of contract v1 (the orchestrator's client).

Every wait blocks on Redis pub-sub, never on a sleep: the client subscribes to the request's
channel (confirmed by Redis) before it enqueues, reads the reply key once in case the request had
already finished, and otherwise wakes on the final event and reads the reply key then.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, TypedDict

from pydantic import ValidationError
from redis.asyncio import ConnectionPool, Redis
from typing_extensions import Unpack

from llm_pool.enqueue import Enqueuer
from llm_pool.keys import Keys
from llm_pool.multiplexer import Multiplexer
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
from llm_pool.settings import Settings, load_settings

Reply = OkReply | ErrorReply
Event = ChunkEvent | DoneEvent | ErrorEvent | ResetEvent

# How long past the request's own deadline a caller waits for its final event.
WAIT_MARGIN_S = 10.0


class InvalidRequestError(ValueError):
    """The request breaks contract section 1; it was not enqueued."""


class ReplyTimeout(TimeoutError):
    """No final state arrived in time (no worker running, or Redis unreachable)."""


class RequestOptions(TypedDict, total=False):
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    channel: str
    params: dict[str, Any]
    timeout_s: float
    metadata: dict[str, str]
    request_id: str


class LLMPool:
    """Async client: ``complete``, ``stream``, ``submit``, ``reply``, ``wait`` and ``cancel``.

    Use as ``async with LLMPool() as pool: reply = await pool.complete(...)``.
    """

    def __init__(self, settings: Settings | None = None, *, redis_url: str | None = None) -> None:
        self._settings = settings or load_settings()
        self.keys = Keys(self._settings.redis.key_prefix)
        url = redis_url or self._settings.redis.url
        self._redis: Redis = Redis(connection_pool=ConnectionPool.from_url(url))
        self._mux = Multiplexer(self._redis, f"{self.keys.prefix}:client:{uuid.uuid4().hex}")
        self._enqueuer = Enqueuer(self._redis, self.keys)

    async def __aenter__(self) -> LLMPool:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._mux.close()
        await self._redis.aclose()

    # --- building and enqueueing ------------------------------------------------------------

    def build_request(
        self, model: str, messages: list[dict[str, Any]], tenant_id: str, **options: Unpack[RequestOptions]
    ) -> tuple[str, CompletionRequest]:
        """Validate a request as the worker will; raises ``InvalidRequestError``."""
        fields: dict[str, Any] = {k: v for k, v in options.items() if k != "request_id"}
        request_id = options.get("request_id") or uuid.uuid4().hex
        try:
            request = CompletionRequest.model_validate(
                {"model": model, "messages": messages, "tenant_id": tenant_id, **fields}
            )
        except ValidationError as exc:
            raise InvalidRequestError(describe_validation_error(exc)) from None
        limits = self._settings.worker
        too_big = limit_violation(request, limits.max_messages, limits.max_tools)
        if too_big is None:
            size = len(request.model_dump_json(exclude_none=True))
            if size > limits.max_payload_bytes:
                too_big = f"the request is {size} bytes; the limit is {limits.max_payload_bytes}"
        if too_big is not None:
            raise InvalidRequestError(too_big)
        return request_id, request

    def channel_of(self, request_id: str, request: CompletionRequest) -> str:
        return request.channel or self.keys.stream(request_id)

    async def _enqueue(self, request_id: str, request: CompletionRequest, stream: bool) -> Reply | None:
        """Enqueue (a no-op if the id is known); the reply if the request had already finished."""
        existing = await self._enqueuer.enqueue(
            "complete_stream" if stream else "complete",
            request_id,
            request.model_dump(mode="json", exclude_none=True),
        )
        return parse_reply(existing) if existing is not None else None

    async def submit(
        self,
        model: str,
        messages: list[dict[str, Any]],
        tenant_id: str,
        *,
        stream: bool = False,
        **options: Unpack[RequestOptions],
    ) -> str:
        """Enqueue without waiting; returns the request id. Read the result with ``wait``."""
        request_id, request = self.build_request(model, messages, tenant_id, **options)
        await self._enqueue(request_id, request, stream)
        return request_id

    # --- waiting --------------------------------------------------------------------------

    def _wait_budget_s(self, request: CompletionRequest | None) -> float:
        timeout = request.timeout_s if request and request.timeout_s else None
        return (timeout or self._settings.worker.default_timeout_s) + WAIT_MARGIN_S

    async def reply(self, request_id: str) -> Reply | None:
        """The reply key's content, or None while the request has no final state."""
        raw = await self._redis.get(self.keys.reply(request_id))
        return parse_reply(raw) if raw is not None else None

    async def wait(
        self, request_id: str, *, channel: str | None = None, timeout_s: float | None = None
    ) -> Reply:
        """Block until the request's final event, then return its reply."""
        budget = timeout_s if timeout_s is not None else self._wait_budget_s(None)
        channel = channel or self.keys.stream(request_id)
        return await self._reply_after(request_id, self._events(request_id, channel, budget, None))

    async def complete(
        self, model: str, messages: list[dict[str, Any]], tenant_id: str, **options: Unpack[RequestOptions]
    ) -> Reply:
        """One completion through the pool; returns the reply (``status`` ok or error)."""
        request_id, request = self.build_request(model, messages, tenant_id, **options)
        channel = self.channel_of(request_id, request)
        events = self._events(request_id, channel, self._wait_budget_s(request), (request, False))
        return await self._reply_after(request_id, events)

    async def _reply_after(self, request_id: str, events: AsyncIterator[Event]) -> Reply:
        async for _ in events:
            pass
        reply = await self.reply(request_id)
        if reply is None:
            raise ReplyTimeout(f"request {request_id}: final event seen but the reply key is gone")
        return reply

    async def stream(
        self, model: str, messages: list[dict[str, Any]], tenant_id: str, **options: Unpack[RequestOptions]
    ) -> AsyncIterator[Event]:
        """Yield the request's events (section 3) as they arrive, ending with ``done`` or ``error``."""
        request_id, request = self.build_request(model, messages, tenant_id, **options)
        channel = self.channel_of(request_id, request)
        async for event in self._events(request_id, channel, self._wait_budget_s(request), (request, True)):
            yield event

    async def _events(
        self,
        request_id: str,
        channel: str,
        budget_s: float,
        enqueue: tuple[CompletionRequest, bool] | None,
    ) -> AsyncIterator[Event]:
        deadline = time.monotonic() + budget_s
        async with self._mux.subscribe(channel) as queue:
            if enqueue is not None:
                existing = await self._enqueue(request_id, enqueue[0], enqueue[1])
            else:
                existing = await self.reply(request_id)
            if existing is not None:
                yield final_event(existing)
                return
            while True:
                remaining = deadline - time.monotonic()
                try:
                    raw = await asyncio.wait_for(queue.get(), max(remaining, 0.001))
                except TimeoutError:
                    # The final event may have been missed during a reconnect: the key tells.
                    late = await self.reply(request_id)
                    if late is not None:
                        yield final_event(late)
                        return
                    raise ReplyTimeout(f"request {request_id}: no final state after {budget_s:g}s") from None
                event = parse_event(raw)
                yield event
                if isinstance(event, DoneEvent | ErrorEvent):
                    return

    async def cancel(self, request_id: str) -> None:
        """Ask the pool to stop the request (contract section 5)."""
        await self._redis.set(self.keys.cancel(request_id), b"1", ex=600)
