"""``llm-pool demo "a prompt"``: the whole pool on this machine, with no API keys and no Ollama.

It uses (or starts) a local Redis, starts the offline fake provider and one worker (the Procfile's
command), sends the prompt as a streamed request through ``LLMPool`` and prints the tokens as they
arrive, then the reply's usage.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

from llm_pool.client import LLMPool
from llm_pool.keys import Keys
from llm_pool.schemas import ChunkEvent, DoneEvent, ErrorEvent, OkReply, ResetEvent
from llm_pool.settings import load_settings
from llm_pool.testing.cluster import (
    DEPLOYMENTS,
    FakeProviderProcess,
    RedisServer,
    WorkerProcess,
    settings_toml,
    worker_env,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
DEMO_TENANT = "00000000-0000-4000-8000-000000000000"


def _say(text: str) -> None:
    print(text, flush=True)


def ensure_redis(url: str = REDIS_URL) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        client.ping()
        _say("redis: using the one on 127.0.0.1:6379")
        return
    except redis.ConnectionError:
        pass
    finally:
        client.close()
    _say("redis: starting redis-server on 127.0.0.1:6379 (no persistence)")
    try:
        RedisServer(port=6379).start()
    except RuntimeError as exc:
        raise SystemExit(f"redis: none answers on 127.0.0.1:6379 and none could be started: {exc}") from None


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


def run_demo(prompt: str) -> int:
    ensure_redis()
    with tempfile.TemporaryDirectory(prefix="llm-pool-demo-") as tmp:
        provider = FakeProviderProcess()
        provider.configure_deployments(DEPLOYMENTS, "quality", tokens=24, token_delay_ms=60)
        prefix = f"llm_pool_demo_{uuid.uuid4().hex[:6]}"
        settings_path = Path(tmp) / "settings.toml"
        settings_path.write_text(settings_toml(provider, prefix, REDIS_URL, worker={"log_level": "WARNING"}))
        secrets = {"OPENAI_API_KEY": "sk-offline-demo", "ANTHROPIC_API_KEY": "sk-ant-offline-demo"}
        _say("worker: starting one (python -m worker); importing LiteLLM takes a few seconds...")
        worker = WorkerProcess("demo", worker_env(settings_path, secrets), Path(tmp))
        try:
            started = time.monotonic()
            worker.wait_ready(REDIS_URL, Keys(prefix).heartbeat("demo"), timeout_s=120)
            _say(f"worker: ready in {time.monotonic() - started:.1f}s")
            settings = load_settings(settings_path, environ={})

            async def main() -> None:
                async with LLMPool(settings, redis_url=REDIS_URL) as pool:
                    await _ask(pool, prompt)

            asyncio.run(main())
        finally:
            worker.stop()
            provider.stop()
            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(match=f"{prefix}:*"):
                client.delete(key)
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


if __name__ == "__main__":
    sys.exit(run_demo(" ".join(sys.argv[1:]) or "Tell me about queues."))
