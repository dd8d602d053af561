"""What one worker process holds for its lifetime: settings, connections, router, counters."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime

from redis.asyncio import Redis

from llm_pool.keys import Keys
from llm_pool.router import PoolRouter
from llm_pool.schemas import ErrorCode, Heartbeat
from llm_pool.settings import Settings
from llm_pool.version import __version__
from worker.cancellation import CancelWatcher
from worker.limits import Limiter
from worker.metrics import Metrics
from worker.outbox import Outbox


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


# Error replies that answer the caller's own request or choice, not a failure of the pool or its
# providers: a request that breaks the contract (or that a provider refused as invalid), one the
# caller cancelled, one whose own time budget (timeout_s) ran out, one over its tenant's limits.
CALLER_ERRORS = frozenset(
    {ErrorCode.INVALID_REQUEST, ErrorCode.CANCELLED, ErrorCode.TIMEOUT, ErrorCode.OVER_BUDGET}
)


@dataclass
class JobCounters:
    """Requests of this process: running now, and finished since it started (the heartbeat's)."""

    running: int = 0
    done: int = 0  # ok replies
    failed: int = 0  # error replies of any code: pool_errors + caller_errors
    pool_errors: int = 0  # providers_unavailable, internal
    caller_errors: int = 0  # CALLER_ERRORS
    by_code: dict[str, int] = field(default_factory=dict)

    def finished_ok(self) -> None:
        self.done += 1

    def finished_with(self, code: ErrorCode) -> None:
        self.failed += 1
        if code in CALLER_ERRORS:
            self.caller_errors += 1
        else:
            self.pool_errors += 1
        self.by_code[code.value] = self.by_code.get(code.value, 0) + 1


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
            jobs_pool_errors=self.counters.pool_errors,
            jobs_caller_errors=self.counters.caller_errors,
            errors_by_code=dict(self.counters.by_code),
        )
