"""``llm-pool demo "a prompt"``: the whole pool on this machine, with no API keys and no Ollama.

It uses one Redis (``--redis-url``, default ``redis://127.0.0.1:6379/0``) for itself and its worker,
starts the offline fake provider and one worker (the Procfile's command, ``python -m worker``) whose
environment has none of the caller's provider or pool variables (``OLLAMA_BASE_URL``, ``OPENAI_*``,
``ANTHROPIC_*``, ``REDIS_URL``, ``LLM_POOL__*``), sends the prompt as a streamed request through
``LLMPool`` and prints the tokens as they arrive, then the reply's usage. If that Redis does not
answer it says so in one line and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import redis

from llm_pool.client import LLMPool
from llm_pool.keys import Keys
from llm_pool.schemas import ChunkEvent, DoneEvent, ErrorEvent, OkReply, ResetEvent
from llm_pool.settings import load_settings
from llm_pool.testing.cluster import (
    DEPLOYMENTS,
    FakeProviderProcess,
    WorkerProcess,
    forget_keys,
    settings_toml,
    worker_env,
)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEMO_TENANT = "00000000-0000-4000-8000-000000000000"


def _say(text: str) -> None:
    print(text, flush=True)


def masked(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def redis_problem(url: str) -> str | None:
    """None if a Redis answers PING at ``url``, else why not (never the password)."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    except ValueError as exc:
        return f"not a Redis URL ({exc})".replace(url, masked(url))
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"{type(exc).__name__}: {exc}".replace(url, masked(url))
    finally:
        client.close()
    return None


async def _ask(pool: LLMPool, prompt: str) -> None:
    request_id = uuid.uuid4().hex
    _say(f"\n> {prompt}\n")
    async for event in pool.stream(
        "quality", [{"role": "user", "content": prompt}], DEMO_TENANT, request_id=request_id
    ):
        if isinstance(event, ChunkEvent):
            print(event.text, end="", flush=True)
        elif isinstance(event, ResetEvent):
            print("\n[the stream restarted on another deployment]\n", flush=True)
        elif isinstance(event, ErrorEvent):
            _say(f"\n\nerror: {event.code.value}: {event.message}")
        elif isinstance(event, DoneEvent):
            _say("")
    reply = await pool.reply(request_id)
    if isinstance(reply, OkReply):
        usage = reply.usage
        _say(
            f"\nserved by {reply.served_by} (group {reply.model}) in {reply.latency_ms} ms: "
            f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens, "
            f"${usage.cost_usd:.6f}"
        )


def run_demo(prompt: str, redis_url: str | None = None) -> int:
    """The demo against the Redis at ``redis_url`` (default ``DEFAULT_REDIS_URL``); its exit code."""
    url = redis_url or DEFAULT_REDIS_URL
    problem = redis_problem(url)
    if problem is not None:
        print(
            f"llm-pool demo: no Redis answers at {masked(url)} ({problem}); check that redis-server runs "
            "there (`make redis` starts one on 127.0.0.1:6379) or give another with --redis-url",
            file=sys.stderr,
        )
        return 2
    _say(f"redis: using {masked(url)}")
    with tempfile.TemporaryDirectory(prefix="llm-pool-demo-") as tmp:
        provider = FakeProviderProcess()
        provider.configure_deployments(DEPLOYMENTS, "quality", tokens=24, token_delay_ms=60)
        prefix = f"llm_pool_demo_{uuid.uuid4().hex[:6]}"
        settings_path = Path(tmp) / "settings.toml"
        settings_path.write_text(settings_toml(provider, prefix, url, worker={"log_level": "WARNING"}))
        secrets = {"OPENAI_API_KEY": "sk-offline-demo", "ANTHROPIC_API_KEY": "sk-ant-offline-demo"}
        _say("worker: starting one (python -m worker); importing LiteLLM takes a few seconds...")
        worker = WorkerProcess("demo", worker_env(settings_path, secrets), Path(tmp))
        try:
            started = time.monotonic()
            try:
                worker.wait_ready(url, Keys(prefix).heartbeat("demo"), timeout_s=120)
            except (RuntimeError, TimeoutError) as exc:
                log = worker.log_path.read_text(errors="replace").strip().splitlines()[-20:]
                print(f"llm-pool demo: {exc}; its last lines:", *log, sep="\n", file=sys.stderr)
                return 1
            _say(f"worker: ready in {time.monotonic() - started:.1f}s")
            settings = load_settings(settings_path, environ={})

            async def main() -> None:
                async with LLMPool(settings, redis_url=url) as pool:
                    await _ask(pool, prompt)

            asyncio.run(main())
        finally:
            worker.stop()
            provider.stop()
            client = redis.Redis.from_url(url)
            forget_keys(client, f"{prefix}:*")
            client.close()
    _say(
        "\nThat answer came from the OFFLINE FAKE PROVIDER (llm_pool/testing/fake_provider.py),\n"
        "not from a model: it always streams tok0 tok1 ... so that the whole path (queue, worker,\n"
        "LiteLLM Router, token channel, reply key, ledger) can be seen working without keys or network.\n"
        "To use real models: export OPENAI_API_KEY and/or ANTHROPIC_API_KEY, or run Ollama\n"
        "(OLLAMA_BASE_URL, default http://localhost:11434); edit settings.toml to choose models;\n"
        "then `make run` starts a worker and `llm-pool workers` shows it."
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m llm_pool.demo [--redis-url URL] [PROMPT]`` (``llm-pool demo`` is the same)."""
    parser = argparse.ArgumentParser(prog="python -m llm_pool.demo", description=__doc__)
    parser.add_argument("prompt", nargs="*", help="the prompt (default: Tell me about queues.)")
    parser.add_argument(
        "--redis-url", default=DEFAULT_REDIS_URL, help="the Redis for the demo and its worker"
    )
    args = parser.parse_args(argv)
    return run_demo(" ".join(args.prompt) or "Tell me about queues.", args.redis_url)


if __name__ == "__main__":
    sys.exit(main())
