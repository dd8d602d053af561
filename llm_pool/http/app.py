"""The FastAPI application of the front door: ``create_app(settings)``.

``POST /complete`` waits for the reply (``LLMPool.complete``); ``POST /complete/stream`` relays the
request's channel as NDJSON as events arrive (``LLMPool.stream``, see relay.py); ``GET /health`` is
200 while at least one worker's heartbeat key exists. One ``LLMPool`` per process, made at start-up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from llm_pool.client import LLMPool
from llm_pool.errors import InvalidRequestError, PoolError, redis_failure
from llm_pool.health import check, section_address
from llm_pool.http.body_limit import BodyLimitMiddleware
from llm_pool.http.errors import Failure, failure_of_exception, failure_of_reply
from llm_pool.http.models import CompleteBody, CompleteResponse
from llm_pool.http.relay import Background, Relay
from llm_pool.http.request_id import STATE_KEY, ASGIApp, RequestIdMiddleware
from llm_pool.logging import get_logger
from llm_pool.schemas import ErrorReply
from llm_pool.settings import Settings

NDJSON = "application/x-ndjson"
SHUTDOWN_CANCELS_S = 5.0  # at shutdown, how long cancels of abandoned streams may take
MAX_VALIDATION_ERRORS = 10

log = get_logger("llm_pool.http")


class NdjsonResponse(StreamingResponse):
    """The relay's lines, one body message each (uvicorn writes each at once: no buffering); the
    relay is closed however the response ends."""

    media_type = NDJSON

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay.lines())
        self._relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._relay.close()


def failure_response(failure: Failure) -> JSONResponse:
    return JSONResponse(failure.body(), status_code=failure.status)


def describe_validation(errors: Sequence[Any]) -> str:
    """FastAPI's validation errors in one line, naming fields but never echoing their values."""
    parts = []
    for error in list(errors)[:MAX_VALIDATION_ERRORS]:
        where = [str(p) for p in error.get("loc", ())]
        if where[:1] == ["body"]:
            where = where[1:]
        if error.get("type") == "json_invalid":
            reason = error.get("ctx", {}).get("error", "")
            parts.append(f"the body is not valid JSON ({reason})" if reason else "the body is not valid JSON")
        elif not where and error.get("type") == "missing":
            parts.append("the body is missing: send a JSON object with model, messages and tenant_id")
        else:
            parts.append(f"{'.'.join(where) or 'body'}: {error.get('msg', 'invalid')}")
    if len(errors) > MAX_VALIDATION_ERRORS:
        parts.append(f"and {len(errors) - MAX_VALIDATION_ERRORS} more")
    return "; ".join(parts)


def create_app(settings: Settings) -> ASGIApp:
    """The front door for the pool of ``settings`` (its Redis and key prefix), wrapped in the
    ``X-Request-Id`` middleware and the body-size limit."""
    background = Background()
    pools: list[LLMPool] = []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        pools.append(LLMPool(settings))
        try:
            yield
        finally:
            await background.drain(SHUTDOWN_CANCELS_S)
            await pools[0].close()

    app = FastAPI(title="llm-pool front door", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def malformed(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        detail = [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in errors]
        return JSONResponse({"error": describe_validation(errors), "detail": detail}, status_code=422)

    @app.exception_handler(HTTPException)
    async def refused(_: Request, exc: HTTPException) -> JSONResponse:
        """FastAPI's own refusals (404, 405, an unreadable body): its ``detail``, and ``error``."""
        content = {"error": str(exc.detail), "detail": exc.detail}
        return JSONResponse(content, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.error("http_crashed", request_id=getattr(request.state, STATE_KEY, None), error=repr(exc))
        return JSONResponse({"error": "internal error in the front door"}, status_code=500)

    @app.post("/complete")
    async def complete(body: CompleteBody, request: Request) -> Response:
        request_id: str = getattr(request.state, STATE_KEY)
        try:
            reply = await pools[0].complete(
                body.model, body.messages, body.tenant_id, **body.options(request_id)
            )
        except PoolError as exc:
            failure = failure_of_exception(exc)
            log.warning("http_complete_failed", request_id=request_id, code=failure.code, error=str(exc))
            return failure_response(failure)
        if isinstance(reply, ErrorReply):
            return failure_response(failure_of_reply(reply))
        return JSONResponse(CompleteResponse.of(reply).model_dump(mode="json"))

    @app.post("/complete/stream")
    async def complete_stream(body: CompleteBody, request: Request) -> Response:
        request_id: str = getattr(request.state, STATE_KEY)
        try:
            pools[0].validate(body.model, body.messages, body.tenant_id, **body.options(request_id))
        except InvalidRequestError as exc:
            return failure_response(failure_of_exception(exc))
        return NdjsonResponse(Relay(pools[0], body, request_id, background))

    @app.get("/health")
    async def health() -> JSONResponse:
        try:
            healthy, why = await check(settings=settings)
        except (RedisError, OSError) as exc:
            detail = redis_failure(section_address(settings.redis), exc)
            return JSONResponse({"status": "unavailable", "detail": detail}, status_code=503)
        if healthy:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable", "detail": why}, status_code=503)

    return RequestIdMiddleware(BodyLimitMiddleware(app, settings.worker.max_payload_bytes))
