"""A plain arq worker with a no-op job: the baseline of issue 3's round-trip comparison.

Run as ``python -m bench.arq_noop QUEUE POLL_DELAY``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from arq.connections import RedisSettings
from arq.worker import run_worker


async def noop(ctx: dict[str, Any]) -> int:
    return 1


def main() -> None:
    queue, poll_delay = sys.argv[1], float(sys.argv[2])
    settings: dict[str, Any] = {
        "functions": [noop],
        "queue_name": queue,
        "redis_settings": RedisSettings.from_dsn(
            sys.argv[3] if len(sys.argv) > 3 else "redis://127.0.0.1:6379/0"
        ),
        "poll_delay": poll_delay,
        "job_serializer": lambda o: json.dumps(o).encode(),
        "job_deserializer": json.loads,
        "handle_signals": True,
    }
    run_worker(settings)


if __name__ == "__main__":
    main()
