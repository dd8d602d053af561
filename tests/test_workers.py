"""Operators' view: several worker processes on one queue, heartbeats, the health command, logs."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid

import pytest
import redis

from llm_pool.client import LLMPool
from llm_pool.schemas import Heartbeat, OkReply
from llm_pool.testing.cluster import DEPLOYMENTS
from tests.helpers import (
    REDIS_URL,
    SECRETS,
    TENANT,
    WEATHER_TOOL,
    Pool,
    fail_group,
    run_plain,
    sync_get,
    sync_pttl,
    user,
)

pytestmark = pytest.mark.e2e


def heartbeat(redis_sync: redis.Redis, pool: Pool, worker_id: str) -> Heartbeat | None:
    raw = sync_get(redis_sync, pool.keys.heartbeat(worker_id))
    return Heartbeat.model_validate_json(raw) if raw is not None else None


def health(pool: Pool, *args: str) -> subprocess.CompletedProcess[str]:
    return pool.run_module("llm_pool.health", *args)


def test_heartbeat_key_per_worker(pool: Pool, redis_sync: redis.Redis) -> None:
    for worker_id in ("alpha", "beta"):
        beat = heartbeat(redis_sync, pool, worker_id)
        assert beat is not None, worker_id
        assert beat.worker_id == worker_id and beat.queue == pool.keys.queue
        assert beat.max_jobs == pool.settings.worker.max_jobs
        assert beat.groups == ["fast", "quality"] and beat.pid > 0 and beat.version
        ttl_ms = sync_pttl(redis_sync, pool.keys.heartbeat(worker_id))
        assert 0 < ttl_ms <= 3 * pool.settings.worker.heartbeat_interval_s * 1000


async def test_two_workers_share_the_load(pool: Pool, redis_sync: redis.Redis) -> None:
    pool.provider.configure_deployments(DEPLOYMENTS, token_delay_ms=30)
    before = {w: heartbeat(redis_sync, pool, w) for w in ("alpha", "beta")}
    async with LLMPool(pool.settings, redis_url=REDIS_URL) as client:

        async def one(i: int) -> OkReply:
            await asyncio.sleep(i * 0.03)  # arrivals spread over time, as in real traffic
            reply = await client.complete("fast", user(), TENANT)
            assert isinstance(reply, OkReply)
            return reply

        await asyncio.gather(*[one(i) for i in range(40)])
    await asyncio.sleep(pool.settings.worker.heartbeat_interval_s * 1.5)
    after = {w: heartbeat(redis_sync, pool, w) for w in ("alpha", "beta")}
    served = {}
    for w in ("alpha", "beta"):
        b, a = before[w], after[w]
        assert a is not None and b is not None
        served[w] = a.jobs_done - b.jobs_done
    assert sum(served.values()) >= 40
    assert min(served.values()) >= 5, f"one worker took almost everything: {served}"


def test_killed_worker_disappears_and_pool_stays_healthy(pool: Pool, redis_sync: redis.Redis) -> None:
    doomed = pool.start_worker(f"doomed-{uuid.uuid4().hex[:4]}")
    pool.wait_ready(doomed)
    assert health(pool, "--worker-id", doomed.worker_id).returncode == 0
    doomed.kill()
    ttl = 3 * pool.settings.worker.heartbeat_interval_s
    deadline = time.monotonic() + ttl + 2
    while redis_sync.exists(pool.keys.heartbeat(doomed.worker_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not redis_sync.exists(pool.keys.heartbeat(doomed.worker_id)), "the key expires by itself"
    probe = health(pool, "--worker-id", doomed.worker_id)
    assert probe.returncode == 1 and "no heartbeat" in probe.stderr
    overall = health(pool)
    assert overall.returncode == 0, overall.stderr
    assert "live worker" in overall.stdout


def test_health_fails_with_no_workers(pool: Pool) -> None:
    result = pool.run_module("llm_pool.health", LLM_POOL__REDIS__KEY_PREFIX=f"empty{uuid.uuid4().hex[:6]}")
    assert result.returncode == 1 and "no live workers" in result.stderr


async def test_logs_hold_no_message_text_or_api_keys(pool: Pool, redis_sync: redis.Redis) -> None:
    secret_text = f"my-password-is-{uuid.uuid4().hex}"
    async with LLMPool(pool.settings, redis_url=REDIS_URL) as client:
        first = await client.complete("quality", user(secret_text), TENANT)
        assert not any(key in first.model_dump_json() for key in SECRETS.values())
        [e async for e in client.stream("fast", user(secret_text), TENANT)]
        await client.complete("quality", user(secret_text), TENANT, tools=[WEATHER_TOOL])
        fail_group(pool, "quality")
        fail_group(pool, "fast")
        failed = await client.complete("quality", user(secret_text), TENANT)
        assert failed.status == "error"
        pool.provider.reset()
    invalid, _ = await run_plain(pool, "complete", {"model": "quality", "messages": user(secret_text)})
    assert invalid["error"]["code"] == "invalid_request"
    logs = pool.logs()
    assert "request_finished" in logs, "the workers do log"
    assert secret_text not in logs
    for key in SECRETS.values():
        assert key not in logs
        for worker_id in ("alpha", "beta"):
            assert key not in (sync_get(redis_sync, pool.keys.heartbeat(worker_id)) or b"").decode()
