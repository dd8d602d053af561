"""``X-Request-Id`` on every response, and one log line per request (never a body).

The outermost layer of the application, so that even a response written by the server's own error
handler carries the header. A valid incoming ``X-Request-Id`` (1 to 128 characters out of letters,
digits and ``. _ : -``) is kept, anything else is replaced by a new UUID hex; the id is the pool's
request id (``LLMPool``'s ``request_id``), so ``llm-pool request ID`` finds the request.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from llm_pool.keys import MAX_REQUEST_ID_CHARS
from llm_pool.logging import get_logger

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEADER = b"x-request-id"
VALID_ID = re.compile(rf"[A-Za-z0-9._:\-]{{1,{MAX_REQUEST_ID_CHARS}}}")
STATE_KEY = "request_id"

log = get_logger("llm_pool.http")


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's ``X-Request-Id`` if it is valid, else a new UUID hex."""
    for name, value in headers:
        if name.lower() == HEADER:
            text = value.decode("latin-1")
            if VALID_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Sets ``scope["state"]["request_id"]`` (``request.state.request_id``), adds the response header,
    and logs ``http_request`` (method, path, status, request_id, ms) when the response ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope.get("headers") or [])
        scope.setdefault("state", {})[STATE_KEY] = request_id
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER]
                message["headers"] = [*headers, (HEADER, request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log.info(
                "http_request",
                method=scope.get("method"),
                path=scope.get("path"),
                status=status or None,  # None: the connection ended before a response began
                request_id=request_id,
                ms=round((time.perf_counter() - started) * 1000, 2),
            )
