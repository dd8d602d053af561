"""The worker process's own loop: start -> upkeep + claim loop -> drain -> stop.

No arq ``Worker`` is involved; jobs stay in arq's format and key protocol (worker/runner.py), so
callers that enqueue with plain arq and read ``Job.status()`` or ``Job.result()`` keep
working. What the loop does differently from arq's, for an interactive pool:

- an idle worker blocks on ``P:wakeups``, one token per new job, so each job wakes one worker
  (``worker/wakeups.py``); it polls only as a fallback (``worker.poll_delay_s``);
- a claim is a lease of ``worker.job_lease_s`` that a thread renews while the job runs
  (``worker/leases.py``), not a lock of ``job_timeout`` + 10 s: a killed worker's jobs run again
  within about a lease;
- one Lua script (``worker/claim.py``) claims waiting jobs round-robin over tenants, within each
  tenant's concurrency cap, in one round trip; it never hands out jobs that are already running;
- the worker takes no new jobs while its event loop lags (``worker.max_loop_lag_ms``), or while
  draining: SIGTERM or SIGINT lets running jobs finish within ``worker.drain_grace_s``, then hands
  the rest back to the queue; a second signal hands them back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import time

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from llm_pool.errors import redis_address
from llm_pool.keys import Keys
from llm_pool.logging import OutageLog, get_logger
from llm_pool.settings import Settings
from llm_pool.tasks import cancel_and_wait
from worker.claim import Claimer
from worker.lag import LagMonitor
from worker.leases import LeaseKeeper
from worker.lifecycle import Services, start_services, stop_services
from worker.runner import JobRunner
from worker.wakeups import Wakeups

log = get_logger("worker.loop")

LOAD_BACKOFF_PER_JOB_S = 0.0005
LOAD_BACKOFF_CAP_S = 0.01
OUTAGE_POLL_S = 1.0  # while Redis is away, how often the loop looks again
BUSY_POLL_S = 0.05  # while full or lagging: nobody wakes the worker when it has room again
CONNECT_DELAYS_S = (0.0, 0.5, 1.0, 2.0)  # a Redis that is not up yet (a container starting)


class RedisUnreachable(Exception):
    """The worker could not reach Redis at start-up; the message names the address and what to check."""


class PoolWorker:
    """One worker process: ``PoolWorker(settings, redis=..., lease_redis=...).run()``."""

    def __init__(self, settings: Settings, *, redis: Redis, lease_redis: SyncRedis) -> None:
        limits = settings.worker
        self._settings = settings
        self._redis = redis
        self._keys = Keys(settings.redis.key_prefix)
        self._queue = settings.queue_name
        self._max_jobs = limits.max_jobs
        self._batch = limits.pickup_batch
        self._poll_delay_s = limits.poll_delay_s
        self._grace_s = limits.drain_grace_s
        self._max_loop_lag_s = limits.max_loop_lag_ms / 1000
        self._lease_ms = int(limits.job_lease_s * 1000)
        self._leases = LeaseKeeper(lease_redis, self._keys, self._lease_ms)
        self._lag = LagMonitor()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        # Set while the worker would claim: a free slot, not draining, its event loop on time. Only
        # then does it take wake-up tokens; a worker that could not claim leaves them to others.
        self._room = asyncio.Event()
        self._looked = asyncio.Event()  # set after each look at the queue (for the wake-up reader)
        self._stop = asyncio.Event()
        self._draining = False
        self._drain_task: asyncio.Task[None] | None = None
        self._redis_outage = OutageLog(log, "redis_unavailable", "redis_available_again")
        self._last_look = 0.0

    @property
    def running(self) -> int:
        return len(self._tasks)

    def run(self) -> None:
        """Run until drained (SIGTERM/SIGINT); raises what start-up raises."""
        asyncio.run(self.main())

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.drain)
        try:
            await self._reach_redis()
            services = await start_services(self._settings, self._redis)
            try:
                await self._serve(services)
            finally:
                await stop_services(services)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            await self._redis.aclose()

    async def _reach_redis(self) -> None:
        for delay_s in CONNECT_DELAYS_S:
            await asyncio.sleep(delay_s)
            try:
                await self._redis.ping()
                return
            except (RedisError, OSError) as exc:
                error = exc
        where = "redis.sentinels" if self._settings.redis.sentinels else "redis.url (or REDIS_URL)"
        raise RedisUnreachable(
            f"cannot reach Redis at {redis_address(self._redis)} after {len(CONNECT_DELAYS_S)} tries "
            f"({type(error).__name__}: {error}); check that the server runs and that {where} points at it"
        )

    def drain(self) -> None:
        """Take no new jobs; let running ones finish within the grace period, then hand the rest
        back (they run again elsewhere). A second call hands them back at once."""
        if self._draining:
            log.info("worker_draining_now", running=self.running)
            self._hand_back()
            return
        self._draining = True
        self._room.clear()
        log.info("worker_draining", running=self.running, grace_s=self._grace_s)
        self._drain_task = asyncio.get_running_loop().create_task(self._finish(), name="drain")

    async def _finish(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._grace_s):
                while self._tasks:
                    await asyncio.wait(list(self._tasks.values()))
        self._hand_back()
        self._stop.set()
        self._wake.set()

    def _hand_back(self) -> None:
        for task in self._tasks.values():
            task.cancel()  # the runner gives the claim back: the job stays queued

    async def _serve(self, services: Services) -> None:
        state = services.state
        limits = self._settings.worker
        claimer = Claimer(
            self._redis,
            self._keys,
            self._settings.tenants,
            lease_ms=self._lease_ms,
            max_clock_skew_ms=int(limits.max_clock_skew_s * 1000),
            max_envelope_bytes=limits.max_payload_bytes,
            max_tries=limits.max_tries,
        )
        runner = JobRunner(self._redis, self._keys, state, self._queue, limits.reply_ttl_s)
        wakeups = Wakeups(
            self._redis,
            self._keys,
            wake=self._wake,
            room=self._room,
            looked=self._looked,
            busy_delay_s=lambda: min(LOAD_BACKOFF_CAP_S, self.running * LOAD_BACKOFF_PER_JOB_S),
            idle=lambda: self._room.is_set() and not self._tasks,
            on_relayed=lambda how: state.metrics.relayed.labels(how).inc(),
            worker_id=state.worker_id,
            queue_notifications=limits.queue_notifications,
        )
        self._lag.start()
        wakeups.start()
        self._leases.start()
        try:
            woken = True
            while not self._stop.is_set():
                self._update_room()
                claimed = await self._iteration(claimer, runner, woken)
                self._looked.set()
                if claimed >= self._batch:
                    continue  # took a full batch: there may be more
                wait_s = self._poll_delay_s if self._taking_jobs() else min(self._poll_delay_s, BUSY_POLL_S)
                if self._redis_outage.failing:
                    wait_s = OUTAGE_POLL_S
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._wake.wait()
                woken = self._wake.is_set()
                self._wake.clear()
        finally:
            await cancel_and_wait(self._drain_task)
            self._hand_back()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            await wakeups.stop()
            await asyncio.to_thread(self._leases.stop)
            await self._lag.stop()

    def _taking_jobs(self) -> bool:
        return not self._draining and self._lag.lag_s <= self._max_loop_lag_s

    async def _iteration(self, claimer: Claimer, runner: JobRunner, woken: bool) -> int:
        """Claim and start what fits.

        ``woken``: by a wake-up or a finished job; else this is the fallback poll, which looks at
        an empty queue with one EXISTS instead of the claim script."""
        claimed = 0
        try:
            if not woken and not self._tasks and not await self._redis.exists(self._queue):
                pass  # idle, and nothing queued
            elif self._taking_jobs() and self.running < self._max_jobs:
                claimed = await self._claim_and_start(claimer, runner, self._max_jobs - self.running)
            elif not self._draining and time.monotonic() - self._last_look >= self._poll_delay_s:
                # Full or lagging: claim nothing, but let the script stamp jobs enqueued by plain
                # arq as they arrive, so that their deadlines count from then, not from when a
                # worker has room (RELIABILITY.md, clocks).
                await claimer.claim(0)
                self._last_look = time.monotonic()
        except (RedisError, OSError) as exc:
            self._redis_outage.failed(exc)
        else:
            self._redis_outage.succeeded()
        return claimed

    async def _claim_and_start(self, claimer: Claimer, runner: JobRunner, free: int) -> int:
        claimed = await claimer.claim(min(self._batch, free))
        self._last_look = time.monotonic()
        # Deadlines count in Redis's clock: this machine's may be off.
        redis_ahead_ms = claimed.redis_now_ms - int(time.time() * 1000)
        loop = asyncio.get_running_loop()
        for job in claimed.jobs:
            task = loop.create_task(runner.run(job, job.due_ms - redis_ahead_ms), name=job.job_id)
            task.add_done_callback(functools.partial(self._job_finished, job.job_id))
            self._tasks[job.job_id] = task
            self._leases.keep(job.job_id)
        self._update_room()
        return len(claimed.jobs)

    def _update_room(self) -> None:
        if self._taking_jobs() and self.running < self._max_jobs:
            self._room.set()
        else:
            self._room.clear()

    def _job_finished(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(job_id, None)
        self._leases.drop(job_id)
        if not task.cancelled() and task.exception() is not None:
            # The job's bookkeeping failed (Redis went away mid-way): its lease expires and it runs
            # again elsewhere.
            log.warning("job_bookkeeping_failed", request_id=job_id, error=type(task.exception()).__name__)
        self._update_room()
        self._wake.set()  # a slot is free: look at the queue again
