"""Start-up and shutdown of a worker process's services: router, outbox, cancel watcher, heartbeat.

``start_services`` checks the Redis server, builds the router, takes the worker's identity (its
first heartbeat) and starts what every job uses; ``stop_services`` stops them in reverse. The
worker's loop (worker/loop.py) calls both.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from llm_pool.connections import sync_redis
from llm_pool.keys import Keys
from llm_pool.logging import get_logger
from llm_pool.router import PoolRouter
from llm_pool.settings import Settings
from worker.cancellation import CancelWatcher
from worker.heartbeat import HeartbeatTask
from worker.limits import Limiter
from worker.metrics import Metrics
from worker.outbox import Outbox
from worker.server_check import check_server
from worker.state import JobCounters, WorkerState, default_worker_id

# Requests running at most, for a request starting to write from the event loop (worker/outbox.py).
QUIET_RUNNING = 2

log = get_logger("worker")


@dataclass
class Services:
    """What a running worker process holds: its state (what jobs use) and its heartbeat."""

    state: WorkerState
    heartbeat: HeartbeatTask


async def start_services(settings: Settings, redis: Redis) -> Services:
    """Check the server, take the worker id, build the router and start the background services.

    Raises ``SettingsError`` for a server that may evict the pool's keys and ``WorkerIdInUse`` when
    another live worker has this ``worker.worker_id``."""
    await check_server(redis)
    keys = Keys(settings.redis.key_prefix)
    worker_id = settings.worker.worker_id or default_worker_id()
    counters = JobCounters()
    metrics = Metrics(list(settings.groups), lambda: counters.running)
    router = PoolRouter(settings)
    state = WorkerState(
        settings=settings,
        keys=keys,
        redis=redis,
        router=router,
        outbox=Outbox(
            sync_redis(settings.redis),
            min_replicas_ack=settings.redis.min_replicas_ack,
            replica_ack_timeout_ms=settings.redis.replica_ack_timeout_ms,
            on_ack_shortfall=lambda _acknowledged: metrics.replica_ack_shortfalls.inc(),
            direct=redis,
            quiet=lambda: counters.running <= QUIET_RUNNING,
        ),
        cancels=CancelWatcher(redis, keys.cancel),
        limiter=Limiter(redis, keys),
        metrics=metrics,
        worker_id=worker_id,
        counters=counters,
    )
    heartbeat = HeartbeatTask(
        redis, keys.heartbeat(worker_id), settings.worker.heartbeat_interval_s, state.heartbeat
    )
    await router.warm_up()
    if settings.metrics.port:
        metrics.serve(
            settings.metrics.host,
            settings.metrics.port,
            sync_redis(settings.redis, socket_timeout=2, socket_connect_timeout=2),
            keys.queue,
        )
    await heartbeat.take_identity()  # the first beat: from here on the worker is in the pool
    state.outbox.start()
    state.cancels.start()
    heartbeat.start()
    log.info(
        "worker_started",
        worker_id=worker_id,
        queue=keys.queue,
        groups=router.groups,
        skipped_deployments=len(router.skipped),
        max_jobs=settings.worker.max_jobs,
    )
    return Services(state=state, heartbeat=heartbeat)


async def stop_services(services: Services) -> None:
    """Leave the pool (heartbeat key gone), then stop the cancel watcher and flush the outbox."""
    state = services.state
    await services.heartbeat.stop()
    await state.cancels.stop()
    await state.outbox.close()
    log.info(
        "worker_stopped",
        worker_id=state.worker_id,
        jobs_done=state.counters.done,
        jobs_failed=state.counters.failed,
    )
