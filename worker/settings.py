"""arq ``WorkerSettings`` for the pool, built from ``settings.toml`` and the environment.

arq reads the attributes from the class's own ``__dict__``, so ``worker_settings`` builds a fresh
class with every attribute set on it; ``WorkerSettings`` is that class for the current settings,
which is what ``arq worker.settings.WorkerSettings`` would load.
"""

from __future__ import annotations

from typing import Any

from arq.worker import get_kwargs

from llm_pool.connections import arq_redis, arq_settings, sync_redis
from llm_pool.keys import Keys
from llm_pool.serialization import job_decoder, json_dumps
from llm_pool.settings import Settings, load_settings
from worker.jobs import complete, complete_stream
from worker.lifecycle import make_hooks
from worker.loop import PoolWorker


def worker_settings(settings: Settings) -> type:
    on_startup, on_shutdown = make_hooks(settings)
    attributes: dict[str, Any] = {
        "functions": [complete, complete_stream],
        "queue_name": settings.queue_name,
        "redis_settings": arq_settings(settings.redis),
        # Workers never unpickle: the envelope is JSON, and an undecodable one becomes a reply.
        "job_serializer": json_dumps,
        "job_deserializer": job_decoder(settings.worker.max_payload_bytes),
        "max_jobs": settings.worker.max_jobs,
        "poll_delay": settings.worker.poll_delay_s,
        "queue_read_limit": settings.worker.pickup_batch,
        # Deadlines are enforced per request; arq's own timeout is only the outer bound.
        "job_timeout": settings.worker.max_timeout_s + 30,
        "keep_result": settings.worker.reply_ttl_s,
        # Our job functions end a request after worker.max_tries runs with a reply; arq must
        # never drop it silently first.
        "max_tries": 1_000_000,
        "job_completion_wait": int(settings.worker.drain_grace_s),
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "log_results": False,
        "health_check_key": f"{settings.redis.key_prefix}:arq-health-check",
    }
    return type("WorkerSettings", (), attributes)


def create_pool_worker(settings: Settings) -> PoolWorker:
    """The worker ``python -m worker`` runs: arq's, woken by one token per job and load-aware."""
    arq_kwargs: dict[str, Any] = dict(get_kwargs(worker_settings(settings)))
    # With Sentinel, the connection comes from llm_pool.connections (arq's own would carry neither
    # the Sentinels' password nor the TLS options).
    redis_pool = arq_redis(settings.redis, settings.queue_name)
    if redis_pool is not None:
        redis_pool.job_serializer = arq_kwargs["job_serializer"]
        redis_pool.job_deserializer = arq_kwargs["job_deserializer"]
        arq_kwargs["redis_pool"] = redis_pool
    return PoolWorker(
        **arq_kwargs,
        keys=Keys(settings.redis.key_prefix),
        tenants=settings.tenants,
        max_loop_lag_s=settings.worker.max_loop_lag_ms / 1000,
        job_lease_s=settings.worker.job_lease_s,
        lease_redis=sync_redis(settings.redis),
    )


WorkerSettings = worker_settings(load_settings())
