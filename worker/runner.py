"""One claimed job, from its arq keys to its end, in arq's own key protocol.

arq's ``Worker.run_job`` reads the whole envelope before any check, lets a job that fails before
its function runs (an unreadable ``et``, a nesting its parser cannot take) fail without a reply or
come back forever, and keeps the job's arguments (the prompt) in ``arq:result:{id}`` for as long
as the result. This runner keeps arq's keys and formats, so plain arq callers (``Job.status()``,
``Job.result()``) and dedupe keep working, and changes what happens in them:

1. the claim (``worker/claim.lua``, the same round trip) has counted the try (``arq:retry:{id}``)
   and read the envelope's size (``STRLEN``), whether the request already has its reply and whether
   its caller cancelled it, and the envelope only when it may be read; a finished request ends
   there, quietly;
2. after ``worker.max_tries`` tries the request is answered ``internal`` without reading anything;
   an envelope over ``worker.max_payload_bytes`` is answered without being read; otherwise it is
   decoded (``llm_pool.serialization.decode_job``, which never raises);
3. ``Execution`` turns it into exactly one reply key and one final event;
4. arq's result (the reply, without the request's arguments) is written, the job's keys are
   deleted and it leaves the queue, in one transaction; when Redis is out of memory the deletes
   (which a full Redis allows) go without the result.

A job cancelled by a drain releases its claim and stays queued, as with arq: it runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from llm_pool.connections import out_of_memory
from llm_pool.keys import Keys
from llm_pool.logging import get_logger
from llm_pool.serialization import UndecodableJob, decode_job
from worker.claim import Claim
from worker.execution import Execution, JobInfo
from worker.state import WorkerState

log = get_logger("worker.runner")

# While Redis is away (an outage, a failover): when to try a job's bookkeeping again, about 9 s in all.
RETRY_DELAYS_S = (0.0, 0.2, 0.5, 1.0, 2.0, 5.0)


class JobRunner:
    """Runs claimed jobs for one worker process."""

    def __init__(self, redis: Redis, keys: Keys, state: WorkerState, queue: str, keep_result_s: int) -> None:
        self._redis = redis
        self._keys = keys
        self._state = state
        self._queue = queue
        self._keep_result_ms = keep_result_s * 1000
        self._max_bytes = state.settings.worker.max_payload_bytes
        self._max_tries = state.settings.worker.max_tries
        self._outer_timeout_s = state.settings.worker.max_timeout_s + 30

    async def run(self, start: Claim, due_local_ms: int) -> None:
        """Run one claimed job; ``due_local_ms``: when it was due, in this machine's clock."""
        started_ms = int(time.time() * 1000)
        job_id = start.job_id
        if start.reply is not None:
            # An earlier run wrote the reply and stopped before recording the job's end: the
            # request is over, and nothing may be published after its final event.
            log.info("request_already_finished", request_id=job_id, attempt=start.attempt)
            await self._end(job_id, "complete", start.attempt, due_local_ms, started_ms, start.reply, True)
            return
        function, args, kwargs = self._arguments(start)
        job = JobInfo(
            request_id=job_id,
            attempt=start.attempt,
            enqueued_ms=due_local_ms,
            cancel_requested=start.cancelled,
        )
        execution = Execution(self._state, job, stream=function == "complete_stream")
        try:
            async with asyncio.timeout(self._outer_timeout_s):
                reply = await execution.execute(args, kwargs)
        except asyncio.CancelledError:
            # Drained (SIGTERM past the grace period): it runs again elsewhere. Like arq's own
            # run_job, the task then ends normally, so the worker's shutdown can gather it.
            log.info("job_handed_back", request_id=job_id, attempt=start.attempt)
            await asyncio.shield(self._release(job_id))
            return
        except Exception as exc:  # the reply could not be written (see Execution)
            log.error("job_failed", request_id=job_id, error=type(exc).__name__)
            result = json.dumps({"error": type(exc).__name__}).encode()
            await asyncio.shield(
                self._end(job_id, function, start.attempt, due_local_ms, started_ms, result, False)
            )
            return
        await asyncio.shield(
            self._end(job_id, function, start.attempt, due_local_ms, started_ms, reply, True)
        )

    def _arguments(self, start: Claim) -> tuple[str, list[Any], dict[str, Any]]:
        """The job's function, arguments and keyword arguments, read only when it was safe to."""
        if start.attempt > self._max_tries:
            return "complete", [], {}  # Execution answers `internal` before looking at arguments
        if start.envelope_bytes == 0:
            reason = "the job has no envelope (arq:job:{id} is missing: it expired or was never written)"
            return "complete", [UndecodableJob(reason)], {}
        if start.envelope_bytes > self._max_bytes:
            reason = (
                f"the job is {start.envelope_bytes} bytes; the limit is {self._max_bytes} "
                "(worker.max_payload_bytes)"
            )
            return "complete", [UndecodableJob(reason)], {}
        envelope = decode_job(start.envelope or b"")
        return str(envelope["f"]), list(envelope["a"]), dict(envelope["k"])

    async def _end(
        self,
        job_id: str,
        function: str,
        attempt: int,
        due_local_ms: int,
        started_ms: int,
        reply: dict[str, Any] | bytes,
        success: bool,
    ) -> None:
        """arq's record of the job's end: its result (no arguments), then its keys gone."""
        result: dict[str, Any] = {
            "t": attempt,
            "f": function,
            "a": [],  # the request (its prompt) is not kept: the reply key has what callers need
            "k": {},
            "et": due_local_ms,
            "s": success,
            "r": json.loads(reply) if isinstance(reply, bytes) else reply,
            "st": started_ms,
            "ft": int(time.time() * 1000),
            "q": self._queue,
            "id": job_id,
        }
        keep: bytes | None = json.dumps(result).encode()
        for delay_s in RETRY_DELAYS_S:
            await asyncio.sleep(delay_s)
            try:
                async with self._redis.pipeline(transaction=True) as tr:
                    if keep is not None:
                        tr.set(self._keys.result(job_id), keep, px=self._keep_result_ms)
                    tr.delete(
                        self._keys.job(job_id),
                        self._keys.retry(job_id),
                        self._keys.claim(job_id),
                        self._keys.due(job_id),
                    )
                    tr.zrem(self._queue, job_id)
                    await tr.execute()
                return
            except (RedisError, OSError) as exc:
                log.warning("job_end_not_recorded", request_id=job_id, error=type(exc).__name__)
                if out_of_memory(exc) or str(exc).startswith("EXECABORT"):
                    # Redis is full: the reply key has the answer; arq's copy of it is dropped,
                    # and the deletes, which Redis allows when full, go through alone.
                    keep = None
        # Still queued: the next run finds the reply key and ends at once, publishing nothing.

    async def _release(self, job_id: str) -> None:
        """Delete the claim, so that the job runs elsewhere at once (else when its lease lapses)."""
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(self._keys.claim(job_id))
