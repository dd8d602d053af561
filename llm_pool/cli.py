"""``llm-pool``: the operators' command (``python -m llm_pool.cli`` works too).

    llm-pool workers                   live workers (their heartbeats)
    llm-pool queue                     queue depth, oldest job's age, queued jobs by tenant
    llm-pool usage TENANT [--day D]    a tenant's ledger for one UTC day (D: YYYY-MM-DD, default today)
    llm-pool request ID                queued, running, or its reply
    llm-pool cancel ID                 ask the pool to stop a queued or running request
    llm-pool health [--worker-id ID]   the same as python -m llm_pool.health
    llm-pool demo "a prompt"           an offline pool on this machine, answering one prompt
    llm-pool serve-http [--host H] [--port P]   the old service's HTTP API in front of the pool
                                       (needs the http extra; default 127.0.0.1:8004; docs/http.md)

Tables for people by default; ``--json`` (before or after the command) for scripts.

Exit codes:
  0  done: the answer is printed (stdout)
  1  not found or unhealthy: an unknown request id, a cancel of a request that is unknown or already
     finished (nothing is written), no live worker for health (the text on stderr; --json on stdout)
  2  usage error (bad option, a --day that is not YYYY-MM-DD, a TENANT that is not a UUID),
     unreadable settings, or Redis unreachable or refusing: one line on stderr, naming the Redis URL
     (password masked) and what to check
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from llm_pool import pool_state
from llm_pool.connections import async_redis
from llm_pool.errors import redis_failure
from llm_pool.health import (
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_OK,
    add_arguments,
    report,
    section_address,
    settings_or_exit_code,
)
from llm_pool.keys import Keys, utc_day
from llm_pool.pool_state import live_workers
from llm_pool.schemas import parse_reply
from llm_pool.settings import Settings

PROG = "llm-pool"
QUEUE_SAMPLE = 1000
DAY_FORMAT = re.compile(r"\d{4}-\d{2}-\d{2}")
# serve-http's defaults: loopback only unless told otherwise (the old service listened on 0.0.0.0,
# which the Procfile and docker-compose.yml ask for); the old service's port.
HTTP_HOST = "127.0.0.1"
HTTP_PORT = 8004

# What a command returns: the data printed by --json, the text for people, the exit code.
Outcome = tuple[Any, str, int]


def day_argument(value: str) -> str:
    """``--day``: a real UTC calendar day written ``YYYY-MM-DD``."""
    try:
        if DAY_FORMAT.fullmatch(value):
            return datetime.strptime(value, "%Y-%m-%d").strftime("%Y-%m-%d")
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{value!r} is not a day written YYYY-MM-DD (e.g. {utc_day()})")


def tenant_argument(value: str) -> str:
    """TENANT: a UUID, in the canonical form the ledger's key uses."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a tenant id (a UUID)") from None


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


async def cmd_workers(redis: Redis, keys: Keys, _: argparse.Namespace) -> Outcome:
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
            # A worker older than the split reports only the total of error replies.
            "failed": w.jobs_failed if w.jobs_pool_errors is None else w.jobs_pool_errors,
            "caller errors": "?" if w.jobs_caller_errors is None else w.jobs_caller_errors,
            "up": _age(w.started_at),
            "last beat": _age(w.ts) + " ago",
            "groups": ",".join(w.groups),
        }
        for w in workers
    ]
    if not rows:
        return data, f"no live workers on {keys.queue}", EXIT_OK
    legend = (
        "failed: providers_unavailable and internal replies; caller errors: invalid_request, "
        "cancelled, timeout and over_budget replies (per code: --json, errors_by_code)"
    )
    return data, table(rows, list(rows[0])) + "\n" + legend, EXIT_OK


async def cmd_queue(redis: Redis, keys: Keys, _: argparse.Namespace) -> Outcome:
    depth = await redis.zcard(keys.queue)
    head = await redis.zrange(keys.queue, 0, QUEUE_SAMPLE - 1, withscores=True)
    ids = [member.decode() for member, _ in head]
    flags = await redis.mget([keys.claim(i) for i in ids]) if ids else []
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
    return data, text, EXIT_OK


async def waiting_by_tenant(redis: Redis, keys: Keys) -> list[dict[str, Any]]:
    """Waiting jobs per tenant from the fair-share index, in the order tenants will be served."""
    tenants = [t.decode() for t in await redis.zrange(keys.fair_tenants, 0, -1)]
    pipe = redis.pipeline(transaction=False)
    for tenant in tenants:
        pipe.zcard(keys.fair_queue(tenant))
        pipe.zrange(keys.fair_queue(tenant), 0, 0, withscores=True)
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


async def cmd_usage(redis: Redis, keys: Keys, args: argparse.Namespace) -> Outcome:
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
    return data, text, EXIT_OK


async def cmd_request(redis: Redis, keys: Keys, args: argparse.Namespace) -> Outcome:
    found = await pool_state.look_up(redis, keys, args.request_id)
    request_id = found.request_id
    if found.reply is not None:
        reply = parse_reply(found.reply)
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
        return data, text, EXIT_OK
    if found.state == "running":
        return {"request_id": request_id, "state": "running"}, f"{request_id}: running", EXIT_OK
    if found.state == "queued" and found.queued_at_ms is not None:
        waited = time.time() - found.queued_at_ms / 1000
        data = {"request_id": request_id, "state": "queued", "waited_s": round(waited, 3)}
        text = f"{request_id}: queued for {waited:.1f}s"
        tenant = await cast(Awaitable[bytes | None], redis.hget(keys.fair_jobs, request_id))
        if tenant is not None:
            data["tenant_id"] = tenant.decode()
            data["ahead_of_it_for_its_tenant"] = await redis.zrank(
                keys.fair_queue(tenant.decode()), request_id
            )
            data["tenants_waiting"] = await redis.zcard(keys.fair_tenants)
            text += (
                f", {data['ahead_of_it_for_its_tenant']} job(s) of its tenant ahead of it, "
                f"{data['tenants_waiting']} tenant(s) taking turns"
            )
        return data, text, EXIT_OK
    return (
        {"request_id": request_id, "state": "unknown"},
        f"{request_id}: unknown request (never enqueued on {keys.queue}, or its reply expired)",
        EXIT_NOT_FOUND,
    )


async def cmd_cancel(redis: Redis, keys: Keys, args: argparse.Namespace) -> Outcome:
    found = await pool_state.cancel(redis, keys, args.request_id)
    request_id = found.request_id
    requested = found.state in ("queued", "running")
    data = {"request_id": request_id, "state": found.state, "cancel_requested": requested}
    if requested:
        return data, f"{request_id}: cancel requested (it was {found.state})", EXIT_OK
    if found.reply is not None:
        reply = parse_reply(found.reply)
        outcome = "ok" if reply.status == "ok" else reply.error.code.value
        return data, f"{request_id}: already finished ({outcome}); nothing to cancel", EXIT_NOT_FOUND
    return (
        data,
        f"{request_id}: unknown request (never enqueued on {keys.queue}, or its reply expired); "
        "nothing to cancel",
        EXIT_NOT_FOUND,
    )


COMMANDS = {
    "workers": cmd_workers,
    "queue": cmd_queue,
    "usage": cmd_usage,
    "request": cmd_request,
    "cancel": cmd_cancel,
}


async def _run(settings: Settings, args: argparse.Namespace) -> Outcome:
    redis = async_redis(settings.redis, socket_connect_timeout=5, socket_timeout=10)
    try:
        return await COMMANDS[args.command](redis, Keys(settings.redis.key_prefix), args)
    finally:
        await redis.aclose()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", action="store_true", help="machine-readable output (also after the command)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=summary, description=summary)
        # SUPPRESS: absent after the command, the value given before it (or False) stands.
        cmd.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
        )
        return cmd

    command("workers", "live workers (their heartbeats)")
    command("queue", "queue depth and waiting jobs by tenant")
    usage = command("usage", "a tenant's ledger for one UTC day")
    usage.add_argument("tenant", type=tenant_argument, help="the tenant id (a UUID)")
    usage.add_argument("--day", type=day_argument, help="YYYY-MM-DD (UTC), default today")
    command("request", "the state of one request (exit 1 if unknown)").add_argument("request_id")
    command("cancel", "cancel a queued or running request (exit 1 if unknown or finished)").add_argument(
        "request_id"
    )
    add_arguments(command("health", "exit 0 when the pool (or one worker) is alive, 1 when not"))
    demo = command("demo", "answer one prompt with an offline pool on this machine (no --json)")
    demo.add_argument("prompt", nargs="?", default="Tell me about queues.")
    demo.add_argument("--redis-url", help="the Redis for the demo and its worker (default: 127.0.0.1:6379)")
    serve_http = command("serve-http", "serve the old service's HTTP API in front of the pool (no --json)")
    serve_http.add_argument(
        "--host", default=HTTP_HOST, help=f"address to listen on (default {HTTP_HOST}; 0.0.0.0: all)"
    )
    serve_http.add_argument("--port", type=int, default=HTTP_PORT, help=f"default {HTTP_PORT}")
    return p


def serve_http(args: argparse.Namespace) -> int:
    """``serve-http``: the front door (llm_pool.http), if the ``http`` extra is installed."""
    from llm_pool.http import EXTRA, missing_modules

    if args.json:
        print(f"{PROG} serve-http: --json is not supported", file=sys.stderr)
        return EXIT_ERROR
    missing = missing_modules()
    if missing:
        print(
            f"{PROG} serve-http: needs the {EXTRA} extra ({', '.join(missing)} not installed): "
            f"pip install 'llm-pool[{EXTRA}]'",
            file=sys.stderr,
        )
        return EXIT_ERROR
    settings = settings_or_exit_code(PROG)
    if isinstance(settings, int):
        return settings
    from llm_pool.http.server import serve

    return serve(settings, args.host, args.port, f"{PROG} serve-http")


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)  # a usage error exits 2
    if args.command == "demo":
        if args.json:
            print(
                f"{PROG} demo: --json is not supported: the demo prints tokens as they arrive",
                file=sys.stderr,
            )
            return EXIT_ERROR
        from llm_pool.demo import run_demo

        return run_demo(args.prompt, args.redis_url)
    if args.command == "serve-http":
        return serve_http(args)
    if args.command == "health":
        return report(args.worker_id, as_json=args.json, quiet=args.quiet, prog=PROG)
    settings = settings_or_exit_code(PROG)
    if isinstance(settings, int):
        return settings
    try:
        data, text, code = asyncio.run(_run(settings, args))
    except (RedisError, OSError) as exc:
        print(f"{PROG}: {redis_failure(section_address(settings.redis), exc)}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(text, file=sys.stdout if code == EXIT_OK else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
