"""Enqueueing in one round trip, in arq's own format, with a wake-up for idle workers.

``enqueue_job`` writes exactly what ``ArqRedis.enqueue_job`` writes (``arq:job:{id}`` with the
JSON envelope, a score in the queue's sorted set, arq's dedupe on the job and result keys), but as
one Lua script that also returns the reply if the request had already finished, adds the job to
the fair-share index of its tenant (``llm_pool/fairness.py``), and publishes the request id on
``P:wakeups``: one token per job, so that one idle worker blocked on that list (``BLPOP``) starts it
at once instead of at its next poll, and the others sleep on.

The job's time is Redis's (``TIME``), not this machine's: its queue score and ``P:due:{id}`` (from
when its deadline counts) are stamped by the script; ``et`` in the envelope is only informational.
"""

from __future__ import annotations

import time
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis

from llm_pool.fairness import FAIR_ADD_LUA, index_tenant
from llm_pool.keys import Keys
from llm_pool.serialization import json_dumps

# At most this many wake-up tokens wait (when every worker is busy): enough to wake every idle worker.
WAKEUPS_KEPT = 1000
# arq's default: a job that has not started within a day is dropped.
JOB_EXPIRES_MS = 86_400_000

ENQUEUE_LUA = FAIR_ADD_LUA + (files("llm_pool") / "enqueue.lua").read_text(encoding="utf-8")


class Enqueuer:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._keys = keys
        self._script = redis.register_script(ENQUEUE_LUA)

    async def enqueue(self, function: str, request_id: str, argument: dict[str, Any]) -> bytes | None:
        """Enqueue ``function(argument)`` as job ``request_id``; the existing reply if it had one."""
        now_ms = int(time.time() * 1000)
        envelope = json_dumps({"t": None, "f": function, "a": [argument], "k": {}, "et": now_ms})
        tenant = index_tenant(str(argument.get("tenant_id", "")))
        keys = self._keys
        result = await self._script(
            keys=[
                keys.job(request_id),
                keys.result(request_id),
                keys.queue,
                keys.reply(request_id),
                keys.due(request_id),
                keys.wakeups,
                keys.fair_jobs,
                keys.fair_queue(tenant),
                keys.fair_tenants,
                keys.fair_turn,
            ],
            args=[envelope, request_id, JOB_EXPIRES_MS, tenant, WAKEUPS_KEPT],
        )
        return result if isinstance(result, bytes) else None
