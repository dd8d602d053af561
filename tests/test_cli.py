"""The operators' command, against the live test pool."""

from __future__ import annotations

import json
import subprocess
import uuid

from llm_pool.client import LLMPool
from llm_pool.schemas import OkReply
from tests.conftest import REDIS_URL, Pool, user


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
