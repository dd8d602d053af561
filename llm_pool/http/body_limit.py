"""A request body is read only up to the pool's payload limit (``worker.max_payload_bytes``).

A longer body gets 413 with the old service's ``{"error": ...}`` body and is never parsed: by its
``Content-Length`` at once, or, for a chunked body, as soon as the bytes read pass the limit. A body
within the limit is read here and handed to the application in one piece; after it, the
application receives what the server sends (a client's disconnect ends a stream).
"""

from __future__ import annotations

import json

from llm_pool.http.request_id import ASGIApp, Message, Receive, Scope, Send


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        pieces: list[bytes] = []
        read = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before its body was complete
            piece = message.get("body", b"")
            read += len(piece)
            if read > self.max_bytes:
                await self._refuse(send)
                return
            pieces.append(piece)
            if not message.get("more_body"):
                break
        handed = False

        async def body_then_receive() -> Message:
            nonlocal handed
            if not handed:
                handed = True
                return {"type": "http.request", "body": b"".join(pieces), "more_body": False}
            return await receive()

        await self.app(scope, body_then_receive, send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {"error": f"the body is over {self.max_bytes} bytes (worker.max_payload_bytes)"}
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
