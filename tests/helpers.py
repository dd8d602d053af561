"""Shared code of the end-to-end tests (fixtures stay in conftest.py): the pool under test, and
helpers that talk to it from outside, as a foreign program would: crafted arq envelopes written
with redis-py, private pools and private Redis servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import httpx
import redis
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from llm_pool.keys import Keys
from llm_pool.settings import Settings, load_settings
from llm_pool.testing.cluster import (
    DEPLOYMENTS,
    ROOT,
    FakeProviderProcess,
    RedisServer,
    WorkerProcess,
    forget_keys,
    free_port,
    settings_toml,
    worker_env,
)
from llm_pool.testing.front_door import FrontDoorProcess
from tests.plain import Listener, plain_arq

# What an operator whose WebSocket handlers listen on channels of their own would set.
ALLOWED_CHANNELS = ["{prefix}:stream:*", "ws:*"]

REDIS_URL = os.environ.get("LLM_POOL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

# Planted secrets: the logs, replies and heartbeats must never contain them.
SECRETS = {
    "OPENAI_API_KEY": "sk-planted-openai-" + uuid.uuid4().hex,
    "ANTHROPIC_API_KEY": "sk-ant-planted-" + uuid.uuid4().hex,
}


class Pool:
    """The pool under test: its settings, keys, provider and workers."""

    def __init__(
        self,
        tmp: Path,
        provider: FakeProviderProcess,
        worker: dict[str, Any] | None = None,
        redis_url: str = REDIS_URL,
        router: dict[str, Any] | None = None,
        extra: str = "",
        deployments: tuple[tuple[str, str, str], ...] = DEPLOYMENTS,
        redis_options: dict[str, Any] | None = None,
    ) -> None:
        self.prefix = f"t{uuid.uuid4().hex[:10]}"
        self.keys = Keys(self.prefix)
        self.provider = provider
        self.tmp = tmp
        self.redis_url = redis_url
        self.settings_path = tmp / "settings.toml"
        self.settings_path.write_text(
            settings_toml(
                provider,
                self.prefix,
                redis_url,
                worker=worker,
                router=router,
                deployments=deployments,
                extra=extra,
                redis_options=redis_options,
            )
        )
        self.env = worker_env(self.settings_path, SECRETS)
        self.settings: Settings = load_settings(self.settings_path, environ={})
        self.workers: list[WorkerProcess] = []

    def start_worker(self, worker_id: str | None = None) -> WorkerProcess:
        worker = WorkerProcess(worker_id or f"w-{uuid.uuid4().hex[:6]}", self.env, self.tmp)
        self.workers.append(worker)
        return worker

    def wait_ready(self, *workers: WorkerProcess) -> None:
        for worker in workers:
            worker.wait_ready(self.redis_url, self.keys.heartbeat(worker.worker_id))

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    def run_module(self, module: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``python -m MODULE ARGS`` as an operator would run it against this pool."""
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            env={**self.env, "REDIS_URL": self.redis_url, **env},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )

    def logs(self) -> str:
        return "".join(w.log_path.read_text(errors="replace") for w in self.workers)


TENANT = str(uuid.uuid4())


def sync_get(client: redis.Redis, key: str) -> bytes | None:
    """redis-py's sync client typed for what it returns here (its stubs say "maybe awaitable")."""
    return cast(bytes | None, client.get(key))


def sync_pttl(client: redis.Redis, key: str) -> int:
    return cast(int, client.pttl(key))


def user(text: str = "hello there friend") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def decode(raw: bytes | str | None) -> dict[str, Any]:
    assert raw is not None
    value = json.loads(raw)
    assert isinstance(value, dict)
    return value


# What the fake provider streams by default: 8 tokens, "tok0 " to "tok7 ".
EXPECTED_TEXT = "".join(f"tok{i} " for i in range(8))

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def fail_group(pool: Pool, group: str, fault: str = "500") -> None:
    pool.provider.configure_deployments(DEPLOYMENTS, group, fault=fault)


async def run_plain(
    pool: Pool, function: str, payload: Any, channel: str | None = None, request_id: str | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Enqueue with plain arq, listen with plain redis-py, return (reply key, channel events)."""
    request_id = request_id or uuid.uuid4().hex
    channel = channel or pool.keys.stream(request_id)
    client = aioredis.Redis.from_url(REDIS_URL)
    arq = await plain_arq(REDIS_URL, pool.keys.queue)
    try:
        async with Listener(client, channel) as listener:
            job = await arq.enqueue_job(function, payload, _job_id=request_id)
            assert job is not None
            events = await listener.until_final()
            reply = decode(await client.get(pool.keys.reply(request_id)))
            assert await listener.quiet_for(0.3) == [], "nothing may follow the final event"
    finally:
        await arq.aclose()
        await client.aclose()
    return reply, events


JOB_PREFIX = b"arq:job:"
ARQ_PREFIXES = (JOB_PREFIX, b"arq:in-progress:", b"arq:result:", b"arq:retry:")


def request(**overrides: Any) -> dict[str, Any]:
    """A valid request object for the ``quality`` group, with fields replaced or added."""
    return {"model": "quality", "messages": user(), "tenant_id": TENANT, **overrides}


def request_json(**overrides: Any) -> str:
    """A valid request object (contract section 1) as JSON text, with fields replaced or added."""
    body: dict[str, Any] = {
        "model": "fast",
        "messages": [{"role": "user", "content": "hi"}],
        "tenant_id": TENANT,
        **overrides,
    }
    return json.dumps(body)


def envelope(function: str, argument_json: str | bytes, et: int) -> bytes:
    """arq's JSON job envelope around one argument given as raw JSON text (so it can be anything)."""
    argument = argument_json.encode() if isinstance(argument_json, str) else argument_json
    return b'{"t":null,"f":"%s","a":[%s],"k":{},"et":%d}' % (function.encode(), argument, et)


async def redis_now_ms(client: aioredis.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def put_job(
    client: aioredis.Redis, queue: str, job_id: str | bytes, job: bytes | None, score: float
) -> None:
    """What arq's enqueue does, by hand: ``SET arq:job:{id}`` (unless ``job`` is None), ``ZADD``."""
    raw_id = job_id.encode() if isinstance(job_id, str) else job_id
    async with client.pipeline(transaction=True) as pipe:
        if job is not None:
            pipe.set(JOB_PREFIX + raw_id, job, px=86_400_000)
        pipe.zadd(queue, {raw_id: score})
        await pipe.execute()


async def final_events(listener: Listener, timeout_s: float, what: str) -> list[dict[str, Any]]:
    """The listener's events up to the final one; an assertion error naming ``what`` if none came."""
    try:
        return await listener.until_final(timeout_s=timeout_s)
    except TimeoutError:
        raise AssertionError(
            f"{what}: no final event on {listener.channel} within {timeout_s:g}s "
            f"(events so far: {listener.events})"
        ) from None


async def get_json(client: aioredis.Redis, key: str) -> dict[str, Any] | None:
    raw = await client.get(key)
    if raw is None:
        return None
    value = json.loads(raw)
    assert isinstance(value, dict), f"{key} holds {raw!r}, not a JSON object"
    return value


async def wait_for_key(
    client: aioredis.Redis, key: str, timeout_s: float, poll_s: float = 0.05
) -> bytes | None:
    """The key's value as soon as it exists (polled every ``poll_s``), or None after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        raw = cast(bytes | None, await client.get(key))
        if raw is not None or time.monotonic() >= deadline:
            return raw
        await asyncio.sleep(poll_s)


async def job_ended(client: aioredis.Redis, keys: Keys, job_id: str, timeout_s: float = 5.0) -> bool:
    """Whether the job leaves arq's records (its envelope and its queue entry) within ``timeout_s``:
    the worker records a job's end just after its final event."""
    deadline = time.monotonic() + timeout_s
    while True:
        gone = not await client.exists(keys.job(job_id)) and await client.zscore(keys.queue, job_id) is None
        if gone or time.monotonic() >= deadline:
            return gone
        await asyncio.sleep(0.01)


def provider_calls(provider: FakeProviderProcess) -> int:
    """Chat requests the fake provider received, over all deployments."""
    return sum(stats["requests"] for stats in provider.stats().values())


def worker_state(pool: Pool) -> str:
    """For assertion messages: which workers are alive and beating."""
    client = redis.Redis.from_url(pool.redis_url)
    try:
        return ", ".join(
            f"{w.worker_id}: alive={w.alive} "
            f"heartbeat={bool(client.exists(pool.keys.heartbeat(w.worker_id)))}"
            for w in pool.workers
        )
    finally:
        client.close()


def assert_workers_serving(pool: Pool, client_url: str | None = None) -> None:
    """Every worker process is alive and its heartbeat key exists."""
    client = redis.Redis.from_url(client_url or pool.redis_url)
    try:
        for worker in pool.workers:
            assert worker.alive, f"worker {worker.worker_id} died; see {worker.log_path}"
            assert client.exists(pool.keys.heartbeat(worker.worker_id)), (
                f"worker {worker.worker_id} has no heartbeat key; see {worker.log_path}"
            )
    finally:
        client.close()


async def forget_jobs(client: aioredis.Redis, *request_ids: str | bytes) -> None:
    """Delete arq's keys of jobs a test wrote by hand (they may outlive the pool's prefix)."""
    for request_id in request_ids:
        raw = request_id.encode() if isinstance(request_id, str) else request_id
        await client.delete(*(prefix + raw for prefix in ARQ_PREFIXES))


def cleanup(pool: Pool, request_ids: list[str] | None = None) -> None:
    """Delete what a pool left in the shared Redis: its prefix and the arq keys of its jobs."""
    if pool.redis_url != REDIS_URL:
        return  # a private server: it goes away with everything on it
    client = redis.Redis.from_url(REDIS_URL)
    try:
        forget_keys(client, f"{pool.prefix}:*")
        for request_id in request_ids or []:
            client.delete(*(prefix + request_id.encode() for prefix in ARQ_PREFIXES))
    finally:
        client.close()


@contextmanager
def own_pool(
    tmp_path: Path, provider: FakeProviderProcess, workers: int = 1, **pool_options: Any
) -> Iterator[Pool]:
    """A pool of its own (``Pool(tmp_path, provider, **pool_options)``) with running workers."""
    pool = Pool(tmp_path, provider, **pool_options)
    try:
        started = [pool.start_worker() for _ in range(workers)]
        pool.wait_ready(*started)
        yield pool
    finally:
        pool.stop()
        cleanup(pool)


@contextmanager
def private_redis(config: dict[str, str] | None = None) -> Iterator[RedisServer]:
    """A redis-server of our own on a free port (``config``: extra options, e.g. maxmemory)."""
    server = RedisServer(port=free_port(), config=config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def kill_clients_named(client: aioredis.Redis, name: str) -> int:
    """``CLIENT KILL`` every connection named ``name`` (redis-py's ``client_name``), as a network
    failure would drop them; how many there were."""
    killed = 0
    for entry in await client.client_list():
        if entry.get("name") == name:
            killed += int(await client.client_kill_filter(_id=entry["id"]))
    return killed


def new_id() -> str:
    return uuid.uuid4().hex


def same_minute(needed_s: float) -> None:
    """Per-minute limits use fixed windows: do not start a window test just before the minute turns."""
    left = 60 - time.time() % 60
    if left < needed_s:
        time.sleep(left + 0.2)


WORKER_USER = "poolworker"


def acl_worker_url(server: RedisServer, password: str) -> str:
    """The URL a worker uses on ``server`` as user ``poolworker`` (see ``set_worker_acl``)."""
    return f"redis://{WORKER_USER}:{password}@127.0.0.1:{server.port}/0"


def set_worker_acl(server: RedisServer, password: str, *rules: str) -> None:
    """``ACL SETUSER poolworker reset on >password RULES...`` on a private server."""
    client = redis.Redis.from_url(server.url)
    try:
        rule = ("ACL", "SETUSER", WORKER_USER, "reset", "on", f">{password}", *rules)
        client.execute_command(*rule)  # type: ignore[no-untyped-call]
    finally:
        client.close()


def start_front_door(pool: Pool, log_path: Path) -> FrontDoorProcess:
    door = FrontDoorProcess({**pool.env, "REDIS_URL": pool.redis_url}, log_path)
    door.wait_ready()
    return door


def stop_cleanly(door: FrontDoorProcess) -> None:
    """SIGTERM: uvicorn shuts down gracefully, then re-raises the signal (so it exits with -15)."""
    code = door.stop()
    log = door.log_path.read_text()
    assert code in (0, -signal.SIGTERM) and "Application shutdown complete" in log, (code, door.log_path)
    assert "Traceback" not in log, log[log.index("Traceback") :][:3000]


# What a developer's shell may hold that the pool's tests and demo must not pick up.
JUNK = {
    "REDIS_URL": "redis://junk.invalid:1/0",
    "OLLAMA_BASE_URL": "http://127.0.0.1:9",
    "OPENAI_API_BASE": "http://127.0.0.1:9/v1",
    "ANTHROPIC_API_BASE": "http://127.0.0.1:9",
    "LLM_POOL__WORKER__MAX_JOBS": "junk",
    "LLM_POOL__REDIS__URL": "junk",
}


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A worker's /metrics: (sample name, its labels) -> value."""
    text = httpx.get(url, timeout=5).raise_for_status().text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)
