"""One request's events as NDJSON lines, and its cancellation when the HTTP client goes away.

The request runs in a task of its own (``LLMPool.stream``, subscribed before it enqueues) that
hands each event to the response through a queue, so a disconnect, which cancels the response's
task (Starlette's cancel scope cancels every await left in it), never lands inside the client: the
relay cancels that task and asks the pool to stop the request (``LLMPool.cancel``) from a task of
its own. A stream read to its final event cancels nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from llm_pool.client import Event, LLMPool
from llm_pool.errors import PoolError
from llm_pool.http.errors import failure_of_exception
from llm_pool.http.models import CompleteBody, error_line, line_of, ndjson
from llm_pool.logging import get_logger
from llm_pool.schemas import DoneEvent, ErrorCode, ErrorEvent

log = get_logger("llm_pool.http")


class Background:
    """Tasks that outlive the response that started them (cancels); awaited at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout_s: float) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)


class Relay:
    """``lines()`` yields the request's NDJSON lines; ``close()`` (synchronous) ends it, cancelling
    the request in the pool if its final event was not relayed."""

    def __init__(self, pool: LLMPool, body: CompleteBody, request_id: str, background: Background) -> None:
        self._pool = pool
        self._body = body
        self._request_id = request_id
        self._background = background
        # The request's events, then an exception if it failed, then None (the task has ended).
        self._queue: asyncio.Queue[Event | Exception | None] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._ended = False  # the request's final event (or the client's error) was relayed

    async def _run(self) -> None:
        body = self._body
        try:
            async with contextlib.aclosing(
                self._pool.stream(body.model, body.messages, body.tenant_id, **body.options(self._request_id))
            ) as events:
                async for event in events:
                    self._queue.put_nowait(event)
        except Exception as exc:
            self._queue.put_nowait(exc)
        finally:
            self._queue.put_nowait(None)

    async def lines(self) -> AsyncIterator[bytes]:
        with_tool_calls = self._body.tools is not None
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, PoolError):
                failure = failure_of_exception(item)
                log.warning(
                    "http_stream_failed", request_id=self._request_id, code=failure.code, error=str(item)
                )
                self._ended = True
                yield ndjson(error_line(failure.code, failure.message))
                return
            if isinstance(item, Exception):
                log.error("http_stream_crashed", request_id=self._request_id, error=repr(item))
                self._ended = True
                yield ndjson(error_line(ErrorCode.INTERNAL.value, "internal error in the front door"))
                return
            if isinstance(item, DoneEvent | ErrorEvent):
                self._ended = True
            yield ndjson(line_of(item, with_tool_calls))

    def close(self) -> None:
        """Stop relaying; if the request's end was not relayed (the client went away), cancel it."""
        if not self._task.done():
            self._task.cancel()
        if not self._ended:
            self._background.start(self._cancel())

    async def _cancel(self) -> None:
        try:
            cancelled = await self._pool.cancel(self._request_id)
        except PoolError as exc:
            log.warning("http_cancel_failed", request_id=self._request_id, error=str(exc))
            return
        log.info("http_client_gone", request_id=self._request_id, cancelled=cancelled)
