"""The errors ``LLMPool`` raises, all under one ``PoolError``; each message names its cause.

They also subclass the builtin a caller would have caught before they existed: ``ValueError`` for a
bad request, ``TimeoutError`` for no reply in time, ``ConnectionError`` for an unreachable Redis.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import NoPermissionError


class PoolError(Exception):
    """Base of every error the pool's client raises on its own account."""


class InvalidRequestError(PoolError, ValueError):
    """The request breaks contract section 1; it was not enqueued."""


class ReplyTimeout(PoolError, TimeoutError):
    """No final state within the request's budget; the message says what the client saw."""


class PoolUnavailable(PoolError, ConnectionError):
    """Redis refused the connection or lost it; names the address (never the password)."""

    def __init__(self, address: str, cause: BaseException, context: str = "") -> None:
        self.address = address
        detail = f"{type(cause).__name__}: {cause}"
        super().__init__(
            f"Redis at {address} is unavailable ({detail})" + (f"; {context}" if context else "")
        )


class SubscribeRefused(PoolError):
    """Redis refused to SUBSCRIBE to the request's channel (e.g. ACL ``NOPERM``); nothing was enqueued."""

    def __init__(self, channel: str, reason: str) -> None:
        self.channel = channel
        self.reason = reason
        super().__init__(f"Redis refused SUBSCRIBE {channel}: {reason}; the request was not enqueued")


def refusal_reason(exc: Exception) -> str:
    """Redis's own error line (redis-py strips the ``NOPERM`` code; put it back)."""
    return f"NOPERM {exc}" if isinstance(exc, NoPermissionError) else f"{type(exc).__name__}: {exc}"


def redis_address(redis: Redis) -> str:
    """``host:port/db``, ``unix://path``, or the master name and Sentinels; never the password."""
    pool = redis.connection_pool
    options = pool.connection_kwargs
    if isinstance(pool, SentinelConnectionPool):
        addresses = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
        sentinels = ",".join(f"{a.get('host')}:{a.get('port')}" for a in addresses)
        return f"primary {pool.service_name!r} of Sentinels {sentinels}, db {options.get('db', 0)}"
    if "path" in options:
        return f"unix://{options['path']}"
    return f"{options.get('host', 'localhost')}:{options.get('port', 6379)}/{options.get('db', 0)}"
