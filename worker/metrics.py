"""Prometheus metrics of one worker process, served on ``metrics.port`` (off when 0).

Every label value is bounded: groups are the configured ones (anything else a caller sent is
counted as ``other``), statuses are ``ok`` or an error code, deployments are the configured
``model`` strings. Queue depth is read from Redis when Prometheus scrapes, so an unscraped
worker sends Redis nothing for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis import Redis as SyncRedis
from redis.exceptions import RedisError

from llm_pool.logging import get_logger
from llm_pool.settings import SettingsError

log = get_logger("worker.metrics")

OTHER_GROUP = "other"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _QueueDepth(Collector):
    """``llm_pool_queue_depth``: jobs in the queue (waiting and running), read at scrape time."""

    def __init__(self, redis: SyncRedis, queue: str) -> None:
        self._redis = redis
        self._queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("llm_pool_queue_depth", "Jobs in the queue, waiting or running.")
        # No sample rather than a wrong one when Redis is away; the worker logs outages itself.
        with contextlib.suppress(RedisError, OSError):
            family.add_metric([], float(cast(int, self._redis.zcard(self._queue))))
        yield family


class Metrics:
    """The worker's counters and histograms; ``serve`` exposes them over HTTP."""

    def __init__(self, groups: list[str], running: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self._groups = frozenset(groups)
        r = self.registry
        self.requests = Counter(
            "llm_pool_requests",
            "Requests ended, by group asked for, status (ok or error code) and deployment.",
            ["group", "status", "deployment"],
            registry=r,
        )
        self.latency = Histogram(
            "llm_pool_request_latency_seconds",
            "From the start of a request on a worker to its reply.",
            ["group"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "llm_pool_time_to_first_token_seconds",
            "From the start of a streamed request on a worker to its first chunk.",
            ["group"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "llm_pool_queue_wait_seconds",
            "From enqueue to the start of the request on a worker.",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "llm_pool_tokens",
            "Tokens used, by group and kind (prompt, completion).",
            ["group", "kind"],
            registry=r,
        )
        self.cost = Counter("llm_pool_cost_usd", "Provider cost in USD, by group.", ["group"], registry=r)
        self.fallbacks = Counter(
            "llm_pool_fallbacks",
            "Requests answered by another group than the one asked for.",
            ["group"],
            registry=r,
        )
        self.retries = Counter(
            "llm_pool_retries",
            "Retries by the pool: rate_limited (waited for retry-after), stream_resumed (on a "
            "fallback after tokens), rerun (the request's earlier worker died).",
            ["group", "reason"],
            registry=r,
        )
        self.relayed = Counter(
            "llm_pool_wake_relay_jobs",
            "Jobs enqueued by plain arq that this worker's wake relay saw, by how it woke a worker: "
            "token (pushed on the wake-up list) or here (this worker was idle and claimed it).",
            ["how"],
            registry=r,
        )
        self.replica_ack_shortfalls = Counter(
            "llm_pool_replica_ack_shortfalls",
            "Final writes confirmed by fewer replicas than redis.min_replicas_ack (WAIT), per WAIT.",
            registry=r,
        )
        running_gauge = Gauge("llm_pool_jobs_running", "Requests running on this worker.", registry=r)
        running_gauge.set_function(lambda: float(running()))

    def group(self, name: str | None) -> str:
        """The label for a group name a caller sent: configured groups only."""
        return name if name is not None and name in self._groups else OTHER_GROUP

    def serve(self, host: str, port: int, redis: SyncRedis, queue: str) -> None:
        """Serve /metrics from a thread; a port that cannot be bound stops the worker, saying why."""
        self.registry.register(_QueueDepth(redis, queue))
        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise SettingsError(
                f"metrics.port {port} on {host}: {exc.strerror or exc}; every worker process on a "
                "machine needs its own port (LLM_POOL__METRICS__PORT), or 0 to turn metrics off"
            ) from None
        log.info("metrics_serving", host=host, port=port)
