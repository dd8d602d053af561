"""The leases on this process's running jobs (``arq:in-progress:{id}``), renewed from a thread.

A saturated event loop runs iterations of up to a second under load, and an asyncio round trip
then takes several of them: renewals from the loop took 7 to 19 s with 100 zero-delay streams per
worker, the 15 s leases lapsed, and other workers ran the same jobs again. A thread with its own
connection renews on time as long as the process is alive, which is what a lease means.
"""

from __future__ import annotations

import threading

from redis import Redis
from redis.exceptions import RedisError

from llm_pool.keys import Keys


class LeaseKeeper:
    """Extends the lease of every job it keeps by ``lease_ms``, every third of a lease."""

    def __init__(self, redis: Redis, keys: Keys, lease_ms: int) -> None:
        self._redis = redis
        self._keys = keys
        self._lease_ms = lease_ms
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leases", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._redis.close()

    def keep(self, job_id: str) -> None:
        with self._lock:
            self._running.add(job_id)

    def drop(self, job_id: str) -> None:
        with self._lock:
            self._running.discard(job_id)

    def renew(self) -> None:
        """One round of renewals (the thread calls this every third of a lease)."""
        with self._lock:
            running = list(self._running)
        if not running:
            return
        pipe = self._redis.pipeline(transaction=False)
        for job_id in running:
            pipe.pexpire(self._keys.claim(job_id), self._lease_ms)
        pipe.execute()

    def _run(self) -> None:
        while not self._stop.wait(self._lease_ms / 3000):
            try:
                self.renew()
            except (RedisError, OSError):
                continue  # the main loop reports Redis outages; the next renewal tries again
