"""``llm-pool serve-http``: the front door on uvicorn, one process (run more behind a balancer)."""

from __future__ import annotations

import asyncio
import sys

import uvicorn
from redis.exceptions import RedisError

from llm_pool.errors import redis_failure
from llm_pool.health import EXIT_ERROR, EXIT_OK, check, section_address
from llm_pool.http.app import create_app
from llm_pool.logging import configure_logging, get_logger
from llm_pool.settings import Settings

# On SIGTERM: stop accepting, then give open requests this long before closing them (a closed
# stream cancels its request in the pool).
GRACEFUL_SHUTDOWN_S = 30
EXIT_STARTUP_FAILED = 1

log = get_logger("llm_pool.http")


def serve(settings: Settings, host: str, port: int, prog: str) -> int:
    """Serve until SIGINT/SIGTERM. Exit 2 (one line on stderr) when Redis cannot be reached at
    start-up, 1 when the server cannot start (e.g. the port is taken), 0 after a clean shutdown."""
    try:
        asyncio.run(check(settings=settings))
    except (RedisError, OSError) as exc:
        print(f"{prog}: {redis_failure(section_address(settings.redis), exc)}", file=sys.stderr)
        return EXIT_ERROR
    configure_logging(settings.worker.log_format, settings.worker.log_level)
    log.info("http_starting", host=host, port=port, key_prefix=settings.redis.key_prefix)
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,  # uvicorn's loggers go through ours (JSON lines)
        access_log=False,  # the request-id middleware logs each request
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = uvicorn.Server(config)
    server.run()
    return EXIT_OK if server.started else EXIT_STARTUP_FAILED
