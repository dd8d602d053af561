"""Chaos run: ``python -m bench.chaos [--requests 500] [--workers 3]`` (short form: ``--quick``).

A pool on a Redis server of its own (so restarting it harms nobody), the fake provider, and N
workers. The driver enqueues a mix of streamed and plain requests while a killer SIGKILLs a random
worker every few seconds and starts a replacement, and Redis is restarted once (keeping its data,
as a real restart with persistence does). At the end every request must have exactly one reply,
never two final events, and every stream's text after its last ``reset`` must equal its reply.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bench.progress import bar, echo
from llm_pool.client import LLMPool
from llm_pool.keys import Keys
from llm_pool.settings import load_settings
from llm_pool.testing.cluster import (
    DEPLOYMENTS,
    FakeProviderProcess,
    RedisServer,
    WorkerProcess,
    settings_toml,
    worker_env,
)

SECRETS = {"OPENAI_API_KEY": "sk-chaos-not-a-key", "ANTHROPIC_API_KEY": "sk-ant-chaos-not-a-key"}


def say(message: str) -> None:
    echo(f"[chaos {time.strftime('%H:%M:%S')}] {message}")


@dataclass
class Tracked:
    stream: bool
    finals: int = 0
    resets: int = 0
    text: list[str] = field(default_factory=list)
    seen_outage: bool = False


@dataclass
class Outcome:
    requests: int
    replies: int
    ok: int
    errors: dict[str, int]
    missing: list[str]
    double_finals: list[str]
    streams_checked: int
    stream_mismatches: list[str]
    streams_interrupted: int
    kills: int
    redis_restarts: int
    resets: int
    seconds: float

    @property
    def passed(self) -> bool:
        return not self.missing and not self.double_finals and not self.stream_mismatches

    def summary(self) -> str:
        return (
            f"{self.requests} requests, {self.replies} replies ({self.ok} ok, errors {self.errors}), "
            f"{len(self.missing)} lost, {len(self.double_finals)} with two final events, "
            f"{self.streams_checked} streams checked ({len(self.stream_mismatches)} mismatched, "
            f"{self.streams_interrupted} interrupted by the Redis restart and read from the reply key), "
            f"{self.resets} resets, {self.kills} workers SIGKILLed, {self.redis_restarts} Redis restart(s), "
            f"{self.seconds:.0f} s"
        )


async def run_chaos(
    requests: int = 500,
    workers: int = 3,
    kill_every_s: float = 2.0,
    rate_per_s: float = 40.0,
    redis_restart: bool = True,
) -> Outcome:
    tmp = Path(tempfile.mkdtemp(prefix="llm-pool-chaos-"))
    server = RedisServer(directory=tmp)
    server.start()
    provider = FakeProviderProcess()
    prefix = "chaos"
    keys = Keys(prefix)
    settings_path = tmp / "settings.toml"
    settings_path.write_text(
        settings_toml(
            provider,
            prefix,
            server.url,
            worker={
                "job_lease_s": 2,
                "poll_delay_s": 0.2,
                "max_tries": 10,
                "drain_grace_s": 2,
                "log_level": "WARNING",
            },
        )
    )
    settings = load_settings(settings_path, environ={})
    env = worker_env(settings_path, SECRETS)
    provider.configure_deployments(DEPLOYMENTS, tokens=15, token_delay_ms=30)
    pool = [WorkerProcess(f"c{i}", env, tmp) for i in range(workers)]
    for worker in pool:
        worker.wait_ready(server.url, keys.heartbeat(worker.worker_id), timeout_s=120)
    say(f"{workers} workers up on redis port {server.port}; sending {requests} requests")

    tracked: dict[str, Tracked] = {}
    outage = asyncio.Event()
    done_sending = asyncio.Event()
    kills = restarts = sent = 0
    started = time.monotonic()

    async def listen() -> None:
        while True:
            client = aioredis.Redis.from_url(server.url)
            pubsub = client.pubsub()
            try:
                await pubsub.psubscribe(f"{prefix}:stream:*")
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                    if message is None:
                        continue
                    event = json.loads(message["data"])
                    item = tracked.get(event["request_id"])
                    if item is None:
                        continue
                    if event["type"] == "chunk":
                        item.text.append(event["text"])
                    elif event["type"] == "reset":
                        item.resets += 1
                        item.text.clear()
                    else:
                        item.finals += 1
                        if item.finals == 1:
                            progress.update()
            except (RedisError, OSError):
                for item in tracked.values():
                    if item.finals == 0:
                        item.seen_outage = True
                await asyncio.sleep(0.2)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                    await client.aclose()

    def show_counts() -> None:
        progress.set_postfix(sent=sent, kills=kills, redis_restarts=restarts, refresh=False)

    async def send(client: LLMPool) -> None:
        nonlocal sent
        for index in range(requests):
            request_id = uuid.uuid4().hex
            stream = index % 2 == 0
            tracked[request_id] = Tracked(stream=stream)
            while True:  # enqueueing the same id again is a no-op, so retrying is safe
                try:
                    await client.submit(
                        "fast" if index % 3 else "quality",
                        [{"role": "user", "content": f"chaos {index}"}],
                        str(uuid.uuid4()),
                        stream=stream,
                        request_id=request_id,
                    )
                    break
                except (RedisError, OSError):
                    await asyncio.sleep(0.2)
            if index % 50 == 0:
                say(f"sent {index}/{requests}")
            sent = index + 1
            show_counts()
            await asyncio.sleep(1 / rate_per_s)
        done_sending.set()

    async def chaos() -> None:
        nonlocal kills, restarts
        restart_at = requests / rate_per_s / 2
        while not done_sending.is_set():
            await asyncio.sleep(kill_every_s)
            victim = random.choice([w for w in pool if w.alive])
            victim.kill()
            kills += 1
            show_counts()
            replacement = WorkerProcess(f"c{uuid.uuid4().hex[:6]}", env, tmp)
            pool.append(replacement)
            say(f"SIGKILLed {victim.worker_id}, started {replacement.worker_id}")
            if redis_restart and not restarts and time.monotonic() - started > restart_at:
                say("restarting Redis")
                outage.set()
                server.stop(save=True)
                await asyncio.sleep(2)
                server.start()
                restarts += 1
                show_counts()
                say("Redis is back")

    progress = bar("answered", total=requests, unit="req")
    listener = asyncio.ensure_future(listen())
    await asyncio.sleep(0.5)
    async with LLMPool(settings, redis_url=server.url) as client:
        await asyncio.gather(send(client), chaos())
        say("all sent; waiting for every reply")
    reader = aioredis.Redis.from_url(server.url)
    deadline = time.monotonic() + 180
    replies: list[Any] = []
    ids = list(tracked)
    try:
        while time.monotonic() < deadline:
            try:
                replies = await reader.mget([keys.reply(i) for i in ids])
            except (RedisError, OSError):
                await asyncio.sleep(0.5)
                continue
            left = sum(r is None for r in replies)
            progress.update(max(0, len(ids) - left - progress.n))  # replies whose final event was missed
            if not left:
                break
            say(f"{left} replies outstanding")
            await asyncio.sleep(1)
    finally:
        await reader.aclose()
        progress.close()
    await asyncio.sleep(1)  # late final events
    listener.cancel()
    for worker in pool:
        worker.stop(timeout_s=10)
    provider.stop()
    server.stop(save=False)

    errors: dict[str, int] = {}
    ok = 0
    missing, double, mismatched = [], [], []
    checked = interrupted = resets = 0
    for request_id, raw in zip(ids, replies, strict=True):
        item = tracked[request_id]
        resets += item.resets
        if item.finals > 1:
            double.append(request_id)
        if raw is None:
            missing.append(request_id)
            continue
        reply = json.loads(raw)
        if reply["status"] == "ok":
            ok += 1
        else:
            errors[reply["error"]["code"]] = errors.get(reply["error"]["code"], 0) + 1
        if item.stream and reply["status"] == "ok":
            if item.seen_outage or item.finals == 0:
                interrupted += 1
            else:
                checked += 1
                if "".join(item.text) != reply["content"]:
                    mismatched.append(request_id)
    shutil.rmtree(tmp, ignore_errors=True)
    return Outcome(
        requests=len(ids),
        replies=len(ids) - len(missing),
        ok=ok,
        errors=errors,
        missing=missing,
        double_finals=double,
        streams_checked=checked,
        stream_mismatches=mismatched,
        streams_interrupted=interrupted,
        kills=kills,
        redis_restarts=restarts,
        resets=resets,
        seconds=time.monotonic() - started,
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="the short form CI runs: 80 requests")
    args = parser.parse_args()
    requests = 80 if args.quick else args.requests
    outcome = asyncio.run(run_chaos(requests=requests, workers=args.workers))
    say(outcome.summary())
    say("PASSED" if outcome.passed else "FAILED")
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
