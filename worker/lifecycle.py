"""Start-up and shutdown of a worker process: router once, outbox, heartbeat, cancel watcher."""

from __future__ import annotations

from typing import Any

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

log = get_logger("worker")


def make_hooks(settings: Settings) -> tuple[Any, Any]:
    """arq ``on_startup`` and ``on_shutdown`` for these settings."""

    async def on_startup(ctx: dict[str, Any]) -> None:
        redis = ctx["redis"]
        await check_server(redis)
        keys = Keys(settings.redis.key_prefix)
        worker_id = settings.worker.worker_id or default_worker_id()
        router = PoolRouter(settings)
        counters = JobCounters()
        metrics = Metrics(list(settings.groups), lambda: counters.running)
        outbox = Outbox(
            sync_redis(settings.redis),
            min_replicas_ack=settings.redis.min_replicas_ack,
            replica_ack_timeout_ms=settings.redis.replica_ack_timeout_ms,
            on_ack_shortfall=lambda _acknowledged: metrics.replica_ack_shortfalls.inc(),
        )
        cancels = CancelWatcher(redis, keys.cancel)
        if settings.metrics.port:
            metrics.serve(
                settings.metrics.host,
                settings.metrics.port,
                sync_redis(settings.redis, socket_timeout=2, socket_connect_timeout=2),
                keys.queue,
            )
        state = WorkerState(
            settings=settings,
            keys=keys,
            redis=redis,
            router=router,
            outbox=outbox,
            cancels=cancels,
            limiter=Limiter(redis, keys),
            metrics=metrics,
            worker_id=worker_id,
            counters=counters,
        )
        heartbeat = HeartbeatTask(
            redis, keys.heartbeat(worker_id), settings.worker.heartbeat_interval_s, state.heartbeat
        )
        await router.warm_up()
        outbox.start()
        cancels.start()
        await heartbeat.beat()
        heartbeat.start()
        ctx["state"] = state
        ctx["heartbeat"] = heartbeat
        log.info(
            "worker_started",
            worker_id=worker_id,
            queue=keys.queue,
            groups=router.groups,
            skipped_deployments=len(router.skipped),
            max_jobs=settings.worker.max_jobs,
        )

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        state: WorkerState | None = ctx.get("state")
        heartbeat: HeartbeatTask | None = ctx.get("heartbeat")
        if heartbeat is not None:
            await heartbeat.stop()
        if state is not None:
            await state.cancels.stop()
            await state.outbox.close()
            log.info(
                "worker_stopped",
                worker_id=state.worker_id,
                jobs_done=state.counters.done,
                jobs_failed=state.counters.failed,
            )

    return on_startup, on_shutdown
