"""``python -m worker``: one worker process (the Procfile's ``worker:`` line).

Exit status: 0 after a drain (SIGTERM/SIGINT), 2 when it cannot start (settings, Redis unreachable
or evicting, the worker id taken), with one line on standard error saying why.
"""

from __future__ import annotations

import sys

from llm_pool.connections import async_redis, sync_redis
from llm_pool.logging import configure_logging, get_logger
from llm_pool.settings import SettingsError, load_settings


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"llm-pool worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.worker.log_format, settings.worker.log_level)
    # Imports LiteLLM (seconds): after logging is set up.
    from worker.heartbeat import WorkerIdInUse
    from worker.loop import PoolWorker, RedisUnreachable

    get_logger("worker").info("worker_starting", queue=settings.queue_name, settings=settings.source)
    worker = PoolWorker(settings, redis=async_redis(settings.redis), lease_redis=sync_redis(settings.redis))
    try:
        worker.run()
    except (SettingsError, RedisUnreachable, WorkerIdInUse) as exc:
        print(f"llm-pool worker: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
