"""How late the worker's event loop runs: a saturated worker's loop runs its timers late."""

from __future__ import annotations

import asyncio
import time

from llm_pool.tasks import cancel_and_wait


class LagMonitor:
    """``lag_s``: how late a timer of ``interval_s`` ran, rising at once and decaying over a few ticks."""

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
            # One quiet tick does not mean capacity.
            self.lag_s = max(late, self.lag_s * 0.7)
