"""``python -m llm_pool.health`` (the same as ``llm-pool health``): is the pool, or one worker, alive?

The pool is healthy when at least one ``P:heartbeat:*`` key exists (contract section 4); with
``--worker-id ID`` only that worker's key counts, which makes it a liveness probe for one process.

Exit codes (the same for every ``llm-pool`` command):
  0  healthy
  1  unhealthy: no live worker, or no heartbeat of that worker
  2  usage error, unreadable settings, or Redis unreachable (one line on stderr: where and what to check)

Output: ``healthy: ...`` on stdout, ``unhealthy: ...`` on stderr; ``--json`` prints
``{"healthy": ..., "detail": ...}`` on stdout instead; ``--quiet`` prints nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from pydantic import ValidationError
from redis.exceptions import RedisError

from llm_pool.connections import async_redis, masked_url
from llm_pool.errors import redis_failure
from llm_pool.keys import Keys
from llm_pool.pool_state import live_workers
from llm_pool.schemas import Heartbeat
from llm_pool.settings import RedisSection, Settings, SettingsError, load_settings

EXIT_OK = 0
EXIT_NOT_FOUND = 1  # unhealthy, or the thing asked about does not exist
EXIT_ERROR = 2  # usage, settings, or Redis


async def check(
    worker_id: str | None = None, redis_url: str | None = None, settings: Settings | None = None
) -> tuple[bool, str]:
    """(healthy, one line saying why); raises ``RedisError`` / ``OSError`` when Redis cannot answer."""
    settings = settings or load_settings()
    keys = Keys(settings.redis.key_prefix)
    section = settings.redis.model_copy(update={"url": redis_url}) if redis_url else settings.redis
    redis = async_redis(section, socket_timeout=5, socket_connect_timeout=5)
    try:
        if worker_id is not None:
            raw = await redis.get(keys.heartbeat(worker_id))
            if raw is None:
                return False, f"worker {worker_id}: no heartbeat ({keys.heartbeat(worker_id)} is absent)"
            try:
                beat = Heartbeat.model_validate_json(raw)
            except ValidationError:
                return True, f"worker {worker_id}: alive (its heartbeat is not one this version reads)"
            return True, f"worker {worker_id}: alive, {beat.jobs_running} running, last beat {beat.ts}"
        workers = await live_workers(redis, keys)
        if not workers:
            return False, f"no live workers on {keys.queue} (no {keys.heartbeat_pattern} key)"
        running = sum(w.jobs_running for w in workers)
        return True, f"{len(workers)} live worker(s) on {keys.queue}, {running} job(s) running"
    finally:
        await redis.aclose()


def section_address(section: RedisSection) -> str:
    """Where a command connects, for messages: the masked URL, and the Sentinels when set."""
    if section.sentinels:
        return (
            f"{masked_url(section.url)} (primary {section.sentinel_master!r} of Sentinels "
            f"{','.join(section.sentinels)})"
        )
    return masked_url(section.url)


def settings_or_exit_code(prog: str) -> Settings | int:
    """The settings, or ``EXIT_ERROR`` after one line on stderr saying what is wrong with them."""
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"{prog}: settings: {exc}", file=sys.stderr)
        return EXIT_ERROR


def report(worker_id: str | None, *, as_json: bool, quiet: bool, prog: str) -> int:
    """Check, print the outcome as documented above, and return the exit code."""
    settings = settings_or_exit_code(prog)
    if isinstance(settings, int):
        return settings
    try:
        healthy, why = asyncio.run(check(worker_id, settings=settings))
    except (RedisError, OSError) as exc:
        if not quiet:
            print(f"{prog}: {redis_failure(section_address(settings.redis), exc)}", file=sys.stderr)
        return EXIT_ERROR
    if quiet:
        pass
    elif as_json:
        print(json.dumps({"healthy": healthy, "detail": why}))
    else:
        print(("healthy: " if healthy else "unhealthy: ") + why, file=sys.stdout if healthy else sys.stderr)
    return EXIT_OK if healthy else EXIT_NOT_FOUND


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the health check, for ``python -m llm_pool.health`` and ``llm-pool health``."""
    parser.add_argument("--worker-id", help="check this worker only (a liveness probe for one process)")
    parser.add_argument("--quiet", action="store_true", help="print nothing, only set the exit code")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llm_pool.health", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    return report(args.worker_id, as_json=args.json, quiet=args.quiet, prog=parser.prog)


if __name__ == "__main__":
    sys.exit(main())
