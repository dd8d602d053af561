"""``complete`` and ``complete_stream`` against llama-server, through real workers: text, limits,
stop sequences, tool calls and usage, over the OpenAI protocol (``openai/``) and the Anthropic one
(``anthropic/`` at llama-server's ``/v1/messages``).

Usage is checked against the server's own counts, read from its ``/metrics`` before and after
each request (the prompt tokens it processed plus those it reused from its prompt cache, and the
tokens it generated), never from the pool.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, cast

import pytest
import redis

from llm_pool.client import LLMPool
from llm_pool.schemas import ChunkEvent, DoneEvent, OkReply, ResetEvent, Usage
from llm_pool.testing.llama_server import LlamaServer, TokenCounts
from tests.helpers import user
from tests.real.conftest import DEPLOYMENTS, RealPool

pytestmark = [pytest.mark.real, pytest.mark.e2e]

TEXT_GROUPS = ["quality", "claude"]  # the text model through openai/ and anthropic/
TOOL_GROUPS = ["tools", "claude-tools"]  # the tool-calling model through openai/ and anthropic/
PROMPT = "Tell me about queues."
MODEL_OF_GROUP = {group: model for group, _, model in DEPLOYMENTS}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                "days": {"type": "integer"},
            },
            "required": ["city", "days"],
        },
    },
}


async def run(
    client: LLMPool, group: str, stream: bool, tenant: str, **options: Any
) -> tuple[OkReply, DoneEvent | None]:
    """One request, as ``complete`` or as a stream; for a stream, its chunks' text must be the
    reply's content and its ``done`` must carry the reply's usage, finish reason and tool calls."""
    if not stream:
        reply = await client.complete(group, user(PROMPT), tenant, **options)
        assert isinstance(reply, OkReply), reply
        return reply, None
    texts: list[str] = []
    done: list[DoneEvent] = []
    request_id = ""
    async for event in client.stream(group, user(PROMPT), tenant, **options):
        request_id = event.request_id
        if isinstance(event, ChunkEvent):
            texts.append(event.text)
        elif isinstance(event, DoneEvent):
            done.append(event)
        else:
            assert not isinstance(event, ResetEvent), "a reset with every server up"
            raise AssertionError(f"stream ended with {event}")
    reply = await client.wait(request_id)
    assert isinstance(reply, OkReply), reply
    assert len(done) == 1
    assert "".join(texts) == reply.content
    assert (done[0].usage, done[0].finish_reason, done[0].tool_calls) == (
        reply.usage,
        reply.finish_reason,
        reply.tool_calls,
    )
    return reply, done[0]


def assert_server_counted(usage: Usage, server: LlamaServer, before: TokenCounts) -> None:
    """The reply's usage is what the server counted for the request (the only one since ``before``)."""
    counted = server.counted_since(before)
    assert counted.prompt_tokens > 0
    assert usage.prompt_tokens == counted.prompt_tokens
    assert usage.completion_tokens == counted.completion_tokens
    assert usage.total_tokens == counted.prompt_tokens + counted.completion_tokens


def ledger(pool: RealPool, redis_sync: redis.Redis, tenant: str) -> dict[str, int]:
    raw = cast(dict[bytes, bytes], redis_sync.hgetall(pool.keys.usage(tenant)))
    return {k.decode(): int(float(v)) for k, v in raw.items() if k != b"cost_usd"}


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("group", TEXT_GROUPS)
async def test_text_ends_at_max_tokens_and_usage_is_the_servers_count(
    real_pool: RealPool, real_client: LLMPool, redis_sync: redis.Redis, group: str, stream: bool
) -> None:
    tenant = str(uuid.uuid4())
    server = real_pool.server(group)
    before = server.token_counts()
    reply, _ = await run(real_client, group, stream, tenant, params={"max_tokens": 24})
    assert reply.content.strip()
    assert reply.finish_reason == "length"
    assert reply.usage.completion_tokens == 24
    assert (reply.served_by, reply.fallback) == (MODEL_OF_GROUP[group], False)
    assert_server_counted(reply.usage, server, before)
    assert ledger(real_pool, redis_sync, tenant) == {
        "requests": 1,
        "prompt_tokens": reply.usage.prompt_tokens,
        "completion_tokens": reply.usage.completion_tokens,
    }


def first_unique_substring(text: str, length: int = 3) -> tuple[int, str]:
    """A printable-ASCII piece of ``text`` found first at its own index (at least 1)."""
    for index in range(len(text) // 3, len(text) - length):
        piece = text[index : index + length]
        if piece.isascii() and piece.isprintable() and text.find(piece) == index:
            return index, piece
    raise AssertionError(f"no usable stop sequence in {text!r}")


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("group", TEXT_GROUPS)
async def test_stop_sequence_ends_the_text_where_it_occurs(
    real_pool: RealPool, real_client: LLMPool, group: str, stream: bool
) -> None:
    tenant = str(uuid.uuid4())
    # The text model writes the same text every time, so the second answer is the first one cut
    # where the stop sequence (a piece of the first answer) begins.
    full, _ = await run(real_client, group, False, tenant, params={"max_tokens": 48})
    assert full.finish_reason == "length"
    index, stop = first_unique_substring(full.content)
    server = real_pool.server(group)
    before = server.token_counts()
    reply, _ = await run(real_client, group, stream, tenant, params={"max_tokens": 48, "stop": [stop]})
    assert reply.finish_reason == "stop"
    assert reply.content == full.content[:index]
    assert reply.usage.completion_tokens < 48
    assert_server_counted(reply.usage, server, before)


@pytest.mark.parametrize("tool_choice", ["auto", "required"])
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("group", TOOL_GROUPS)
async def test_tool_call_with_json_arguments(
    real_pool: RealPool, real_client: LLMPool, group: str, stream: bool, tool_choice: str
) -> None:
    tenant = str(uuid.uuid4())
    options: dict[str, Any] = {"tools": [WEATHER_TOOL], "tool_choice": tool_choice}
    server = real_pool.server(group)
    before = server.token_counts()
    reply, done = await run(real_client, group, stream, tenant, params={"max_tokens": 256}, **options)
    assert reply.finish_reason == "tool_calls"
    [call] = reply.tool_calls
    assert call.id
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert arguments["city"] in ("Paris", "Rome", "Oslo")
    assert isinstance(arguments["days"], int)
    if done is not None:
        assert done.tool_calls == reply.tool_calls
    assert_server_counted(reply.usage, server, before)
