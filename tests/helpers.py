"""Small helpers for end-to-end tests that talk to the pool from outside, as a foreign program would:
crafted arq envelopes written with redis-py, private pools and private Redis servers."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import redis
import redis.asyncio as aioredis

from llm_pool.testing.cluster import FakeProviderProcess, RedisServer, free_port
from tests.conftest import REDIS_URL, TENANT, Pool
from tests.plain import Listener

JOB_PREFIX = b"arq:job:"
ARQ_PREFIXES = (JOB_PREFIX, b"arq:in-progress:", b"arq:result:", b"arq:retry:")


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
        for key in client.scan_iter(match=f"{pool.prefix}:*", count=1000):
            client.delete(key)
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
