"""Pydantic models of every boundary in contract v1: request, reply, stream events, heartbeat."""

from __future__ import annotations

import json
import uuid
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticSerializationError


class ErrorCode(StrEnum):
    """Contract section 2: why a request ended in ``status: error``."""

    INVALID_REQUEST = "invalid_request"
    PROVIDERS_UNAVAILABLE = "providers_unavailable"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    OVER_BUDGET = "over_budget"
    INTERNAL = "internal"


PROVIDERS_UNAVAILABLE_MESSAGE = "All providers unavailable"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- request (contract section 1) -------------------------------------------------------------


class FunctionCall(_Strict):
    name: str = Field(min_length=1)
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @field_validator("content")
    @classmethod
    def _parts_have_type(cls, value: str | list[dict[str, Any]] | None) -> Any:
        if isinstance(value, list):
            for part in value:
                if not isinstance(part.get("type"), str):
                    raise ValueError("each content part needs a string 'type'")
        return value


class FunctionDefinition(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedToolChoiceFunction(_Strict):
    name: str = Field(min_length=1)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedToolChoiceFunction


class SamplingParams(_Strict):
    """The sampling parameters a caller may pass; any other key is rejected."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(_Strict):
    """The single positional argument of the ``complete`` and ``complete_stream`` jobs."""

    model: str = Field(min_length=1, max_length=128)
    messages: list[Message] = Field(min_length=1)
    tenant_id: str
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    channel: str | None = Field(default=None, min_length=1, max_length=512)
    params: SamplingParams | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    metadata: dict[str, str] | None = None

    @field_validator("tenant_id")
    @classmethod
    def _tenant_is_uuid(cls, value: str) -> str:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise ValueError("must be a UUID") from None

    def provider_kwargs(self) -> dict[str, Any]:
        """The keyword arguments LiteLLM gets besides ``model`` and ``stream``."""
        kwargs: dict[str, Any] = {
            "messages": [m.model_dump(exclude_none=True) for m in self.messages],
        }
        if self.tools is not None:
            kwargs["tools"] = [t.model_dump(exclude_none=True) for t in self.tools]
        if self.tool_choice is not None:
            choice = self.tool_choice
            kwargs["tool_choice"] = choice if isinstance(choice, str) else choice.model_dump()
        if self.params is not None:
            kwargs.update(self.params.model_dump(exclude_none=True))
        return kwargs


def limit_violation(request: CompletionRequest, max_messages: int, max_tools: int) -> str | None:
    """Why the request exceeds the configured size limits, or None."""
    if len(request.messages) > max_messages:
        return f"messages: {len(request.messages)} messages; the limit is {max_messages}"
    if request.tools is not None and len(request.tools) > max_tools:
        return f"tools: {len(request.tools)} tools; the limit is {max_tools}"
    return None


def describe_validation_error(exc: ValidationError) -> str:
    """A readable summary of what is wrong, naming fields but never echoing their values."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:10]:
        where = ".".join(str(p) for p in err["loc"]) or "request"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


# --- reply (contract section 2) ---------------------------------------------------------------


class Usage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: ErrorCode
    message: str


class OkReply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str
    status: Literal["ok"] = "ok"
    content: str
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: str | None
    model: str
    served_by: str
    fallback: bool
    usage: Usage
    attempt: int
    latency_ms: int
    metadata: dict[str, str] = Field(default_factory=dict)


class ErrorReply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str
    status: Literal["error"] = "error"
    error: ErrorInfo
    model: str | None = None
    attempt: int = 1
    latency_ms: int = 0
    metadata: dict[str, str] = Field(default_factory=dict)


Reply = Annotated[OkReply | ErrorReply, Field(discriminator="status")]
REPLY_ADAPTER: TypeAdapter[OkReply | ErrorReply] = TypeAdapter(Reply)


def to_json(model: BaseModel) -> bytes:
    """A reply or event as UTF-8 JSON; a lone surrogate (which UTF-8 cannot hold) becomes ``?``.

    Requests with lone surrogates are refused, but text can also come from a provider, and a
    reply that cannot be written would leave its request unanswered."""
    try:
        return model.model_dump_json().encode()
    except PydanticSerializationError:
        return json.dumps(model.model_dump(mode="json"), ensure_ascii=False).encode("utf-8", "replace")


def parse_reply(raw: bytes | str) -> OkReply | ErrorReply:
    return REPLY_ADAPTER.validate_json(raw)


# --- stream events (contract section 3) -------------------------------------------------------


class ChunkEvent(BaseModel):
    type: Literal["chunk"] = "chunk"
    text: str
    request_id: str
    seq: int


class DoneEvent(BaseModel):
    type: Literal["done"] = "done"
    request_id: str
    usage: Usage
    finish_reason: str | None
    tool_calls: list[ToolCall] = Field(default_factory=list)


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    request_id: str
    code: ErrorCode
    message: str


class ResetEvent(BaseModel):
    type: Literal["reset"] = "reset"
    request_id: str
    attempt: int


StreamEvent = Annotated[ChunkEvent | DoneEvent | ErrorEvent | ResetEvent, Field(discriminator="type")]
EVENT_ADAPTER: TypeAdapter[ChunkEvent | DoneEvent | ErrorEvent | ResetEvent] = TypeAdapter(StreamEvent)


def parse_event(raw: bytes | str) -> ChunkEvent | DoneEvent | ErrorEvent | ResetEvent:
    return EVENT_ADAPTER.validate_json(raw)


def final_event(reply: OkReply | ErrorReply) -> DoneEvent | ErrorEvent:
    """The channel's last event for a reply: ``done`` for success, ``error`` otherwise."""
    if isinstance(reply, OkReply):
        return DoneEvent(
            request_id=reply.request_id,
            usage=reply.usage,
            finish_reason=reply.finish_reason,
            tool_calls=reply.tool_calls,
        )
    return ErrorEvent(request_id=reply.request_id, code=reply.error.code, message=reply.error.message)


# --- heartbeat (contract section 4) -----------------------------------------------------------


class Heartbeat(BaseModel):
    worker_id: str
    host: str
    pid: int
    version: str
    started_at: str
    ts: str
    queue: str
    max_jobs: int
    jobs_running: int
    jobs_done: int
    jobs_failed: int  # every error reply: jobs_pool_errors + jobs_caller_errors
    groups: list[str]
    # Added in 0.1 without a new contract version; None in heartbeats of workers from before.
    jobs_pool_errors: int | None = None  # providers_unavailable and internal: the pool's failures
    jobs_caller_errors: int | None = None  # invalid_request, cancelled, timeout, over_budget
    errors_by_code: dict[str, int] | None = None  # error replies per ErrorCode value
