"""The errors ``LLMPool`` raises, all under one ``PoolError``; each message names its cause.

They also subclass the builtin a caller would have caught before they existed: ``ValueError`` for a
bad request, ``TimeoutError`` for no reply in time, ``ConnectionError`` for an unreachable Redis.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class PoolError(Exception):
    """Base of every error the pool's client raises on its own account."""


class InvalidRequestError(PoolError, ValueError):
    """The request breaks contract section 1; it was not enqueued."""


class ReplyTimeout(PoolError, TimeoutError):
    """No final state within the request's budget; the message says what the client saw."""


class PoolUnavailable(PoolError, ConnectionError):
    """Redis refused the connection or lost it (or refused a command); nothing more can be done now.

    The message names the address (``.address``, never the password), the error, what the client
    was doing, and what to check; ``.__cause__`` is redis-py's (or the OS's) own exception. Calling
    again with the same ``request_id`` is safe: enqueueing is idempotent."""

    def __init__(self, address: str, cause: BaseException, context: str = "") -> None:
        self.address = address
        detail = f"{type(cause).__name__}: {first_line(cause).rstrip('.')}"
        super().__init__(
            f"Redis at {address} is unavailable ({detail})"
            + (f"; {context}" if context else "")
            + f". {redis_hint(cause)}"
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


def first_line(exc: BaseException, limit: int = 300) -> str:
    return (str(exc).splitlines() or [""])[0][:limit]


def redis_hint(exc: BaseException) -> str:
    """What a person can check about a failed Redis call, in one sentence."""
    text = str(exc)
    if isinstance(exc, AuthenticationError) or text.startswith(("WRONGPASS", "NOAUTH", "invalid username")):
        return "Check the user name and password in the Redis URL (REDIS_URL or redis.url)."
    if isinstance(exc, NoPermissionError):
        return "The Redis user lacks a permission this needs: see docs/protocol.md, section 9.1 (ACL)."
    if isinstance(exc, ResponseError):
        return "Redis refused the command; its error is quoted above."
    if isinstance(exc, RedisTimeoutError | TimeoutError):
        return (
            "Redis did not answer in time: check the host and port in REDIS_URL (or redis.url), "
            "and that nothing between here and there drops the connection."
        )
    if "SSL" in text or "certificate" in text:
        return "Check the TLS settings (a rediss:// URL, redis.ssl_ca_certs and the other redis.ssl_*)."
    return (
        "Check that Redis is running at that address and that REDIS_URL (or redis.url in the "
        "settings file, LLM_POOL_SETTINGS) names it."
    )


def redis_failure(address: str, exc: BaseException) -> str:
    """One line for a person: where Redis is, what went wrong, what to check."""
    if isinstance(exc, AuthenticationError):
        verb = "refused the login"
    elif isinstance(exc, ResponseError):
        verb = "refused a command"
    else:
        verb = "is unreachable"
    detail = f"{type(exc).__name__}: {first_line(exc).rstrip('.')}"
    return f"Redis at {address} {verb} ({detail}). {redis_hint(exc)}"
