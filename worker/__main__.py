"""``python -m worker``: one worker process (the Procfile's ``worker:`` line)."""

from __future__ import annotations

import sys

from llm_pool.logging import configure_logging, get_logger
from llm_pool.settings import SettingsError, load_settings


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"llm-pool worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.worker.log_format, settings.worker.log_level)
    from worker.settings import create_pool_worker  # imports LiteLLM (seconds); after logging is set up

    get_logger("worker").info("worker_starting", queue=settings.queue_name, settings=settings.source)
    try:
        create_pool_worker(settings).run()
    except SettingsError as exc:  # found only at start-up, e.g. a metrics port already taken
        print(f"llm-pool worker: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
