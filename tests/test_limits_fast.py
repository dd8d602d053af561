"""The ``Limiter`` (worker/limits.py, admit.lua) against the shared Redis, in this process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import cast

import redis.asyncio as aioredis

from llm_pool.keys import Keys
from llm_pool.settings import TenantLimits
from tests.helpers import same_minute
from worker.limits import Limiter, current_minute


def tenant() -> str:
    return str(uuid.uuid4())


async def test_no_limits_admits_without_counting(aredis: aioredis.Redis, scratch_keys: Keys) -> None:
    who = tenant()
    limiter = Limiter(aredis, scratch_keys)
    assert await limiter.admit(who, TenantLimits()) is None
    assert await aredis.exists(scratch_keys.rate(who, "rpm", current_minute())) == 0


async def test_requests_per_minute(aredis: aioredis.Redis, scratch_keys: Keys) -> None:
    same_minute(2)
    who = tenant()
    limiter = Limiter(aredis, scratch_keys)
    limits = TenantLimits(rpm=2)
    assert [await limiter.admit(who, limits) for _ in range(2)] == [None, None]
    minute = current_minute()
    refusal = await limiter.admit(who, limits)
    assert refusal is not None
    assert (refusal.limit, refusal.allowed, refusal.current) == ("rpm", 2, 2)
    assert refusal.resets_at == datetime.fromtimestamp((minute + 1) * 60, UTC)
    message = refusal.message(who)
    assert who in message and "requests per minute limit of 2" in message and "now 2" in message
    counter = scratch_keys.rate(who, "rpm", minute)
    assert int(await aredis.get(counter) or 0) == 2, "a refused request is not counted"
    assert 60 < await aredis.ttl(counter) <= 120
    assert await limiter.admit(tenant(), limits) is None, "each tenant has its own counter"


async def test_concurrent_admissions_never_exceed_the_limit(
    aredis: aioredis.Redis, scratch_keys: Keys
) -> None:
    same_minute(2)
    who = tenant()
    limiter = Limiter(aredis, scratch_keys)
    results = await asyncio.gather(*[limiter.admit(who, TenantLimits(rpm=5)) for _ in range(30)])
    assert sum(r is None for r in results) == 5
    assert {r.limit for r in results if r is not None} == {"rpm"}


async def test_tokens_per_minute(aredis: aioredis.Redis, scratch_keys: Keys) -> None:
    same_minute(2)
    who = tenant()
    limiter = Limiter(aredis, scratch_keys)
    limits = TenantLimits(tpm=100)
    tpm_key = scratch_keys.rate(who, "tpm", current_minute())
    await aredis.set(tpm_key, 99, ex=120)  # what finished requests added (finalize.lua)
    assert await limiter.admit(who, limits) is None
    await aredis.incrby(tpm_key, 1)
    refusal = await limiter.admit(who, limits)
    assert refusal is not None and (refusal.limit, refusal.allowed, refusal.current) == ("tpm", 100, 100)
    assert "tokens per minute" in refusal.message(who)


async def test_daily_budget(aredis: aioredis.Redis, scratch_keys: Keys) -> None:
    who = tenant()
    limiter = Limiter(aredis, scratch_keys)
    limits = TenantLimits(daily_budget_usd=0.5)
    ledger = scratch_keys.usage(who)
    await cast(Awaitable[int], aredis.hset(ledger, "cost_usd", "0.49"))
    assert await limiter.admit(who, limits) is None
    await cast(Awaitable[float], aredis.hincrbyfloat(ledger, "cost_usd", 0.01))
    refusal = await limiter.admit(who, limits)
    assert refusal is not None
    assert (refusal.limit, refusal.allowed) == ("daily_budget_usd", 0.5)
    assert abs(refusal.current - 0.5) < 1e-9
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    assert refusal.resets_at == datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=UTC)
    assert "daily cost budget (USD)" in refusal.message(who)
