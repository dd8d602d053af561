"""Enqueueing in one round trip, in arq's own format, with a wake-up for idle workers.

``enqueue_job`` writes exactly what ``ArqRedis.enqueue_job`` writes (``arq:job:{id}`` with the
JSON envelope, a score in the queue's sorted set, arq's dedupe on the job and result keys), but as
one Lua script that also returns the reply if the request had already finished, adds the job to
the fair-share index of its tenant (``llm_pool/fairness.py``), and publishes the request id on
``P:wake`` so that workers blocked on that channel start it at once instead of at their next poll.

The job's time is Redis's (``TIME``), not this machine's: its queue score and ``P:due:{id}`` (from
when its deadline counts) are stamped by the script; ``et`` in the envelope is only informational.
"""

from __future__ import annotations

import time
from typing import Any

from arq.constants import job_key_prefix, result_key_prefix
from redis.asyncio import Redis

from llm_pool.fairness import FAIR_ADD_LUA, fair_prefix, index_tenant
from llm_pool.keys import Keys
from llm_pool.serialization import json_dumps

# arq's default: a job that has not started within a day is dropped.
JOB_EXPIRES_MS = 86_400_000

# KEYS: job key, arq result key, queue, reply key, due key.
# ARGV: envelope, job id, expiry (ms), wake channel, tenant, fair-index prefix.
# Returns the reply if there is one already, 0 if the job exists (arq's dedupe), 1 if enqueued.
ENQUEUE_LUA = (
    FAIR_ADD_LUA
    + """
local reply = redis.call('GET', KEYS[4])
if reply then return reply end
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('PSETEX', KEYS[1], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], now, ARGV[2])
redis.call('SET', KEYS[5], now, 'PX', ARGV[3])
fair_add(ARGV[6], ARGV[2], now, ARGV[5])
redis.call('PUBLISH', ARGV[4], ARGV[2])
return 1
"""
)


class Enqueuer:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._keys = keys
        self._script = redis.register_script(ENQUEUE_LUA)

    async def enqueue(self, function: str, request_id: str, argument: dict[str, Any]) -> bytes | None:
        """Enqueue ``function(argument)`` as job ``request_id``; the existing reply if it had one."""
        now_ms = int(time.time() * 1000)
        envelope = json_dumps({"t": None, "f": function, "a": [argument], "k": {}, "et": now_ms})
        result = await self._script(
            keys=[
                job_key_prefix + request_id,
                result_key_prefix + request_id,
                self._keys.queue,
                self._keys.reply(request_id),
                self._keys.due(request_id),
            ],
            args=[
                envelope,
                request_id,
                JOB_EXPIRES_MS,
                self._keys.wake,
                index_tenant(str(argument.get("tenant_id", ""))),
                fair_prefix(self._keys),
            ],
        )
        return result if isinstance(result, bytes) else None
