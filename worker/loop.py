"""arq's worker with a push wake-up and load-aware admission.

arq polls its queue every ``poll_delay`` and has no way to be woken. ``PoolWorker`` keeps arq's job
handling (claiming, retries, results: all arq's own code and key formats) and replaces only the
outer loop: it blocks on the ``P:wake`` channel, which callers publish to when they enqueue, with the
poll interval as a fallback for jobs enqueued by plain arq. It also stops taking jobs while its
event loop lags (it is saturated), leaving them to less loaded workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from arq.connections import create_pool
from arq.worker import Worker
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from llm_pool.logging import get_logger
from llm_pool.tasks import cancel_and_wait

log = get_logger("worker.loop")


class LagMonitor:
    """Measures how late the event loop runs a timer: a saturated worker's loop runs late."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self._interval_s = interval_s
        self.lag_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="lag-monitor")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self._interval_s)
            late = time.perf_counter() - started - self._interval_s
            # Rise at once, decay over a few ticks: one quiet tick does not mean capacity.
            self.lag_s = max(late, self.lag_s * 0.7)


class PoolWorker(Worker):
    def __init__(self, *, wake_channel: str, max_loop_lag_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wake_channel = wake_channel
        self._max_loop_lag_s = max_loop_lag_s
        self._wake = asyncio.Event()
        self._lag = LagMonitor()
        self._pubsub: PubSub | None = None
        self._wake_reader: asyncio.Task[None] | None = None

    @property
    def loop_lag_s(self) -> float:
        return self._lag.lag_s

    async def main(self) -> None:
        if self._pool is None:
            self._pool = await create_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        self.ctx["redis"] = self.pool
        self.ctx["worker"] = self
        if self.on_startup:
            await self.on_startup(self.ctx)
        self._lag.start()
        await self._listen_for_wakeups()
        try:
            while True:
                self.allow_pick_jobs = self._lag.lag_s <= self._max_loop_lag_s
                running_before = len(self.tasks)
                await self._poll_iteration()
                if self.allow_pick_jobs and len(self.tasks) - running_before >= self.queue_read_limit:
                    continue  # took a full batch: there may be more
                # While saturated, look again soon: the lag may pass before anyone wakes us.
                wait_s = self.poll_delay_s if self.allow_pick_jobs else min(self.poll_delay_s, 0.05)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait_s)
                self._wake.clear()
        finally:
            await cancel_and_wait(self._wake_reader)
            if self._pubsub is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            await self._lag.stop()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        await super().start_jobs(job_ids)
        for job_id in job_ids:
            task = self.tasks.get(job_id.decode())
            if task is not None and not task.done():
                # Runs after arq's own callback has freed the slot: look at the queue again.
                task.add_done_callback(lambda _: self._wake.set())

    async def _listen_for_wakeups(self) -> None:
        self._pubsub = self.pool.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self._wake_channel)
        self._wake_reader = asyncio.get_running_loop().create_task(self._read_wakeups(), name="wake")

    async def _read_wakeups(self) -> None:
        assert self._pubsub is not None
        failing = False
        while True:
            try:
                message = await self._pubsub.get_message(timeout=30.0)
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("wake_channel_lost", error=type(exc).__name__)
                    failing = True
                self._wake.set()  # fall back to polling until the channel is back
                await asyncio.sleep(1.0)
                continue
            if failing:
                log.info("wake_channel_restored")
                failing = False
            if message is not None:
                self._wake.set()
