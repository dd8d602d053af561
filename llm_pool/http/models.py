"""The old service's request and response shapes, and the NDJSON lines of ``/complete/stream``.

Bodies are validated here only for their shape (what the old service's FastAPI models checked);
what a request means (a UUID tenant, known roles, sizes) is checked by ``LLMPool`` exactly as a
worker will, so the front door answers the pool's own ``invalid_request`` messages.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from llm_pool.client import RequestOptions
from llm_pool.schemas import ChunkEvent, DoneEvent, ErrorCode, ErrorEvent, OkReply, ResetEvent, ToolCall

# What the old service answered when no provider could serve a request; kept byte for byte.
PROVIDERS_UNAVAILABLE = "All providers unavailable"


class CompleteBody(BaseModel):
    """The body of ``POST /complete`` and ``POST /complete/stream``. Unknown keys are ignored, as
    the old service ignored them. ``tools`` on ``/complete/stream`` is new (the old one took it on
    ``/complete`` only)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[dict[str, Any]]
    tenant_id: str
    tools: list[dict[str, Any]] | None = None

    def options(self, request_id: str) -> RequestOptions:
        options = RequestOptions(request_id=request_id)
        if self.tools is not None:
            options["tools"] = self.tools
        return options


class OldUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class CompleteResponse(BaseModel):
    """``POST /complete``'s answer: the old keys, in the old order. ``usage`` has the provider's
    real counts (the old service sent zeros); ``model`` is the group that was asked for."""

    content: str
    model: str
    usage: OldUsage
    tool_calls: list[ToolCall]

    @classmethod
    def of(cls, reply: OkReply) -> CompleteResponse:
        usage = OldUsage(
            prompt_tokens=reply.usage.prompt_tokens, completion_tokens=reply.usage.completion_tokens
        )
        return cls(content=reply.content, model=reply.model, usage=usage, tool_calls=reply.tool_calls)


def error_message(code: ErrorCode, message: str) -> str:
    """What callers are told about a failed request: the old service's exact text for
    ``providers_unavailable`` (the deployments tried are in the reply key: ``llm-pool request ID``),
    the pool's message otherwise."""
    return PROVIDERS_UNAVAILABLE if code is ErrorCode.PROVIDERS_UNAVAILABLE else message


def ndjson(value: dict[str, Any]) -> bytes:
    """One NDJSON line, written as the old service wrote them (``json.dumps`` defaults)."""
    return (json.dumps(value) + "\n").encode()


def line_of(event: ChunkEvent | DoneEvent | ErrorEvent | ResetEvent, with_tool_calls: bool) -> dict[str, Any]:
    """A pool event as the old NDJSON line (plus what is new: ``tool_calls`` on ``done`` when the
    request had ``tools``, ``code`` on ``error``, and the ``reset`` line)."""
    if isinstance(event, ChunkEvent):
        return {"type": "chunk", "text": event.text}
    if isinstance(event, DoneEvent):
        done: dict[str, Any] = {"type": "done"}
        if with_tool_calls:
            done["tool_calls"] = [call.model_dump(mode="json") for call in event.tool_calls]
        return done
    if isinstance(event, ErrorEvent):
        return error_line(event.code.value, error_message(event.code, event.message))
    return {"type": "reset"}


def error_line(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "message": message, "code": code}
