"""``python -m llm_pool.health``: exit 0 when the pool (or one worker) is alive, 1 otherwise.

The pool is healthy when at least one ``P:heartbeat:*`` key exists (contract section 4); with
``--worker-id ID`` only that worker's key counts, which makes it a liveness probe for one process.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from redis.asyncio import Redis
from redis.exceptions import RedisError

from llm_pool.connections import async_redis
from llm_pool.keys import Keys
from llm_pool.schemas import Heartbeat
from llm_pool.settings import SettingsError, load_settings


async def live_workers(redis: Redis, keys: Keys) -> list[Heartbeat]:
    """Every worker whose heartbeat key exists."""
    names = [name async for name in redis.scan_iter(match=keys.heartbeat_pattern, count=500)]
    values = await redis.mget(names) if names else []
    return [Heartbeat.model_validate_json(v) for v in values if v is not None]


async def check(worker_id: str | None = None, redis_url: str | None = None) -> tuple[bool, str]:
    """(healthy, one line saying why)."""
    settings = load_settings()
    keys = Keys(settings.redis.key_prefix)
    section = settings.redis.model_copy(update={"url": redis_url}) if redis_url else settings.redis
    redis = async_redis(section, socket_timeout=5, socket_connect_timeout=5)
    try:
        if worker_id is not None:
            raw = await redis.get(keys.heartbeat(worker_id))
            if raw is None:
                return False, f"worker {worker_id}: no heartbeat"
            beat = Heartbeat.model_validate_json(raw)
            return True, f"worker {worker_id}: alive, {beat.jobs_running} running, last beat {beat.ts}"
        workers = await live_workers(redis, keys)
        if not workers:
            return False, f"no live workers on {keys.queue}"
        running = sum(w.jobs_running for w in workers)
        return True, f"{len(workers)} live worker(s) on {keys.queue}, {running} job(s) running"
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_pool.health", description=__doc__)
    parser.add_argument("--worker-id", help="check this worker only")
    parser.add_argument("--quiet", action="store_true", help="print nothing, only set the exit code")
    args = parser.parse_args(argv)
    try:
        healthy, why = asyncio.run(check(args.worker_id))
    except (RedisError, OSError, SettingsError) as exc:
        healthy, why = False, f"cannot check: {type(exc).__name__}: {exc}"
    if not args.quiet:
        print(("healthy: " if healthy else "unhealthy: ") + why, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
