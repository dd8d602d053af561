"""arq's worker with a push wake-up, atomic claims with short leases, and load-aware admission.

arq's worker supplies the process around the jobs (signals, drain, health check). ``PoolWorker``
replaces how jobs are found and claimed, which in arq 0.28 has three problems for an interactive
pool, and runs each job with ``worker/runner.py`` in arq's key protocol (arq's ``run_job`` lets
jobs that fail before their function runs go unanswered, and keeps their prompts in results):

- arq polls every ``poll_delay``; here an idle worker blocks on ``P:wakeups``, one token per new
  job, so each job wakes one worker (``worker/wakeups.py``), and polls only as a fallback;
- arq claims a job with a lock that lasts ``job_timeout`` + 10 s, so a killed worker's jobs wait
  that long (310 s by default) to run again; here the lock is a lease of ``job_lease_s`` that the
  worker renews while the job runs, so a dead worker's jobs run again within about a lease;
- arq reads the head of the queue, running jobs included (they stay in the sorted set until they
  finish), so a worker can see only jobs that are already running and starve new ones, and it
  serves the queue first-in first-out, so one tenant's backlog delays every other tenant; here one
  Lua script (``worker/claim.py``) claims waiting jobs round-robin over tenants, within each
  tenant's concurrency cap, atomically (one round trip).

The claim is arq's own protocol (``SET arq:in-progress:{id} NX``), so plain arq workers on the same
queue cooperate. The worker also takes no new jobs while its event loop lags, or while draining.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import threading
import time
from typing import Any

from arq.connections import create_pool
from arq.constants import in_progress_key_prefix
from arq.worker import Worker
from redis import Redis as SyncRedis
from redis.exceptions import RedisError

from llm_pool.keys import Keys
from llm_pool.logging import OutageLog, get_logger
from llm_pool.settings import TenantsSection
from llm_pool.tasks import cancel_and_wait
from worker.claim import Claimer
from worker.runner import JobRunner
from worker.state import WorkerState
from worker.wakeups import Wakeups

log = get_logger("worker.loop")

LOAD_BACKOFF_PER_JOB_S = 0.0005
LOAD_BACKOFF_CAP_S = 0.01


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


class LeaseKeeper:
    """Renews the claims (``arq:in-progress:{id}``) of this process's running jobs, from a thread.

    A saturated event loop runs iterations of up to a second under load, and an asyncio round trip
    then takes several of them: renewals from the loop took 7 to 19 s with 100 zero-delay streams
    per worker, the 15 s leases lapsed, and other workers ran the same jobs again. A thread with its
    own connection renews on time as long as the process is alive, which is what a lease means.
    """

    def __init__(self, redis: SyncRedis, lease_ms: int) -> None:
        self._redis = redis
        self._lease_ms = lease_ms
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leases", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._redis.close()

    def keep(self, job_id: str) -> None:
        with self._lock:
            self._running.add(job_id)

    def drop(self, job_id: str) -> None:
        with self._lock:
            self._running.discard(job_id)

    def _run(self) -> None:
        while not self._stop.wait(self._lease_ms / 3000):
            with self._lock:
                running = list(self._running)
            if not running:
                continue
            try:
                pipe = self._redis.pipeline(transaction=False)
                for job_id in running:
                    pipe.pexpire(in_progress_key_prefix + job_id, self._lease_ms)
                pipe.execute()
            except (RedisError, OSError):
                continue  # reported by the main loop; the next renewal tries again


class PoolWorker(Worker):
    def __init__(
        self,
        *,
        keys: Keys,
        tenants: TenantsSection,
        max_loop_lag_s: float,
        job_lease_s: float,
        lease_redis: SyncRedis,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._grace_s = float(kwargs.get("job_completion_wait") or 0)
        self._keys = keys
        self._tenants = tenants
        self._max_loop_lag_s = max_loop_lag_s
        self._lease_ms = int(job_lease_s * 1000)
        # arq's own claims (a plain arq worker) and retries use this as the lock's lifetime too.
        self.in_progress_timeout_s = job_lease_s
        self._wake = asyncio.Event()
        # Set while the worker would claim: a free slot, not draining, its event loop on time. Only
        # then does it take wake-up tokens; a worker that could not claim leaves them to others.
        self._room = asyncio.Event()
        self._room.set()
        self._lag = LagMonitor()
        self._wakeups: Wakeups | None = None
        self._draining = False
        self._redis_outage = OutageLog(log, "redis_unavailable", "redis_available_again")
        self._claimer: Claimer | None = None
        self._runner: JobRunner | None = None
        self._last_look = 0.0
        self._leases = LeaseKeeper(lease_redis, self._lease_ms)

    def handle_sig_wait_for_completion(self, signum: signal.Signals) -> None:
        """SIGTERM/SIGINT: take no new jobs, let running ones finish within the grace period;
        arq then cancels what is left, and a cancelled job goes back to the queue."""
        self._draining = True
        self._room.clear()
        log.info("worker_draining", running=len(self.tasks), grace_s=self._grace_s)
        super().handle_sig_wait_for_completion(signum)

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
        if self.on_startup:
            await self.on_startup(self.ctx)
        state: WorkerState = self.ctx["state"]
        limits = state.settings.worker
        self._claimer = Claimer(
            self.pool,
            self._keys,
            self._tenants,
            lease_ms=self._lease_ms,
            max_clock_skew_ms=int(limits.max_clock_skew_s * 1000),
            max_envelope_bytes=limits.max_payload_bytes,
        )
        self._runner = JobRunner(self.pool, self._keys, state, self.queue_name, limits.reply_ttl_s)
        self._wakeups = Wakeups(
            self.pool,
            self._keys,
            wake=self._wake,
            room=self._room,
            busy_delay_s=lambda: min(LOAD_BACKOFF_CAP_S, self.job_counter * LOAD_BACKOFF_PER_JOB_S),
            worker_id=state.worker_id,
            queue_notifications=limits.queue_notifications,
        )
        self._lag.start()
        self._wakeups.start()
        self._leases.start()
        try:
            woken = True
            while True:
                self.allow_pick_jobs = not self._draining and self._lag.lag_s <= self._max_loop_lag_s
                self._update_room()
                claimed = await self._iteration(woken)
                if claimed >= self.queue_read_limit:
                    continue  # took a full batch: there may be more
                # While saturated or failing, look again soon: nobody may wake us.
                wait_s = self.poll_delay_s if self.allow_pick_jobs else min(self.poll_delay_s, 0.05)
                if self._redis_outage.failing:
                    wait_s = 1.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait_s)
                woken = self._wake.is_set()
                self._wake.clear()
        finally:
            if self._wakeups is not None:
                await self._wakeups.stop()
            await asyncio.to_thread(self._leases.stop)
            await self._lag.stop()

    async def _iteration(self, woken: bool) -> int:
        """Claim and start what fits, reap finished jobs, run arq's periodic chores.

        ``woken``: by a wake-up or a finished job; else this is the fallback poll, which looks at
        an empty queue with one EXISTS instead of the claim script."""
        claimed = 0
        try:
            if not woken and not self.job_counter and not await self.pool.exists(self.queue_name):
                pass  # idle, and nothing queued
            elif self.allow_pick_jobs and self.job_counter < self.max_jobs:
                free = self.max_jobs - self.job_counter
                claimed = await self._claim_and_start(min(self.queue_read_limit, free))
            elif not self._draining and time.monotonic() - self._last_look >= self.poll_delay_s:
                # Full or lagging: claim nothing, but let the script stamp jobs enqueued by plain
                # arq as they arrive, so that their deadlines count from then, not from when a
                # worker has room (RELIABILITY.md, clocks).
                assert self._claimer is not None, "main() sets it up"
                await self._claimer.claim(0)
                self._last_look = time.monotonic()
            await self.heart_beat()
        except (RedisError, OSError) as exc:
            self._redis_outage.failed(exc)
        else:
            self._redis_outage.succeeded()
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                if not task.cancelled() and task.exception() is not None:
                    # arq could not record the job (Redis went away mid-way); its lease expires
                    # and it runs again elsewhere.
                    error = type(task.exception()).__name__
                    log.warning("job_bookkeeping_failed", request_id=job_id, error=error)
        return claimed

    async def _claim_and_start(self, count: int) -> int:
        assert self._claimer is not None and self._runner is not None, "main() sets them up"
        claimed = await self._claimer.claim(count)
        self._last_look = time.monotonic()
        # Deadlines count in Redis's clock: this machine's may be off.
        redis_ahead_ms = claimed.redis_now_ms - int(time.time() * 1000)
        for job in claimed.jobs:
            await self.sem.acquire()
            self.job_counter += 1
            task = self.loop.create_task(self._runner.run(job.job_id, job.due_ms - redis_ahead_ms))
            task.add_done_callback(functools.partial(self._job_finished, job.job_id))
            self.tasks[job.job_id] = task
            self._leases.keep(job.job_id)
        self._update_room()
        return len(claimed.jobs)

    def _update_room(self) -> None:
        if self.allow_pick_jobs and self.job_counter < self.max_jobs:
            self._room.set()
        else:
            self._room.clear()

    def _job_finished(self, job_id: str, _: asyncio.Task[Any]) -> None:
        self._leases.drop(job_id)
        self.job_counter -= 1
        self.sem.release()
        self._update_room()
        self._wake.set()  # a slot is free: look at the queue again
