"""Claiming jobs: tenants take turns, each within its concurrency cap, in one Lua round trip.

One call of ``claim.lua`` does three things atomically:

1. indexes the newest queue entries (up to ``index_newest``) that the fair-share index has not
   seen (jobs enqueued by plain arq), reading each one's tenant from its JSON envelope; an empty
   queue costs one read;
2. at most every ``sweep_period_ms`` (one worker at a time), indexes the next ``sweep_batch``
   queue entries that are neither indexed nor claimed: jobs that came back to the queue after
   their worker died or was drained, and any the first step missed;
3. claims up to ``want`` jobs round-robin over the tenants in turn order, one job per tenant per
   pass, skipping tenants at their cap. A claim is arq's own (``SET arq:in-progress:{id} NX``,
   here with a lease renewed by the worker), so arq's ``Job.status()`` reports it ``in_progress``;
4. starts each claimed job's run in the same round trip: counts the try (``arq:retry:{id}``) and
   reads the envelope's size, whether the request has its reply already and whether its caller
   cancelled it, and the envelope itself when it may be read (``Claim``; ``worker/runner.py``
   decides what to do with them).

A tenant's running jobs are those of ``P:fair:running:{tenant}`` whose ``arq:in-progress:`` key
still exists: arq deletes it when the job ends, and a dead worker's lease expires, so the count
needs no bookkeeping at the end of a job and survives crashes.

Time is Redis's (``TIME``), never the worker's or the caller's: each job gets ``P:due:{id}``, the
moment (Redis ms) from which it may run and its deadline counts, when the pool's client enqueues
it or when a worker first sees it (``due_of`` in ``claim.lua`` states the rule for callers' clocks).

A claimed entry that cannot be a request id (not UTF-8, longer than 128 characters) is moved to
``P:dead-letter`` with one log line, so no queue entry can stop a worker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis

from llm_pool.fairness import FAIR_ADD_LUA
from llm_pool.keys import MAX_REQUEST_ID_CHARS, Keys
from llm_pool.logging import get_logger
from llm_pool.settings import TenantsSection

log = get_logger("worker.claim")

CLAIM_LUA = FAIR_ADD_LUA + (files("worker") / "claim.lua").read_text(encoding="utf-8")
DEAD_LETTER_LUA = (files("worker") / "dead_letter.lua").read_text(encoding="utf-8")
DEAD_LETTER_KEEP = 10_000
RETRY_KEY_TTL_S = 88_400  # arq's
FIELDS_PER_JOB = 7


@dataclass(frozen=True)
class Claim:
    """A job this worker now holds: its id and when it was due (Redis's clock), and the start of its
    run: the try it is (counted), its envelope's size, the reply if the request has one already,
    the envelope when it was read (no reply yet, within the tries and the size limit), and whether
    the caller had cancelled it."""

    job_id: str
    due_ms: int
    attempt: int = 1
    envelope_bytes: int = 0
    reply: bytes | None = None
    envelope: bytes | None = None
    cancelled: bool = False


@dataclass(frozen=True)
class Claimed:
    """One claim call: Redis's time when it ran (ms) and the jobs it claimed."""

    redis_now_ms: int
    jobs: list[Claim]


class Claimer:
    """Claims jobs for one worker: ``await claimer.claim(n)`` -> ``Claimed``."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        tenants: TenantsSection,
        *,
        lease_ms: int,
        max_clock_skew_ms: int = 2000,
        max_envelope_bytes: int = 2_000_000,
        max_tries: int = 5,
        index_newest: int = 50,
        sweep_batch: int = 1000,
        sweep_period_ms: int = 250,
        max_tenants: int = 1000,
    ) -> None:
        self._script = redis.register_script(CLAIM_LUA)
        self._dead_letter = redis.register_script(DEAD_LETTER_LUA)
        self._keys = keys
        self._static_keys = [
            keys.queue,
            keys.fair_jobs,
            keys.fair_tenants,
            keys.fair_turn,
            keys.fair_sweep,
            keys.fair_sweep_at,
        ]
        self._static_args: list[Any] = [
            lease_ms,
            tenants.default.max_concurrent,
            json.dumps({t: limits.max_concurrent for t, limits in tenants.overrides.items()}),
            index_newest,
            sweep_batch,
            sweep_period_ms,
            max_tenants,
            max_clock_skew_ms,
            max_envelope_bytes,
            keys.job_prefix,
            keys.claim_prefix,
            keys.due_prefix,
            keys.fair_queue_prefix,
            keys.fair_running_prefix,
            keys.retry_prefix,
            keys.reply_prefix,
            keys.cancel_prefix,
            RETRY_KEY_TTL_S,
            max_tries,
        ]

    async def claim(self, count: int) -> Claimed:
        flat = await self._script(keys=self._static_keys, args=[count, *self._static_args])
        jobs = []
        for at in range(1, len(flat), FIELDS_PER_JOB):
            raw_id, due, attempt, size, reply, envelope, cancelled = flat[at : at + FIELDS_PER_JOB]
            job_id = await self._usable_id(raw_id)
            if job_id is not None:
                start = (int(attempt), int(size), reply or None, envelope or None, bool(cancelled))
                jobs.append(Claim(job_id, int(due), *start))
        return Claimed(int(flat[0]), jobs)

    async def _usable_id(self, raw_id: bytes) -> str | None:
        """The entry as a request id, or None after moving it to the dead-letter set."""
        try:
            job_id = raw_id.decode("utf-8")
        except UnicodeDecodeError:
            reason = "not_utf8"
        else:
            if 0 < len(job_id) <= MAX_REQUEST_ID_CHARS:
                return job_id
            reason = "id_length"
        # The entry is not text, so its keys are named from the prefixes, as bytes.
        per_entry = (
            self._keys.job_prefix,
            self._keys.claim_prefix,
            self._keys.retry_prefix,
            self._keys.due_prefix,
        )
        keys: list[str | bytes] = [self._keys.queue, self._keys.dead_letter]
        keys += [prefix.encode() + raw_id for prefix in per_entry]
        await self._dead_letter(keys=keys, args=[raw_id, DEAD_LETTER_KEEP])
        # The entry itself is not logged: it may be anything, of any size.
        log.warning("job_dead_lettered", reason=reason, id_bytes=len(raw_id))
        return None
