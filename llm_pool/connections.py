"""Every Redis connection of the pool, built in one place from the ``[redis]`` settings.

The worker (asyncio for jobs, synchronous for its outbox, lease and metrics threads), arq's own pool,
``LLMPool``, the CLI and the health check all connect through these functions, so TLS options reach
every one of them. TLS comes from ``redis.ssl_*`` settings, or from the same names as query
parameters of a ``rediss://`` URL (``?ssl_ca_certs=/path/ca.crt``); arq's ``RedisSettings.from_dsn``
alone would drop those, and the worker could not connect where ``LLMPool`` could.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from arq.connections import RedisSettings

from llm_pool.settings import RedisSection

_TLS_FIELDS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")


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
    """An asyncio client (``options``: e.g. ``socket_timeout``)."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        _plain_url(section.url), **tls_options(section), **options
    )
    return client


def sync_redis(section: RedisSection, **options: Any) -> redis.Redis:
    """A synchronous client, for the worker's threads and command-line tools."""
    return redis.Redis.from_url(_plain_url(section.url), **tls_options(section), **options)


def arq_settings(section: RedisSection) -> RedisSettings:
    """arq's connection settings: the URL's host, port, db and credentials, and the same TLS."""
    settings = RedisSettings.from_dsn(_plain_url(section.url))
    tls = tls_options(section)
    return dataclasses.replace(settings, **tls) if tls else settings
