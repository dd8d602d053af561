"""``llm-pool``: the operators' command (``python -m llm_pool.cli`` works too).

    llm-pool workers                 live workers (their heartbeats)
    llm-pool queue                   queue depth, oldest job's age, queued jobs by tenant
    llm-pool usage TENANT [--day D]  a tenant's ledger for one UTC day (default today)
    llm-pool request ID              queued, running, or its reply
    llm-pool cancel ID               ask the pool to stop a request
    llm-pool health [--worker-id ID] exit 0 when healthy
    llm-pool demo "a prompt"         an offline pool on this machine, answering one prompt

Tables for people by default; ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis
from redis.exceptions import RedisError

from llm_pool.connections import async_redis
from llm_pool.fairness import fair_prefix
from llm_pool.health import check, live_workers
from llm_pool.keys import Keys, utc_day
from llm_pool.schemas import parse_reply
from llm_pool.settings import Settings, SettingsError, load_settings

QUEUE_SAMPLE = 1000


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain fixed-width table."""
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _age(iso: str) -> str:
    seconds = (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    return f"{seconds:.0f}s"


async def cmd_workers(redis: Redis, keys: Keys, _: argparse.Namespace) -> tuple[Any, str]:
    workers = sorted(await live_workers(redis, keys), key=lambda w: w.worker_id)
    data = [w.model_dump() for w in workers]
    rows = [
        {
            "worker": w.worker_id,
            "host": w.host,
            "pid": w.pid,
            "version": w.version,
            "running": f"{w.jobs_running}/{w.max_jobs}",
            "done": w.jobs_done,
            "failed": w.jobs_failed,
            "up": _age(w.started_at),
            "last beat": _age(w.ts) + " ago",
            "groups": ",".join(w.groups),
        }
        for w in workers
    ]
    text = table(rows, list(rows[0])) if rows else f"no live workers on {keys.queue}"
    return data, text


async def cmd_queue(redis: Redis, keys: Keys, _: argparse.Namespace) -> tuple[Any, str]:
    depth = await redis.zcard(keys.queue)
    head = await redis.zrange(keys.queue, 0, QUEUE_SAMPLE - 1, withscores=True)
    ids = [member.decode() for member, _ in head]
    flags = await redis.mget([in_progress_key_prefix + i for i in ids]) if ids else []
    running = sum(flag is not None for flag in flags)
    waiting = [score for (_, score), flag in zip(head, flags, strict=True) if flag is None]
    oldest_s = time.time() - waiting[0] / 1000 if waiting else 0.0
    by_tenant = await waiting_by_tenant(redis, keys)
    indexed = sum(t["waiting"] for t in by_tenant)
    data = {
        "queue": keys.queue,
        "depth": depth,
        "running": running,
        "running_exact": depth <= QUEUE_SAMPLE,  # else: counted among the first QUEUE_SAMPLE jobs
        "oldest_waiting_s": round(oldest_s, 3),
        "tenants_waiting": len(by_tenant),
        "waiting_by_tenant": by_tenant,
        "not_yet_indexed": max(0, depth - running - indexed) if depth <= QUEUE_SAMPLE else None,
    }
    text = (
        f"queue {keys.queue}: {depth} job(s), {running} running"
        + (f" (among the first {QUEUE_SAMPLE})" if depth > QUEUE_SAMPLE else "")
        + f"; oldest waiting {oldest_s:.1f}s; {len(by_tenant)} tenant(s) waiting, served in turn"
    )
    if by_tenant:
        text += "\n" + table(by_tenant, ["turn", "tenant", "waiting", "oldest_s"])
    return data, text


async def waiting_by_tenant(redis: Redis, keys: Keys) -> list[dict[str, Any]]:
    """Waiting jobs per tenant from the fair-share index, in the order tenants will be served."""
    prefix = fair_prefix(keys)
    tenants = [t.decode() for t in await redis.zrange(prefix + "tenants", 0, -1)]
    pipe = redis.pipeline(transaction=False)
    for tenant in tenants:
        pipe.zcard(prefix + "q:" + tenant)
        pipe.zrange(prefix + "q:" + tenant, 0, 0, withscores=True)
    answers = await pipe.execute() if tenants else []
    now = time.time()
    rows = []
    for turn, (tenant, count, first) in enumerate(
        zip(tenants, answers[::2], answers[1::2], strict=True), start=1
    ):
        if count:
            oldest = round(now - first[0][1] / 1000, 1) if first else 0.0
            rows.append(
                {"turn": turn, "tenant": tenant or "(unreadable)", "waiting": count, "oldest_s": oldest}
            )
    return rows


async def cmd_usage(redis: Redis, keys: Keys, args: argparse.Namespace) -> tuple[Any, str]:
    day = args.day or utc_day()
    raw = await cast(Awaitable[dict[bytes, bytes]], redis.hgetall(keys.usage(args.tenant, day)))
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    data = {
        "tenant_id": args.tenant,
        "day": day,
        "requests": int(fields.get("requests", 0)),
        "prompt_tokens": int(fields.get("prompt_tokens", 0)),
        "completion_tokens": int(fields.get("completion_tokens", 0)),
        "cost_usd": float(fields.get("cost_usd", 0.0)),
    }
    text = table([data], list(data))
    return data, text


async def cmd_request(redis: Redis, keys: Keys, args: argparse.Namespace) -> tuple[Any, str]:
    request_id = args.request_id
    raw = await redis.get(keys.reply(request_id))
    if raw is not None:
        reply = parse_reply(raw)
        data: dict[str, Any] = {
            "request_id": request_id,
            "state": "finished",
            "reply": reply.model_dump(mode="json"),
        }
        if reply.status == "ok":
            usage = reply.usage
            text = (
                f"{request_id}: finished ok, served by {reply.served_by}"
                f"{' (fallback)' if reply.fallback else ''} in {reply.latency_ms} ms, "
                f"{usage.prompt_tokens}+{usage.completion_tokens} tokens, ${usage.cost_usd:.6f}"
            )
        else:
            text = f"{request_id}: finished with {reply.error.code.value}: {reply.error.message}"
        return data, text
    if await redis.exists(in_progress_key_prefix + request_id):
        return {"request_id": request_id, "state": "running"}, f"{request_id}: running"
    score = await redis.zscore(keys.queue, request_id)
    if score is not None:
        waited = time.time() - score / 1000
        data = {"request_id": request_id, "state": "queued", "waited_s": round(waited, 3)}
        text = f"{request_id}: queued for {waited:.1f}s"
        prefix = fair_prefix(keys)
        tenant = await cast(Awaitable[bytes | None], redis.hget(prefix + "jobs", request_id))
        if tenant is not None:
            data["tenant_id"] = tenant.decode()
            data["ahead_of_it_for_its_tenant"] = await redis.zrank(
                prefix + "q:" + tenant.decode(), request_id
            )
            data["tenants_waiting"] = await redis.zcard(prefix + "tenants")
            text += (
                f", {data['ahead_of_it_for_its_tenant']} job(s) of its tenant ahead of it, "
                f"{data['tenants_waiting']} tenant(s) taking turns"
            )
        return data, text
    return {
        "request_id": request_id,
        "state": "unknown",
    }, f"{request_id}: unknown (never enqueued, or expired)"


async def cmd_cancel(redis: Redis, keys: Keys, args: argparse.Namespace) -> tuple[Any, str]:
    await redis.set(keys.cancel(args.request_id), b"1", ex=600)
    return {"request_id": args.request_id, "cancel_requested": True}, f"{args.request_id}: cancel requested"


COMMANDS = {
    "workers": cmd_workers,
    "queue": cmd_queue,
    "usage": cmd_usage,
    "request": cmd_request,
    "cancel": cmd_cancel,
}


async def _run(settings: Settings, args: argparse.Namespace) -> tuple[Any, str]:
    redis = async_redis(settings.redis, socket_connect_timeout=5, socket_timeout=10)
    try:
        return await COMMANDS[args.command](redis, Keys(settings.redis.key_prefix), args)
    finally:
        await redis.aclose()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llm-pool", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("workers", help="live workers")
    sub.add_parser("queue", help="queue depth and waiting jobs by tenant")
    usage = sub.add_parser("usage", help="a tenant's ledger for one day")
    usage.add_argument("tenant")
    usage.add_argument("--day", help="YYYY-MM-DD (UTC), default today")
    request = sub.add_parser("request", help="the state of one request")
    request.add_argument("request_id")
    cancel = sub.add_parser("cancel", help="cancel a request")
    cancel.add_argument("request_id")
    health = sub.add_parser("health", help="exit 0 when the pool (or one worker) is alive")
    health.add_argument("--worker-id")
    demo = sub.add_parser("demo", help="answer one prompt with an offline pool on this machine")
    demo.add_argument("prompt", nargs="?", default="Tell me about queues.")
    demo.add_argument("--redis-url", help="the Redis for the demo and its worker (default: 127.0.0.1:6379)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "demo":
        from llm_pool.demo import run_demo

        return run_demo(args.prompt, args.redis_url)
    try:
        settings = load_settings()
        if args.command == "health":
            healthy, why = asyncio.run(check(args.worker_id))
            if args.json:
                print(json.dumps({"healthy": healthy, "detail": why}))
            else:
                print(("healthy: " if healthy else "unhealthy: ") + why)
            return 0 if healthy else 1
        data, text = asyncio.run(_run(settings, args))
    except (SettingsError, RedisError, OSError) as exc:
        print(f"llm-pool: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
