"""``providers_unavailable`` is fast and says why: which deployments were tried, and how each failed.

End to end, with real worker processes: deployments whose api_base is a loopback port nobody
listens on (connection refused at once, as with no Ollama running), and the fake provider
answering HTTP 500 everywhere. The router's own settings are the shipped defaults (retries,
cooldowns), not the test pool's quicker ones.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from llm_pool.client import LLMPool
from llm_pool.litellm_setup import litellm
from llm_pool.router import Attempt, DeploymentInfo, PoolRouter, describe_attempts, failure_kind
from llm_pool.schemas import ErrorEvent, ErrorReply
from llm_pool.settings import RouterSection, load_settings
from llm_pool.testing.cluster import DEPLOYMENTS, FakeProviderProcess, free_port
from tests.helpers import REDIS_URL, SECRETS, TENANT, own_pool, user

# The shipped [router] defaults (settings.toml), so the test measures what an operator gets.
SHIPPED_ROUTER: dict[str, Any] = {
    name: getattr(RouterSection(), name)
    for name in ("num_retries", "timeout_s", "stream_timeout_s", "allowed_fails", "cooldown_time_s")
}
PROMPT = "a prompt that must never appear in an error message"
# Seconds from enqueue to the error reply when every deployment refuses connections.
FAST_FAILURE_S = 1.5


def closed_port_groups(port: int) -> str:
    """The shipped layout with nothing listening: one Ollama per group, plus a keyed OpenAI one."""
    base = f"http://127.0.0.1:{port}"
    return f"""
[[groups.fast]]
model = "ollama_chat/llama3.2"
api_base = "{base}"

[[groups.quality]]
model = "ollama_chat/llama3.1:70b"
api_base = "{base}"

[[groups.quality]]
model = "openai/gpt-4.1"
api_base = "{base}/v1"
api_key_env = "OPENAI_API_KEY"
"""


async def fail_both_ways(pool_client: LLMPool) -> tuple[ErrorReply, float, ErrorEvent, float]:
    """One ``complete`` and one ``stream`` request; each error reply/event and its wall time."""
    started = time.monotonic()
    reply = await pool_client.complete("fast", user(PROMPT), TENANT)
    complete_s = time.monotonic() - started
    assert isinstance(reply, ErrorReply), reply
    started = time.monotonic()
    events = [e async for e in pool_client.stream("fast", user(PROMPT), TENANT)]
    stream_s = time.monotonic() - started
    final = events[-1]
    assert isinstance(final, ErrorEvent), events
    return reply, complete_s, final, stream_s


def assert_telling(message: str) -> None:
    assert message.startswith("All providers unavailable; tried: "), message
    assert PROMPT not in message
    for secret in SECRETS.values():
        assert secret not in message


@pytest.mark.parametrize("round_", [1, 2])
@pytest.mark.e2e
async def test_refused_connections_end_within_a_second_and_name_each_deployment(
    tmp_path: Path, provider: FakeProviderProcess, round_: int
) -> None:
    port = free_port()  # nobody listens there: every connection is refused at once
    options: dict[str, Any] = {"router": SHIPPED_ROUTER, "deployments": (), "extra": closed_port_groups(port)}
    with own_pool(tmp_path, provider, **options) as pool:
        async with LLMPool(pool.settings, redis_url=REDIS_URL) as pool_client:
            for _ in range(round_):  # the second round: after the first failures (cooldowns)
                reply, complete_s, event, stream_s = await fail_both_ways(pool_client)
    print(f"complete: {complete_s:.3f}s ({reply.latency_ms} ms in the worker), stream: {stream_s:.3f}s")
    print(reply.error.message)
    assert reply.error.code == "providers_unavailable"
    assert event.code == "providers_unavailable"
    for message in (reply.error.message, event.message):
        assert_telling(message)
        host = f"127.0.0.1:{port}"
        assert f"[fast] ollama_chat/llama3.2 at {host}: connection refused" in message
        assert f"[quality] ollama_chat/llama3.1:70b at {host}: connection refused" in message
        assert "HTTP" not in message and "timeout" not in message
    assert complete_s < FAST_FAILURE_S, f"complete took {complete_s:.2f}s to fail"
    assert stream_s < FAST_FAILURE_S, f"stream took {stream_s:.2f}s to fail"


@pytest.mark.e2e
async def test_http_500_everywhere_names_the_status_and_the_fake_providers_deployments(
    tmp_path: Path, provider: FakeProviderProcess
) -> None:
    provider.configure_deployments(DEPLOYMENTS, fault="500")
    with own_pool(tmp_path, provider, router=SHIPPED_ROUTER) as pool:
        async with LLMPool(pool.settings, redis_url=REDIS_URL) as pool_client:
            reply, complete_s, event, stream_s = await fail_both_ways(pool_client)
    print(f"complete: {complete_s:.3f}s, stream: {stream_s:.3f}s")
    print(reply.error.message)
    models = {model for _, _, model in DEPLOYMENTS}
    for message in (reply.error.message, event.message):
        assert_telling(message)
        tried = message.removeprefix("All providers unavailable; tried: ").split("; ")
        named = set()
        for entry in tried:
            where, _, failure = entry.partition(": ")
            _, model, at, host = where.split(" ")
            assert at == "at" and host == f"127.0.0.1:{provider.port}", entry
            assert failure.split(" x")[0] == "HTTP 500", entry
            named.add(model)
        assert named == models, f"every deployment of both groups is tried: {message}"
    assert complete_s < 2 * FAST_FAILURE_S and stream_s < 2 * FAST_FAILURE_S, (complete_s, stream_s)


def test_failure_kinds_name_the_cause_never_the_text() -> None:
    refused = litellm.APIConnectionError(message="boom sk-secret", llm_provider="ollama", model="m")
    refused.__cause__ = ConnectionRefusedError(111, "Connect call failed")
    auth = litellm.AuthenticationError(message="bad key sk-secret", llm_provider="anthropic", model="m")
    timeout = litellm.Timeout(message="slow", model="m", llm_provider="openai")
    server = litellm.InternalServerError(message="oops", llm_provider="openai", model="m")
    assert failure_kind(refused) == "connection refused"
    assert failure_kind(auth) == "auth refused (HTTP 401)"
    assert failure_kind(timeout) == "timeout"
    assert failure_kind(server) == "HTTP 500"
    assert failure_kind(litellm.APIConnectionError(message="x", llm_provider="o", model="m")) == (
        "connection failed"
    )


def test_the_message_counts_repeats_and_shows_only_the_host() -> None:
    fast = DeploymentInfo(id="fast-0", group="fast", model="ollama_chat/llama3.2", host="10.0.0.5:11434")
    anthropic = DeploymentInfo(id="quality-0", group="quality", model="anthropic/claude-sonnet-4-5")
    attempts = [
        Attempt(fast, "connection refused"),
        Attempt(anthropic, "auth refused (HTTP 401)"),
        Attempt(fast, "connection refused"),
    ]
    assert describe_attempts(attempts) == (
        "All providers unavailable; tried: "
        "[fast] ollama_chat/llama3.2 at 10.0.0.5:11434: connection refused x2; "
        "[quality] anthropic/claude-sonnet-4-5 at the provider's default api_base: auth refused (HTTP 401)"
    )
    assert describe_attempts([]) == "All providers unavailable"


def test_a_deployments_host_never_carries_credentials_or_path(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        '[[groups.fast]]\nmodel = "openai/gpt-4.1-mini"\napi_base = "https://user:hunter2@llm.example:8443/v1?x=1"\n'
        '[[groups.fast]]\nmodel = "ollama_chat/llama3.2"\napi_base = "http://[::1]:11434"\n'
    )
    router = PoolRouter(load_settings(path, environ={}), environ={})
    assert router.deployment({"model_id": "fast-0"}).host == "llm.example:8443"
    assert router.deployment({"model_id": "fast-1"}).host == "[::1]:11434"
