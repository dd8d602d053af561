"""llm-pool: a queue-driven pool of LLM workers over Redis (protocol v1, docs/protocol.md).

Importing the package is cheap; the client does not import LiteLLM. The client's API (``LLMPool``,
``RequestOptions``, the errors) is documented in docs/api.md.
"""

from llm_pool.client import LLMPool, RequestOptions
from llm_pool.errors import InvalidRequestError, PoolError, PoolUnavailable, ReplyTimeout, SubscribeRefused
from llm_pool.keys import Keys
from llm_pool.schemas import (
    ChunkEvent,
    CompletionRequest,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    ErrorReply,
    Heartbeat,
    OkReply,
    ResetEvent,
    Usage,
)
from llm_pool.settings import Settings, load_settings
from llm_pool.version import __version__

__all__ = [
    "ChunkEvent",
    "CompletionRequest",
    "DoneEvent",
    "ErrorCode",
    "ErrorEvent",
    "ErrorReply",
    "Heartbeat",
    "InvalidRequestError",
    "Keys",
    "LLMPool",
    "OkReply",
    "PoolError",
    "PoolUnavailable",
    "ReplyTimeout",
    "RequestOptions",
    "ResetEvent",
    "Settings",
    "SubscribeRefused",
    "Usage",
    "__version__",
    "load_settings",
]
