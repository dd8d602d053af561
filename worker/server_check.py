"""What a worker checks of its Redis server at start-up: eviction and persistence.

The pool keeps everything a request needs in Redis: the queue, leases, replies, heartbeats. An
evicting ``maxmemory-policy`` (``allkeys-*``, ``volatile-*``) lets Redis delete any of them when it
is full (measured under ``allkeys-lru``: 142 of 298 replies evicted, jobs run twice, streams
interleaved), so a worker refuses to start on such a server. A server that persists nothing
(``appendonly no`` and no ``save`` points) loses every queued job when it restarts: one warning.
Managed Redis services often refuse ``CONFIG``: then one info line, and the operator's word for it.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from llm_pool.logging import get_logger
from llm_pool.settings import SettingsError

log = get_logger(__name__)


def evicting(policy: str) -> bool:
    return policy.startswith(("allkeys-", "volatile-"))


async def check_server(redis: Redis) -> None:
    """Raise ``SettingsError`` if the server may evict the pool's keys; warn if it keeps nothing."""
    try:
        config = await redis.config_get("maxmemory-policy")
        config.update(await redis.config_get("appendonly"))
        config.update(await redis.config_get("save"))
    except ResponseError as exc:  # CONFIG refused: a managed service, or an ACL without it
        log.info("redis_config_unreadable", error=type(exc).__name__, detail=str(exc)[:120])
        return
    policy = str(config.get("maxmemory-policy", "noeviction"))
    if evicting(policy):
        raise SettingsError(
            f"the Redis server's maxmemory-policy is {policy!r}: when it is full it would evict queued "
            "jobs, leases, replies and heartbeats; set maxmemory-policy noeviction"
        )
    if config.get("appendonly") == "no" and not config.get("save"):
        log.warning(
            "redis_not_persistent",
            detail="appendonly no and no save points: a Redis restart loses every queued job "
            "(use appendonly yes, appendfsync everysec)",
        )
