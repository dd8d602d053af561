"""What one worker process holds for its lifetime: settings, connections, router, counters."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime

from redis.asyncio import Redis

from llm_pool.keys import Keys
from llm_pool.router import PoolRouter
from llm_pool.schemas import Heartbeat
from llm_pool.settings import Settings
from llm_pool.version import __version__
from worker.cancellation import CancelWatcher
from worker.limits import Limiter
from worker.metrics import Metrics
from worker.outbox import Outbox


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class JobCounters:
    running: int = 0
    done: int = 0
    failed: int = 0


@dataclass
class WorkerState:
    settings: Settings
    keys: Keys
    redis: Redis
    router: PoolRouter
    outbox: Outbox
    cancels: CancelWatcher
    limiter: Limiter
    metrics: Metrics
    worker_id: str
    host: str = field(default_factory=socket.gethostname)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    counters: JobCounters = field(default_factory=JobCounters)

    def heartbeat(self) -> Heartbeat:
        return Heartbeat(
            worker_id=self.worker_id,
            host=self.host,
            pid=os.getpid(),
            version=__version__,
            started_at=self.started_at.isoformat(),
            ts=datetime.now(UTC).isoformat(),
            queue=self.keys.queue,
            max_jobs=self.settings.worker.max_jobs,
            jobs_running=self.counters.running,
            jobs_done=self.counters.done,
            jobs_failed=self.counters.failed,
            groups=self.router.groups,
        )
