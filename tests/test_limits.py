"""Per-tenant rate limits and budgets, enforced across workers, and an exact ledger."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import cast

import pytest
import redis.asyncio as aioredis

from llm_pool.client import LLMPool
from llm_pool.schemas import ErrorCode, ErrorReply, OkReply
from llm_pool.testing.cluster import FakeProviderProcess
from tests.helpers import REDIS_URL, Pool, user

RPM_TENANT, TPM_TENANT, BUDGET_TENANT = (str(uuid.uuid4()) for _ in range(3))
LIMITS = f"""
[tenants.overrides."{RPM_TENANT}"]
rpm = 3

[tenants.overrides."{TPM_TENANT}"]
tpm = 20

[tenants.overrides."{BUDGET_TENANT}"]
daily_budget_usd = 0.00001
"""


@pytest.fixture(scope="module")
def lpool(tmp_path_factory: pytest.TempPathFactory, provider: FakeProviderProcess) -> Iterator[Pool]:
    pool = Pool(tmp_path_factory.mktemp("limits"), provider, extra=LIMITS)
    first, second = pool.start_worker(), pool.start_worker()
    pool.wait_ready(first, second)
    yield pool
    pool.stop()


def same_minute(needed_s: float = 15) -> None:
    """Fixed one-minute windows: do not start a window test just before the minute turns."""
    left = 60 - time.time() % 60
    if left < needed_s:
        time.sleep(left + 0.5)


@pytest.mark.e2e
async def test_requests_per_minute(lpool: Pool) -> None:
    same_minute()
    async with LLMPool(lpool.settings, redis_url=REDIS_URL) as client:
        replies = [await client.complete("fast", user(), RPM_TENANT) for _ in range(4)]
    assert all(isinstance(r, OkReply) for r in replies[:3]), replies
    refused = replies[3]
    assert isinstance(refused, ErrorReply) and refused.error.code == ErrorCode.OVER_BUDGET
    assert "requests per minute" in refused.error.message and "resets at" in refused.error.message


@pytest.mark.e2e
async def test_tokens_per_minute(lpool: Pool) -> None:
    same_minute()
    async with LLMPool(lpool.settings, redis_url=REDIS_URL) as client:
        replies = [await client.complete("fast", user(), TPM_TENANT) for _ in range(3)]
    # Each request uses 3 prompt + 8 completion tokens: 22 after two, over the limit of 20.
    assert isinstance(replies[0], OkReply) and isinstance(replies[1], OkReply)
    refused = replies[2]
    assert isinstance(refused, ErrorReply) and refused.error.code == ErrorCode.OVER_BUDGET
    assert "tokens per minute" in refused.error.message


@pytest.mark.e2e
async def test_daily_budget(lpool: Pool) -> None:
    async with LLMPool(lpool.settings, redis_url=REDIS_URL) as client:
        for _ in range(20):  # Ollama answers cost nothing: go on until something was paid for
            reply = await client.complete("quality", user(), BUDGET_TENANT)
            if isinstance(reply, ErrorReply) or reply.usage.cost_usd > 0:
                break
        refused = await client.complete("quality", user(), BUDGET_TENANT)
    assert isinstance(refused, ErrorReply) and refused.error.code == ErrorCode.OVER_BUDGET
    assert "daily cost budget" in refused.error.message and "T00:00:00" in refused.error.message


@pytest.mark.e2e
async def test_ledger_exact_under_concurrency(lpool: Pool, aredis: aioredis.Redis) -> None:
    tenant = str(uuid.uuid4())
    async with LLMPool(lpool.settings, redis_url=REDIS_URL) as client:
        replies = await asyncio.gather(*[client.complete("fast", user(), tenant) for _ in range(60)])
    ok = [r for r in replies if isinstance(r, OkReply)]
    assert len(ok) == 60
    raw = await cast(Awaitable[dict[bytes, bytes]], aredis.hgetall(lpool.keys.usage(tenant)))
    ledger = {k.decode(): v.decode() for k, v in raw.items()}
    assert int(ledger["requests"]) == 60
    assert int(ledger["prompt_tokens"]) == sum(r.usage.prompt_tokens for r in ok)
    assert int(ledger["completion_tokens"]) == sum(r.usage.completion_tokens for r in ok)
    assert float(ledger["cost_usd"]) == pytest.approx(sum(r.usage.cost_usd for r in ok))


def test_limits_from_settings(tmp_path: Path) -> None:
    from llm_pool.settings import load_settings

    path = tmp_path / "s.toml"
    path.write_text(LIMITS)
    tenants = load_settings(path, environ={}).tenants
    assert tenants.limits_for(RPM_TENANT).rpm == 3
    assert tenants.limits_for(str(uuid.uuid4())).rpm == 0
