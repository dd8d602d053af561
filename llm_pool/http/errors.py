"""Why a request failed, as an HTTP status and the old service's ``{"error": ...}`` body.

A request the pool ended in error (an ``ErrorReply``) keeps its error code; the client's own
exceptions (nothing enqueued, Redis unreachable, no answer in time) get codes of their own. Their
details (Redis's address, what the client saw) go to the log, not to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_pool.errors import InvalidRequestError, PoolError, ReplyTimeout
from llm_pool.http.models import error_message
from llm_pool.schemas import ErrorCode, ErrorReply

# The status of each way the pool ends a request in error.
STATUS_OF_CODE: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.CANCELLED: 409,  # an operator cancelled it (llm-pool cancel)
    ErrorCode.OVER_BUDGET: 429,
    ErrorCode.INTERNAL: 502,  # the pool behind the front door failed
    ErrorCode.PROVIDERS_UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
}
POOL_UNAVAILABLE = "pool_unavailable"
NO_REPLY = "no_reply"


@dataclass(frozen=True)
class Failure:
    status: int
    code: str  # an ErrorCode value, or POOL_UNAVAILABLE / NO_REPLY
    message: str

    def body(self) -> dict[str, str]:
        return {"error": self.message}


def failure_of_reply(reply: ErrorReply) -> Failure:
    code = reply.error.code
    return Failure(STATUS_OF_CODE[code], code.value, error_message(code, reply.error.message))


def failure_of_exception(exc: PoolError) -> Failure:
    """``InvalidRequestError``: 400 with its message; ``ReplyTimeout``: 504; the rest
    (``PoolUnavailable``, ``SubscribeRefused``): 503."""
    if isinstance(exc, InvalidRequestError):
        return Failure(400, ErrorCode.INVALID_REQUEST.value, str(exc))
    if isinstance(exc, ReplyTimeout):
        return Failure(504, NO_REPLY, "No reply from the pool in time (no worker answered)")
    return Failure(503, POOL_UNAVAILABLE, "The pool is unavailable (its Redis cannot be reached)")
