"""The operators' command, against the live test pool."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from llm_pool.client import LLMPool
from llm_pool.schemas import OkReply
from llm_pool.testing.cluster import FakeProviderProcess, aforget_keys
from tests.helpers import REDIS_URL, Pool, fail_group, request, run_plain, user

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
    assert cli(pool, "cancel", unknown).returncode == 1, "nothing to cancel"
    assert cli(pool, "cancel", reply.request_id).returncode == 1, "already finished"
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
    await aforget_keys(aredis, f"{idle.prefix}:*")
    await aredis.delete(*[f"arq:job:{i}" for i in ids])


def beats(pool: Pool) -> list[dict[str, Any]]:
    out = cli(pool, "workers", "--json")
    assert out.returncode == 0, out.stderr
    return [w for w in json.loads(out.stdout) if w["worker_id"] in ("alpha", "beta")]


def totals(workers: list[dict[str, Any]]) -> dict[str, int]:
    fields = ("jobs_done", "jobs_failed", "jobs_pool_errors", "jobs_caller_errors")
    counts = {f: sum(w[f] for w in workers) for f in fields}
    for w in workers:
        for code, n in w["errors_by_code"].items():
            counts[code] = counts.get(code, 0) + n
    return counts


async def test_workers_separate_provider_failures_from_caller_errors(pool: Pool) -> None:
    interval_s = pool.settings.worker.heartbeat_interval_s
    before = totals(beats(pool))
    invalid, _ = await run_plain(pool, "complete", {"model": "fast", "messages": []})  # caller's fault
    assert invalid["error"]["code"] == "invalid_request"
    timed_out, _ = await run_plain(pool, "complete", request(timeout_s=0.001))  # its own budget
    assert timed_out["error"]["code"] == "timeout"
    fail_group(pool, "quality")
    fail_group(pool, "fast")
    failed = await run_plain(pool, "complete", request())  # every provider failed: the pool's
    assert failed[0]["error"]["code"] == "providers_unavailable"
    pool.provider.reset()
    await asyncio.sleep(interval_s * 1.5)  # the next heartbeats
    after = totals(beats(pool))
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert delta["jobs_caller_errors"] == 2 and delta["jobs_pool_errors"] == 1, delta
    assert delta["jobs_failed"] == 3 and delta["jobs_done"] == 0, delta
    assert delta["invalid_request"] == delta["timeout"] == delta["providers_unavailable"] == 1, delta
    table = cli(pool, "workers").stdout
    assert "FAILED" in table and "CALLER ERRORS" in table and "caller errors: invalid_request" in table
