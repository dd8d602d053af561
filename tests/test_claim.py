"""The claim script against the real Redis: tenants take turns, caps hold, nothing is lost.

Jobs are written exactly as plain arq writes them (``arq:job:{id}`` and a score in the queue), or
by the pool's own enqueue, and claimed with ``Claimer`` as a worker claims them.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import cast

import pytest
import redis.asyncio as aioredis

from llm_pool.enqueue import Enqueuer
from llm_pool.fairness import index_tenant
from llm_pool.keys import Keys
from llm_pool.settings import TenantLimits, TenantsSection
from llm_pool.testing.cluster import aforget_keys
from worker.claim import Claimer

A, B, C = (str(uuid.uuid4()) for _ in range(3))


@pytest.fixture
async def keys(aredis: aioredis.Redis) -> AsyncIterator[Keys]:
    keys = Keys(f"t{uuid.uuid4().hex[:10]}")
    yield keys
    await aforget_keys(aredis, f"{keys.prefix}:*")


class Queue:
    """Plain-arq style writes plus a claimer, with the job ids' tenants remembered."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, tenants: TenantsSection | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.claimer = Claimer(redis, keys, tenants or TenantsSection(), lease_ms=5000, sweep_period_ms=1)
        self.tenant_of: dict[str, str] = {}
        self.ids: list[str] = []
        self.score = int(time.time() * 1000) - 100_000

    async def put(self, tenant: str, count: int = 1, *, envelope: bytes | None = None) -> list[str]:
        ids = []
        for _ in range(count):
            job_id = uuid.uuid4().hex
            request = {"model": "fast", "messages": [{"role": "user", "content": "x"}], "tenant_id": tenant}
            body = (
                envelope
                or json.dumps(
                    {"t": 1, "f": "complete", "a": [request], "k": {}, "et": self.score + 1}
                ).encode()
            )
            self.score += 1
            await self.redis.set(f"arq:job:{job_id}", body, px=60_000)
            await self.redis.zadd(self.keys.queue, {job_id: self.score})
            self.tenant_of[job_id] = tenant
            ids.append(job_id)
        self.ids += ids
        return ids

    async def claim(self, count: int) -> list[str]:
        return [job.job_id for job in (await self.claimer.claim(count)).jobs]

    async def finish(self, job_id: str) -> None:
        """What arq does when a job ends."""
        await self.redis.delete(f"arq:in-progress:{job_id}", f"arq:job:{job_id}")
        await self.redis.zrem(self.keys.queue, job_id)

    async def cleanup(self) -> None:
        for job_id in self.ids:
            await self.redis.delete(f"arq:in-progress:{job_id}", f"arq:job:{job_id}", self.keys.retry(job_id))


@pytest.fixture
async def queue(aredis: aioredis.Redis, keys: Keys) -> AsyncIterator[Queue]:
    q = Queue(aredis, keys)
    yield q
    await q.cleanup()


async def test_tenants_take_turns_whatever_the_backlog(queue: Queue) -> None:
    await queue.put(A, 50)
    await queue.put(B, 3)
    await queue.put(C, 1)
    claimed = await queue.claim(7)
    assert [queue.tenant_of[i] for i in claimed] == [A, B, C, A, B, A, B]
    # Within a tenant, first in first out.
    a_ids = [i for i in claimed if queue.tenant_of[i] == A]
    assert a_ids == [i for i in queue.ids if queue.tenant_of[i] == A][:3]


async def test_a_newcomer_is_served_within_one_turn_of_a_long_backlog(queue: Queue) -> None:
    await queue.put(A, 500)
    assert [queue.tenant_of[i] for i in await queue.claim(3)] == [A, A, A]
    [b_job] = await queue.put(B, 1)
    next_two = await queue.claim(1) + await queue.claim(1)
    assert b_job in next_two


async def test_concurrency_caps_default_and_override(aredis: aioredis.Redis, keys: Keys) -> None:
    tenants = TenantsSection(
        default=TenantLimits(max_concurrent=2), overrides={B: TenantLimits(max_concurrent=0)}
    )
    queue = Queue(aredis, keys, tenants)
    try:
        await queue.put(A, 10)
        await queue.put(B, 5)
        first = await queue.claim(20)
        assert sorted(queue.tenant_of[i] for i in first) == sorted([A, A, B, B, B, B, B])
        assert await queue.claim(20) == []  # A is at its cap
        await queue.finish(first[0])
        again = await queue.claim(20)
        assert [queue.tenant_of[i] for i in again] == [A]
        # A worker that dies holds its slot only until its lease lapses.
        await aredis.delete(f"arq:in-progress:{again[0]}")
        assert [queue.tenant_of[i] for i in await queue.claim(20)] == [A]
        assert await queue.claim(20) == []
    finally:
        await queue.cleanup()


async def test_a_job_whose_claim_lapsed_is_claimed_again(queue: Queue) -> None:
    [job] = await queue.put(A, 1)
    assert await queue.claim(5) == [job]
    assert await queue.claim(5) == []  # running
    await queue.redis.delete(f"arq:in-progress:{job}")  # its worker died: the lease lapsed
    assert await queue.claim(5) == [job]


async def test_plain_arq_jobs_behind_indexed_ones_are_indexed_without_the_sweep(
    queue: Queue, aredis: aioredis.Redis
) -> None:
    [plain] = await queue.put(A, 1)
    newer = uuid.uuid4().hex
    request = {"model": "fast", "messages": [], "tenant_id": B}
    await Enqueuer(aredis, queue.keys).enqueue("complete", newer, request)  # indexed at once
    queue.ids.append(newer)
    await aredis.set(queue.keys.fair_sweep, "1", px=60_000)  # no sweep for a minute
    assert sorted(await queue.claim(5)) == sorted([plain, newer])


async def test_stale_index_entries_are_dropped(queue: Queue) -> None:
    gone, kept = await queue.put(A, 2)
    await queue.claim(0)  # indexes both
    await queue.redis.zrem(queue.keys.queue, gone)  # e.g. aborted, or run by a plain arq worker
    assert await queue.claim(5) == [kept]
    assert await cast(Awaitable[int], queue.redis.hlen(queue.keys.fair_jobs)) == 0
    assert await queue.redis.zcard(queue.keys.fair_tenants) == 0


async def test_deferred_jobs_wait_for_their_time(queue: Queue) -> None:
    [later] = await queue.put(A, 1)
    await queue.redis.zadd(queue.keys.queue, {later: int(time.time() * 1000) + 60_000})
    [now] = await queue.put(B, 1)
    assert await queue.claim(5) == [now]


async def test_unreadable_envelopes_are_still_claimed(queue: Queue) -> None:
    [pickled] = await queue.put(A, 1, envelope=b"\x80\x04\x95 not json")
    [not_uuid] = await queue.put("tenant-x", 1)
    assert sorted(await queue.claim(5)) == sorted([pickled, not_uuid])


async def test_the_pools_own_enqueue_indexes_at_once(aredis: aioredis.Redis, keys: Keys) -> None:
    enqueuer = Enqueuer(aredis, keys)
    job_id = uuid.uuid4().hex
    request = {"model": "fast", "messages": [], "tenant_id": A.upper()}
    try:
        assert await enqueuer.enqueue("complete", job_id, request) is None
        indexed_under = await cast(Awaitable[bytes | None], aredis.hget(keys.fair_jobs, job_id))
        assert indexed_under == A.encode()
    finally:
        await aredis.delete(f"arq:job:{job_id}")


def test_index_tenant_matches_uuid_canonical_form() -> None:
    assert index_tenant(A.upper()) == A
    assert index_tenant("{" + uuid.UUID(A).hex + "}") == A
    assert index_tenant("tenant-x") == ""


async def put_at(queue: Queue, score_ms: int, et_ms: int) -> str:
    """A plain-arq job whose caller set ``et`` and the queue score from its own clock."""
    job_id = uuid.uuid4().hex
    request = {"model": "fast", "messages": [{"role": "user", "content": "x"}], "tenant_id": A}
    envelope = {"t": 1, "f": "complete", "a": [request], "k": {}, "et": et_ms}
    await queue.redis.set(f"arq:job:{job_id}", json.dumps(envelope), px=60_000)
    await queue.redis.zadd(queue.keys.queue, {job_id: score_ms})
    queue.ids.append(job_id)
    return job_id


async def redis_ms(redis: aioredis.Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


@pytest.mark.parametrize("skew_s", [600, 40, -600, -40])
async def test_a_callers_clock_does_not_decide_when_its_job_runs(queue: Queue, skew_s: int) -> None:
    now = await redis_ms(queue.redis)
    job = await put_at(queue, now + skew_s * 1000, now + skew_s * 1000)
    claimed = await queue.claimer.claim(5)
    assert [c.job_id for c in claimed.jobs] == [job], "claimable now, whatever the caller's clock"
    # and its deadline counts from when the pool first saw it, in Redis's clock
    assert abs(claimed.jobs[0].due_ms - now) < 1000
    assert abs(claimed.redis_now_ms - now) < 1000


async def test_a_job_deferred_on_purpose_keeps_its_time(queue: Queue) -> None:
    now = await redis_ms(queue.redis)
    later = await put_at(queue, now + 1500, now)  # arq's _defer_by=1.5: future score, current et
    ahead = await put_at(queue, now + 601_500, now + 600_000)  # the same, from a clock 10 min ahead
    assert (await queue.claimer.claim(5)).jobs == []
    await asyncio.sleep(1.6)
    claimed = await queue.claimer.claim(5)
    assert sorted(c.job_id for c in claimed.jobs) == sorted([later, ahead])
    assert all(c.due_ms >= now + 1500 for c in claimed.jobs)


async def test_the_pools_own_enqueue_is_stamped_with_redis_time(aredis: aioredis.Redis, keys: Keys) -> None:
    job_id = uuid.uuid4().hex
    before = await redis_ms(aredis)
    try:
        await Enqueuer(aredis, keys).enqueue("complete", job_id, {"tenant_id": A})
        due = int(await aredis.get(keys.due(job_id)) or 0)
        score = await aredis.zscore(keys.queue, job_id)
        assert before <= due <= before + 1000 and score == due
    finally:
        await aredis.delete(f"arq:job:{job_id}")


async def test_entries_that_cannot_be_request_ids_are_dead_lettered(queue: Queue) -> None:
    redis = queue.redis
    not_utf8, too_long = b"\xff\xfe", ("x" * 129).encode()
    await redis.zadd(queue.keys.queue, {not_utf8: 1, too_long: 2})
    await redis.set(b"arq:job:" + too_long, b"{}")
    [good] = await queue.put(B, 1)
    claimed = await queue.claimer.claim(5)
    assert [c.job_id for c in claimed.jobs] == [good]
    assert sorted(await redis.zrange(queue.keys.dead_letter, 0, -1)) == sorted([not_utf8, too_long])
    assert await redis.zscore(queue.keys.queue, not_utf8) is None
    assert await redis.zscore(queue.keys.queue, too_long) is None
    assert not await redis.exists(b"arq:job:" + too_long)
    assert not await redis.exists(queue.keys.due_prefix.encode() + too_long)
    assert (await queue.claimer.claim(5)).jobs == []


async def test_a_claim_starts_each_jobs_run(queue: Queue) -> None:
    """In the claim's round trip: the try is counted, the envelope read when it may be, and the
    reply and cancel keys looked at (what worker/runner.py decides on)."""
    redis, keys = queue.redis, queue.keys
    [job] = await queue.put(A)
    body = await redis.get(f"arq:job:{job}")
    await redis.set(keys.cancel(job), "1", ex=60)
    [first] = (await queue.claimer.claim(5)).jobs
    assert (first.job_id, first.attempt, first.envelope, first.reply, first.cancelled) == (
        job,
        1,
        body,
        None,
        True,
    )
    assert first.envelope_bytes == len(body or b"")
    assert 0 < int(await redis.ttl(keys.retry(job))) <= 88_400

    # The run answered, then stopped before recording the job's end: the next claim sees the reply
    # and does not read the envelope.
    await redis.delete(keys.claim(job), keys.cancel(job))
    await redis.set(keys.reply(job), b'{"status": "ok"}', ex=60)
    [second] = (await queue.claimer.claim(5)).jobs
    assert (second.attempt, second.reply, second.envelope, second.cancelled) == (
        2,
        b'{"status": "ok"}',
        None,
        False,
    )


async def test_a_claim_reads_no_envelope_past_the_tries_or_the_size(
    aredis: aioredis.Redis, keys: Keys
) -> None:
    queue = Queue(aredis, keys)
    small = Claimer(aredis, keys, TenantsSection(), lease_ms=5000, max_envelope_bytes=50, max_tries=1)
    try:
        [job] = await queue.put(A)
        [big] = (await small.claim(5)).jobs
        assert big.envelope is None and big.envelope_bytes > 50 and big.attempt == 1
        await aredis.delete(keys.claim(job))
        queue.claimer = Claimer(aredis, keys, TenantsSection(), lease_ms=5000, max_tries=1)
        [again] = (await queue.claimer.claim(5)).jobs
        assert again.attempt == 2 and again.envelope is None, "over worker.max_tries: not read"
    finally:
        await queue.cleanup()
