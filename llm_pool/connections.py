"""Every Redis connection of the pool, built in one place from the ``[redis]`` settings.

The worker (asyncio for jobs, synchronous for its outbox, lease and metrics threads), arq's own pool,
``LLMPool``, the CLI and the health check all connect through these functions, so TLS options reach
every one of them. TLS comes from ``redis.ssl_*`` settings, or from the same names as query
parameters of a ``rediss://`` URL (``?ssl_ca_certs=/path/ca.crt``); arq's ``RedisSettings.from_dsn``
alone would drop those, and the worker could not connect where ``LLMPool`` could.

With ``redis.sentinels`` set, every client is a Sentinel-managed one (redis-py's
``Sentinel(...).master_for(redis.sentinel_master)``): each new connection asks the Sentinels for the
current primary, so after a failover the next connection (a reconnect of the pub-sub connections
included) goes to the new primary; a connection still on a demoted primary gets ``READONLY`` on its
first write, which redis-py turns into a disconnect and a ``ConnectionError``, and the connection
after it re-discovers the primary. The URL then gives only the db, username, password and TLS; the
Sentinels are reached with the same TLS options and the password named by
``redis.sentinel_password_env``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as async_sentinel
import redis.sentinel as sync_sentinel
from arq.connections import RedisSettings
from redis.connection import parse_url
from redis.exceptions import OutOfMemoryError, RedisError

from llm_pool.settings import RedisSection, SettingsError

_TLS_FIELDS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
# Timeouts of the queries to the Sentinels (a Sentinel that does not answer is skipped for the next).
SENTINEL_TIMEOUT_S = 2.0


def out_of_memory(error: BaseException) -> bool:
    """Whether Redis refused a write because it is full (``maxmemory`` with ``noeviction``)."""
    return isinstance(error, OutOfMemoryError) or (
        isinstance(error, RedisError) and str(error).startswith("OOM")
    )


def tls_options(section: RedisSection) -> dict[str, Any]:
    """redis-py's TLS keyword arguments for a ``rediss://`` URL (settings win over the URL's query)."""
    parts = urlsplit(section.url)
    if parts.scheme != "rediss":
        return {}
    query = dict(parse_qsl(parts.query))
    options: dict[str, Any] = {k: v for k, v in query.items() if k in _TLS_FIELDS}
    if "ssl_check_hostname" in options:
        options["ssl_check_hostname"] = options["ssl_check_hostname"].lower() in ("1", "true", "yes")
    for name in _TLS_FIELDS:
        if (value := getattr(section, name)) is not None:
            options[name] = value
    return options


def _plain_url(url: str) -> str:
    """The URL without the TLS query parameters (passed as keyword arguments instead)."""
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query) if k not in _TLS_FIELDS]
    return urlunsplit(parts._replace(query="&".join(f"{k}={v}" for k, v in kept)))


def async_redis(section: RedisSection, **options: Any) -> aioredis.Redis:
    """An asyncio client (``options``: e.g. ``socket_timeout``); Sentinel-managed with ``sentinels``."""
    if section.sentinels:
        return cast(
            aioredis.Redis,
            _async_sentinel(section, options).master_for(section.sentinel_master, **options),
        )
    client: aioredis.Redis = aioredis.Redis.from_url(
        _plain_url(section.url), **tls_options(section), **options
    )
    return client


def sync_redis(section: RedisSection, **options: Any) -> redis.Redis:
    """A synchronous client, for the worker's threads and command-line tools."""
    if section.sentinels:
        sentinel = _sync_sentinel(section, options)
        client = sentinel.master_for(section.sentinel_master, **options)  # type: ignore[no-untyped-call]
        return cast(redis.Redis, client)
    return redis.Redis.from_url(_plain_url(section.url), **tls_options(section), **options)


def arq_settings(section: RedisSection) -> RedisSettings:
    """arq's connection settings: the URL's host, port, db and credentials, and the same TLS.

    With ``sentinels``: arq's Sentinel mode (``host`` = the Sentinels). arq builds that connection
    itself and passes it neither a Sentinel password nor the TLS file options; the pool's own
    worker and client use ``async_redis``. These settings serve tools that take arq ``RedisSettings``.
    """
    settings = RedisSettings.from_dsn(_plain_url(section.url))
    if section.sentinels:
        settings = dataclasses.replace(
            settings,
            host=section.sentinel_addresses(),
            sentinel=True,
            sentinel_master=section.sentinel_master,
        )
    tls = tls_options(section)
    return dataclasses.replace(settings, **tls) if tls else settings


def _connection_options(section: RedisSection) -> dict[str, Any]:
    """What every connection to a primary takes: db, credentials and TLS (the URL's host is unused)."""
    kwargs: dict[str, Any] = parse_url(_plain_url(section.url))  # type: ignore[no-untyped-call]
    for name in ("host", "port", "path", "connection_class"):
        kwargs.pop(name, None)
    if section.url.startswith("rediss://"):
        kwargs["ssl"] = True
        kwargs.update(tls_options(section))
    return kwargs


def _sentinel_options(section: RedisSection, options: dict[str, Any]) -> dict[str, Any]:
    """What every connection to a Sentinel takes: timeouts, TLS like the primary's, its password."""
    kwargs: dict[str, Any] = {
        "socket_timeout": options.get("socket_timeout") or SENTINEL_TIMEOUT_S,
        "socket_connect_timeout": options.get("socket_connect_timeout") or SENTINEL_TIMEOUT_S,
    }
    if section.url.startswith("rediss://"):
        kwargs["ssl"] = True
        kwargs.update(tls_options(section))
    if section.sentinel_password_env is not None:
        password = os.environ.get(section.sentinel_password_env)
        if not password:
            raise SettingsError(
                f"redis.sentinel_password_env names {section.sentinel_password_env}, which is not set"
            )
        kwargs["password"] = password
    return kwargs


def _async_sentinel(section: RedisSection, options: dict[str, Any]) -> async_sentinel.Sentinel:
    return async_sentinel.Sentinel(  # type: ignore[no-untyped-call]
        section.sentinel_addresses(),
        sentinel_kwargs=_sentinel_options(section, options),
        **_connection_options(section),
    )


def _sync_sentinel(section: RedisSection, options: dict[str, Any]) -> sync_sentinel.Sentinel:
    return sync_sentinel.Sentinel(  # type: ignore[no-untyped-call]
        section.sentinel_addresses(),
        sentinel_kwargs=_sentinel_options(section, options),
        **_connection_options(section),
    )


_SECRET_QUERY_FIELDS = frozenset({"password", "sentinel_password"})


def masked_url(url: str) -> str:
    """``url`` fit for a message or a log line: its password (and any ``password=`` query parameter)
    replaced by ``***``. A user name with no password is masked too (``redis://SECRET@host`` is a
    common slip). ``redis://:pw@host:6379/0`` -> ``redis://:***@host:6379/0``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(a Redis URL that cannot be parsed)"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    query = [
        (k, "***" if k.lower() in _SECRET_QUERY_FIELDS else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    text = f"{parts.scheme}://{netloc}{parts.path}"  # urlunsplit would drop unix:///'s empty host
    if query:
        text += "?" + urlencode(query, safe="*/:")
    return text
