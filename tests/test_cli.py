"""The operators' command, against the live test pool."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from llm_pool.client import LLMPool
from llm_pool.schemas import OkReply
from llm_pool.testing.cluster import FakeProviderProcess
from tests.helpers import REDIS_URL, Pool, user

pytestmark = pytest.mark.e2e


def cli(pool: Pool, *args: str) -> subprocess.CompletedProcess[str]:
    return pool.run_module("llm_pool.cli", *args)


def test_workers_table_and_json(pool: Pool) -> None:
    out = cli(pool, "workers")
    assert out.returncode == 0 and "alpha" in out.stdout and "beta" in out.stdout and "RUNNING" in out.stdout
    data = json.loads(cli(pool, "--json", "workers").stdout)
    assert {w["worker_id"] for w in data} >= {"alpha", "beta"}


async def test_usage_request_cancel_and_queue(pool: Pool) -> None:
    tenant = str(uuid.uuid4())
    async with LLMPool(pool.settings, redis_url=REDIS_URL) as client:
        reply = await client.complete("fast", user(), tenant)
    assert isinstance(reply, OkReply)
    usage = json.loads(cli(pool, "--json", "usage", tenant).stdout)
    assert usage["requests"] == 1 and usage["completion_tokens"] == reply.usage.completion_tokens
    assert "cost_usd" in cli(pool, "usage", tenant).stdout.lower()
    state = json.loads(cli(pool, "--json", "request", reply.request_id).stdout)
    assert state["state"] == "finished" and state["reply"]["content"] == reply.content
    assert "finished ok" in cli(pool, "request", reply.request_id).stdout
    unknown = uuid.uuid4().hex
    assert json.loads(cli(pool, "--json", "request", unknown).stdout)["state"] == "unknown"
    assert cli(pool, "cancel", unknown).returncode == 0
    queue = json.loads(cli(pool, "--json", "queue").stdout)
    assert queue["queue"] == pool.keys.queue and queue["depth"] >= 0
    assert cli(pool, "health").returncode == 0


async def test_queue_and_request_show_waiting_jobs_by_tenant(
    tmp_path: Path, provider: FakeProviderProcess, aredis: aioredis.Redis
) -> None:
    idle = Pool(tmp_path, provider)  # no workers: what is enqueued waits
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    async with LLMPool(idle.settings, redis_url=REDIS_URL) as client:
        ids = [await client.submit("fast", user(), first) for _ in range(3)]
        ids.append(await client.submit("fast", user(), second))
    queue = json.loads(cli(idle, "--json", "queue").stdout)
    assert queue["depth"] == 4 and queue["running"] == 0 and queue["tenants_waiting"] == 2
    assert [(t["turn"], t["tenant"], t["waiting"]) for t in queue["waiting_by_tenant"]] == [
        (1, first, 3),
        (2, second, 1),
    ]
    assert first in cli(idle, "queue").stdout
    states = [json.loads(cli(idle, "--json", "request", i).stdout) for i in ids[:3]]
    assert all(s["state"] == "queued" and s["tenant_id"] == first for s in states)
    # Jobs enqueued within one millisecond tie on score and go in id order, as in arq's queue.
    assert sorted(s["ahead_of_it_for_its_tenant"] for s in states) == [0, 1, 2]
    assert all(s["tenants_waiting"] == 2 for s in states)
    await aredis.delete(*[k async for k in aredis.scan_iter(match=f"{idle.prefix}:*")])
    await aredis.delete(*[f"arq:job:{i}" for i in ids])
