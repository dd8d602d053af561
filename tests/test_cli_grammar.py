"""One grammar for ``llm-pool`` and ``python -m llm_pool.health``: ``--json`` anywhere, the documented
exit codes (0 ok, 1 not found / unhealthy, 2 usage or connection error), one actionable line when
Redis cannot be reached. Needs no worker: a pool with none, on the shared Redis, or a closed port."""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from llm_pool.cli import parser
from llm_pool.client import LLMPool
from llm_pool.connections import masked_url
from llm_pool.testing.cluster import free_port
from tests.helpers import REDIS_URL, Pool, user

# Every subcommand with the arguments it needs.
COMMANDS = {
    "workers": [],
    "queue": [],
    "usage": [str(uuid.uuid4())],
    "request": ["some-id"],
    "cancel": ["some-id"],
    "health": [],
    "demo": [],
}


def cli(pool: Pool, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return pool.run_module("llm_pool.cli", *args, **env)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_json_before_or_after_the_command(command: str) -> None:
    rest = COMMANDS[command]
    assert parser().parse_args([command, *rest]).json is False
    assert parser().parse_args(["--json", command, *rest]).json is True
    assert parser().parse_args([command, "--json", *rest]).json is True
    assert parser().parse_args([command, *rest, "--json"]).json is True


@pytest.mark.e2e
def test_usage_errors_exit_2_with_a_clear_message(idle: Pool) -> None:
    tenant = str(uuid.uuid4())
    for args, expected in (
        (["usage", tenant, "--day", "yesterday"], "'yesterday' is not a day written YYYY-MM-DD"),
        (["usage", tenant, "--day", "2024-02-30"], "'2024-02-30' is not a day written YYYY-MM-DD"),
        (["usage", tenant, "--day", "2024-1-5"], "'2024-1-5' is not a day written YYYY-MM-DD"),
        (["usage", "not-a-tenant"], "'not-a-tenant' is not a tenant id (a UUID)"),
        (["workers", "--no-such-option"], "unrecognized arguments"),
        (["demo", "--json"], "--json is not supported"),
    ):
        out = cli(idle, *args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert expected in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.mark.e2e
async def test_usage_takes_a_valid_day_and_a_canonical_tenant(idle: Pool) -> None:
    tenant = uuid.uuid4()
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.hset(idle.keys.usage(str(tenant), "2024-02-29"), mapping={"requests": 3})
    finally:
        await client.aclose()
    out = cli(idle, "usage", str(tenant).upper(), "--day", "2024-02-29", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["tenant_id"] == str(tenant) and data["day"] == "2024-02-29" and data["requests"] == 3
    today = json.loads(cli(idle, "--json", "usage", str(tenant)).stdout)
    assert today["day"] == datetime.now(UTC).strftime("%Y-%m-%d") and today["requests"] == 0


@pytest.mark.e2e
def test_redis_unreachable_is_one_line_naming_the_masked_url(idle: Pool) -> None:
    url = f"redis://admin:s3cret-pw@127.0.0.1:{free_port()}/0"
    for module, args in (
        ("llm_pool.cli", ["workers"]),
        ("llm_pool.cli", ["queue", "--json"]),
        ("llm_pool.cli", ["request", "x"]),
        ("llm_pool.cli", ["cancel", "x"]),
        ("llm_pool.cli", ["health"]),
        ("llm_pool.health", []),
        ("llm_pool.health", ["--json"]),
    ):
        out = idle.run_module(module, *args, REDIS_URL=url)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2, (module, args, out.stderr)
        assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
        assert masked_url(url) in lines[0] and "s3cret" not in out.stderr + out.stdout, lines[0]
        assert "unreachable" in lines[0] and "Check that Redis is running" in lines[0], lines[0]
        assert out.stdout == "", out.stdout


@pytest.mark.e2e
def test_health_is_one_implementation_with_one_set_of_exit_codes(idle: Pool) -> None:
    # No worker under this prefix: unhealthy, 1, from both commands, with and without --json.
    for command in (["llm_pool.cli", "health"], ["llm_pool.health"]):
        module, args = command[0], command[1:]
        text = idle.run_module(module, *args)
        assert text.returncode == 1 and "unhealthy: no live workers" in text.stderr, text.stderr
        as_json = idle.run_module(module, *args, "--json")
        assert as_json.returncode == 1
        assert json.loads(as_json.stdout) == {
            "healthy": False,
            "detail": f"no live workers on {idle.keys.queue} (no {idle.keys.heartbeat_pattern} key)",
        }
        probe = idle.run_module(module, *args, "--worker-id", "nobody", "--quiet")
        assert probe.returncode == 1 and probe.stdout == probe.stderr == ""
    assert cli(idle, "--json", "health").stdout == cli(idle, "health", "--json").stdout


@pytest.mark.e2e
async def test_request_and_cancel_of_unknown_and_finished_ids(idle: Pool) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        unknown = uuid.uuid4().hex
        out = cli(idle, "request", unknown)
        assert out.returncode == 1 and "unknown request" in out.stderr and out.stdout == ""
        assert json.loads(cli(idle, "request", unknown, "--json").stdout)["state"] == "unknown"
        out = cli(idle, "cancel", unknown)
        assert out.returncode == 1 and "nothing to cancel" in out.stderr, out.stderr
        assert not await client.exists(idle.keys.cancel(unknown)), "no cancel key for an unknown id"

        # Finished: a reply key as a worker writes it.
        finished = uuid.uuid4().hex
        reply = {
            "request_id": finished,
            "status": "error",
            "error": {"code": "providers_unavailable", "message": "All providers unavailable"},
            "model": "fast",
            "attempt": 1,
            "latency_ms": 5,
            "metadata": {},
        }
        await client.set(idle.keys.reply(finished), json.dumps(reply), ex=60)
        out = cli(idle, "--json", "cancel", finished)
        assert out.returncode == 1
        assert json.loads(out.stdout) == {
            "request_id": finished,
            "state": "finished",
            "cancel_requested": False,
        }
        assert "already finished (providers_unavailable)" in cli(idle, "cancel", finished).stderr
        assert not await client.exists(idle.keys.cancel(finished)), "no cancel key for a finished request"
        assert cli(idle, "request", finished).returncode == 0

        # Queued (no worker): the cancel key is written, as contract section 5 says.
        async with LLMPool(idle.settings, redis_url=REDIS_URL) as pool_client:
            queued = await pool_client.submit("fast", user(), str(uuid.uuid4()))
        out = cli(idle, "cancel", queued, "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["state"] == "queued" and json.loads(out.stdout)["cancel_requested"]
        assert 0 < await client.ttl(idle.keys.cancel(queued)) <= 600
        await client.delete(f"arq:job:{queued}")
    finally:
        await client.aclose()


def test_masked_url() -> None:
    assert masked_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert masked_url("redis://user:p%40ss@host/1") == "redis://user:***@host/1"
    assert masked_url("redis://leaked-secret@host/0") == "redis://***@host/0"
    assert masked_url("redis://host:6379/0") == "redis://host:6379/0"
    assert masked_url("unix:///run/redis.sock?db=2&password=pw") == "unix:///run/redis.sock?db=2&password=***"
    tls = masked_url("rediss://u:pw@h:6380/0?ssl_ca_certs=/etc/ca.crt")
    assert tls == "rediss://u:***@h:6380/0?ssl_ca_certs=/etc/ca.crt"


@pytest.mark.e2e
async def test_workers_reads_heartbeats_of_workers_from_before_the_split(idle: Pool) -> None:
    old = {  # a heartbeat without jobs_pool_errors, jobs_caller_errors and errors_by_code
        "worker_id": "old-1",
        "host": "h",
        "pid": 1,
        "version": "0.0.9",
        "started_at": datetime.now(UTC).isoformat(),
        "ts": datetime.now(UTC).isoformat(),
        "queue": idle.keys.queue,
        "max_jobs": 4,
        "jobs_running": 1,
        "jobs_done": 7,
        "jobs_failed": 5,
        "groups": ["fast"],
    }
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.set(idle.keys.heartbeat("old-1"), json.dumps(old), ex=60)
        await client.set(idle.keys.heartbeat("garbage"), b"not a heartbeat", ex=60)
    finally:
        await client.aclose()
    data = json.loads(cli(idle, "workers", "--json").stdout)
    assert [w["worker_id"] for w in data] == ["old-1"] and data[0]["jobs_pool_errors"] is None
    header, row = cli(idle, "workers").stdout.splitlines()[:2]
    cells = row.split()  # worker host pid version running done failed caller-errors ...
    assert "FAILED" in header and "CALLER ERRORS" in header, header
    assert cells[4:8] == ["1/4", "7", "5", "?"], row
    assert cli(idle, "health").returncode == 0
