"""The fake provider, verified end to end through real LiteLLM calls (no mocks)."""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import litellm
import pytest
from litellm.exceptions import (
    APIConnectionError,
    InternalServerError,
    MidStreamFallbackError,
    RateLimitError,
    Timeout,
)

from llm_pool.testing.fake_provider import FakeProvider, FakeProviderThread, start_fake_provider

litellm.suppress_debug_info = True

# Parametrised as "api", not "provider": conftest.py owns a session fixture named "provider".
PROVIDERS = ("openai", "anthropic", "ollama")
# Unknown model names are fine; a known Anthropic name only avoids LiteLLM's "Provider List" print.
MODELS = {
    "openai": "openai/fake-gpt",
    "anthropic": "anthropic/claude-haiku-4-5",
    "ollama": "ollama_chat/fake-llama",
}
MESSAGES = [{"role": "user", "content": "hello there"}]
TEXT = "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 "
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "n": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]
TOOL_CALL_ID = {"openai": "call_fake_0", "anthropic": "toolu_fake_0", "ollama": "call_fake_0"}
STREAM: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    # Own loop in a thread: LiteLLM makes a blocking call to Ollama's /api/show from
    # its logging on the caller's loop, which would deadlock a same-loop server.
    with FakeProviderThread() as server:
        yield server


@pytest.fixture(autouse=True)
def _reset(fake: FakeProvider) -> None:
    httpx.post(f"{fake.base_url}/_control/reset").raise_for_status()


def configure(fake: FakeProvider, name: str, **config: Any) -> None:
    httpx.post(f"{fake.base_url}/_control/deployments/{name}", json=config).raise_for_status()


def stats(fake: FakeProvider, name: str) -> dict[str, int]:
    body: dict[str, Any] = httpx.get(f"{fake.base_url}/_control/stats").json()
    result: dict[str, int] = body["deployments"][name]
    return result


async def wait_for_stats(fake: FakeProvider, name: str, key: str, value: int) -> dict[str, int]:
    deadline = time.monotonic() + 5
    while True:
        current = stats(fake, name)
        if current[key] == value or time.monotonic() > deadline:
            return current
        await asyncio.sleep(0.02)


async def complete(fake: FakeProvider, api: str, name: str, **kwargs: Any) -> Any:
    return await litellm.acompletion(
        model=MODELS[api],
        messages=MESSAGES,
        api_base=fake.api_base(name, api),
        api_key="sk-fake",
        max_retries=0,  # the OpenAI SDK would otherwise retry 500/429/timeouts twice
        **kwargs,
    )


async def collect(stream: AsyncIterator[Any]) -> tuple[str, list[Any], Any]:
    """Text, chunks and the last usage seen in a LiteLLM stream."""
    text, chunks, usage = "", [], None
    async for chunk in stream:
        chunks.append(chunk)
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if getattr(chunk, "usage", None) is not None:
            usage = chunk.usage
    return text, chunks, usage


def finish_reasons(chunks: list[Any]) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


@pytest.mark.parametrize("api", PROVIDERS)
async def test_text_non_stream(fake: FakeProvider, api: str) -> None:
    response = await complete(fake, api, f"{api}-text")
    assert response.choices[0].message.content == TEXT
    assert response.choices[0].finish_reason == "stop"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (2, 8)
    assert stats(fake, f"{api}-text")["completed"] == 1


@pytest.mark.parametrize("api", PROVIDERS)
async def test_text_stream_with_usage(fake: FakeProvider, api: str) -> None:
    text, chunks, usage = await collect(await complete(fake, api, f"{api}-stream", **STREAM))
    assert text == TEXT
    assert finish_reasons(chunks) == ["stop"]
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (2, 8)
    # Usage arrives in a final chunk without choices, after the finish_reason chunk.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (await wait_for_stats(fake, f"{api}-stream", "completed", 1))["streams"] == 1


@pytest.mark.parametrize("api", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True])
async def test_token_count_and_limit(fake: FakeProvider, api: str, stream: bool) -> None:
    configure(fake, f"{api}-long", tokens=20)
    kwargs: dict[str, Any] = {"max_tokens": 5, **(STREAM if stream else {})}
    response = await complete(fake, api, f"{api}-long", **kwargs)
    if stream:
        text, chunks, usage = await collect(response)
        finish = finish_reasons(chunks)
    else:
        text, usage = response.choices[0].message.content, response.usage
        finish = [response.choices[0].finish_reason]
    assert text == "tok0 tok1 tok2 tok3 tok4 "
    assert finish == ["length"]
    assert usage.completion_tokens == 5


@pytest.mark.parametrize("api", PROVIDERS)
async def test_tool_call_non_stream(fake: FakeProvider, api: str) -> None:
    response = await complete(fake, api, f"{api}-tool", tools=TOOLS)
    calls = response.choices[0].message.tool_calls
    assert len(calls) == 1
    assert calls[0].id == TOOL_CALL_ID[api]
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris", "n": 1}
    assert response.choices[0].finish_reason == "tool_calls"
    assert response.usage.prompt_tokens == 2


@pytest.mark.parametrize("api", PROVIDERS)
async def test_tool_call_stream(fake: FakeProvider, api: str) -> None:
    stream = await complete(fake, api, f"{api}-tool", tools=TOOLS, **STREAM)
    _, chunks, usage = await collect(stream)
    ids: set[str] = set()
    names: set[str] = set()
    arguments, fragments = "", 0
    for chunk in chunks:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            ids.update([call.id] if call.id else [])
            names.update([call.function.name] if call.function.name else [])
            if call.function.arguments:
                arguments += call.function.arguments
                fragments += 1
    # LiteLLM keeps Ollama's tool call id only for non-stream answers (streams get a uuid4).
    assert len(ids) == 1 and (api == "ollama" or ids == {TOOL_CALL_ID[api]})
    assert names == {"get_weather"}
    assert json.loads(arguments) == {"city": "Paris", "n": 1}
    if api != "ollama":  # Ollama sends the whole call in one message
        assert fragments >= 2
    assert finish_reasons(chunks) == ["tool_calls"]
    assert usage is not None and usage.prompt_tokens == 2


@pytest.mark.parametrize("api", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True])
async def test_fault_500(fake: FakeProvider, api: str, stream: bool) -> None:
    configure(fake, f"{api}-500", fault="500")
    with pytest.raises(InternalServerError):
        response = await complete(fake, api, f"{api}-500", **(STREAM if stream else {}))
        await collect(response)
    assert stats(fake, f"{api}-500") == {
        "requests": 1,
        "streams": int(stream),
        "completed": 0,
        "disconnects": 0,
        "faults": 1,
    }


@pytest.mark.parametrize("api", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True])
async def test_fault_429(fake: FakeProvider, api: str, stream: bool) -> None:
    configure(fake, f"{api}-429", fault="429", retry_after_s=7)
    with pytest.raises(RateLimitError):
        response = await complete(fake, api, f"{api}-429", **(STREAM if stream else {}))
        await collect(response)
    assert stats(fake, f"{api}-429")["faults"] == 1


async def test_429_wire_format(fake: FakeProvider) -> None:
    configure(fake, "raw", fault="429", retry_after_s=2.5)
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{fake.api_base('raw', 'openai')}/chat/completions", json={})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2.5"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize("api", PROVIDERS)
async def test_fault_drop_mid_stream(fake: FakeProvider, api: str) -> None:
    configure(fake, f"{api}-drop", fault="drop", drop_after=3)
    text = ""
    with pytest.raises(MidStreamFallbackError):  # a ServiceUnavailableError (503) subclass
        async for chunk in await complete(fake, api, f"{api}-drop", **STREAM):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    assert text == "tok0 tok1 tok2 "
    assert stats(fake, f"{api}-drop")["completed"] == 0


@pytest.mark.parametrize("api", PROVIDERS)
async def test_fault_drop_non_stream(fake: FakeProvider, api: str) -> None:
    configure(fake, f"{api}-drop", fault="drop")
    with pytest.raises((APIConnectionError, InternalServerError)):
        await complete(fake, api, f"{api}-drop")


@pytest.mark.parametrize("api", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True])
async def test_fault_hang_times_out(fake: FakeProvider, api: str, stream: bool) -> None:
    name = f"{api}-hang"
    configure(fake, name, fault="hang")
    started = time.monotonic()
    with pytest.raises(Timeout):
        await collect(await complete(fake, api, name, timeout=1, **(STREAM if stream else {})))
    assert 0.9 < time.monotonic() - started < 3
    assert (await wait_for_stats(fake, name, "disconnects", 1))["disconnects"] == 1


@pytest.mark.parametrize("api", PROVIDERS)
async def test_client_disconnect_counted(fake: FakeProvider, api: str) -> None:
    name = f"{api}-slow"
    configure(fake, name, tokens=200, token_delay_ms=10)
    stream = await complete(fake, api, name, **STREAM)
    seen = 0
    async for chunk in stream:
        seen += bool(chunk.choices and chunk.choices[0].delta.content)
        if seen == 3:
            break
    await stream.aclose()
    final = await wait_for_stats(fake, name, "disconnects", 1)
    assert final == {"requests": 1, "streams": 1, "completed": 0, "disconnects": 1, "faults": 0}


async def test_delays(fake: FakeProvider) -> None:
    configure(fake, "paced", tokens=4, first_token_delay_ms=300, token_delay_ms=50)
    started = time.monotonic()
    text, _, _ = await collect(await complete(fake, "openai", "paced", **STREAM))
    assert text == "tok0 tok1 tok2 tok3 "
    assert time.monotonic() - started >= 0.45


async def test_hold_after_keeps_a_stream_open_after_some_tokens(fake: FakeProvider) -> None:
    configure(fake, "held", tokens=5, hold_after=2)
    stream = await complete(fake, "openai", "held", **STREAM)
    texts = []
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    texts.append(chunk.choices[0].delta.content)
    assert texts == ["tok0 ", "tok1 "]
    await stream.aclose()
    assert (await wait_for_stats(fake, "held", "disconnects", 1))["completed"] == 0


async def test_control_api(fake: FakeProvider) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        assert (await client.get("/_control/health")).json() == {"ok": True}
        bad = await client.post("/_control/deployments/x", json={"fault": "boom"})
        assert bad.status_code == 400
        ok = await client.post("/_control/deployments/x", json={"tokens": 3})
        assert ok.json()["tokens"] == 3 and ok.json()["fault"] is None
        await complete(fake, "openai", "x")
        assert (await client.get("/_control/stats")).json()["deployments"]["x"]["requests"] == 1
        await client.post("/_control/reset")
        assert (await client.get("/_control/stats")).json()["deployments"] == {}
        assert (await client.get("/_control/deployments/x")).json()["tokens"] == 8


def test_api_bases(fake: FakeProvider) -> None:
    assert fake.api_base("q", "openai") == f"http://127.0.0.1:{fake.port}/d/q/v1"
    assert fake.api_base("q", "anthropic") == f"http://127.0.0.1:{fake.port}/d/q"
    assert fake.api_base("q", "ollama") == f"http://127.0.0.1:{fake.port}/d/q"


async def test_same_loop_server() -> None:
    server = await start_fake_provider()
    try:
        text, _, usage = await collect(await complete(server, "openai", "local", **STREAM))
        assert text == TEXT and usage.completion_tokens == 8
    finally:
        await server.close()


@pytest.mark.e2e
def test_cli_entry_point() -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    process = subprocess.Popen(
        [sys.executable, "-m", "llm_pool.testing.fake_provider", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("FAKE_PROVIDER_PORT=")
        port = int(line.split("=", 1)[1])
        assert httpx.get(f"http://127.0.0.1:{port}/_control/health").json() == {"ok": True}
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
