"""End to end: real Redis, real worker processes (the Procfile's command), the fake provider over
HTTP through the real LiteLLM Router. Callers are either ``LLMPool`` or plain arq + redis-py."""

from __future__ import annotations

import asyncio
import json
import pickle
import tempfile
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from llm_pool.client import LLMPool
from llm_pool.schemas import ChunkEvent, DoneEvent, ErrorCode, ErrorReply, OkReply
from llm_pool.testing.cluster import DEPLOYMENTS
from tests.helpers import (
    EXPECTED_TEXT,
    REDIS_URL,
    TENANT,
    WEATHER_TOOL,
    Pool,
    decode,
    fail_group,
    job_ended,
    request,
    run_plain,
    user,
)
from tests.plain import Listener, plain_arq

pytestmark = pytest.mark.e2e

FAST_MODELS = {model for group, _, model in DEPLOYMENTS if group == "fast"}
QUALITY_MODELS = {model for group, _, model in DEPLOYMENTS if group == "quality"}


async def test_complete_returns_text_and_real_usage(
    pool: Pool, client: LLMPool, aredis: aioredis.Redis
) -> None:
    reply = await client.complete("quality", user("hello there friend"), TENANT, metadata={"conv": "c1"})
    assert isinstance(reply, OkReply), reply
    assert reply.content == EXPECTED_TEXT
    assert reply.finish_reason == "stop"
    assert reply.model == "quality" and reply.served_by in QUALITY_MODELS and reply.fallback is False
    # The fake provider counts words of the prompt and tokens of the answer.
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (3, 8, 11)
    if not reply.served_by.startswith("ollama"):
        assert reply.usage.cost_usd > 0
    assert reply.metadata == {"conv": "c1"} and reply.attempt == 1
    stored = decode(await aredis.get(pool.keys.reply(reply.request_id)))
    assert stored == reply.model_dump(mode="json")
    assert 0 < await aredis.ttl(pool.keys.reply(reply.request_id)) <= pool.settings.worker.reply_ttl_s


async def test_stream_delivers_chunks_in_order_then_one_done(pool: Pool) -> None:
    reply, events = await run_plain(pool, "complete_stream", request(model="fast"))
    chunks = [e for e in events if e["type"] == "chunk"]
    assert [c["seq"] for c in chunks] == list(range(len(chunks))) and len(chunks) == 8
    assert events[-1]["type"] == "done" and [e["type"] for e in events].count("done") == 1
    assert "".join(c["text"] for c in chunks) == reply["content"] == EXPECTED_TEXT
    assert events[-1]["usage"] == reply["usage"]
    assert reply["usage"]["completion_tokens"] == 8 and reply["usage"]["prompt_tokens"] == 3
    assert events[-1]["finish_reason"] == "stop"


async def test_stream_honours_caller_channel(pool: Pool, client: LLMPool) -> None:
    channel = f"ws:{uuid.uuid4().hex}"
    reply, events = await run_plain(pool, "complete_stream", request(channel=channel), channel=channel)
    assert events[-1]["type"] == "done"
    assert "".join(e["text"] for e in events if e["type"] == "chunk") == reply["content"]
    # The client's stream() yields the same sequence.
    seen = [e async for e in client.stream("fast", user(), TENANT, channel=f"ws:{uuid.uuid4().hex}")]
    assert isinstance(seen[-1], DoneEvent)
    assert "".join(e.text for e in seen if isinstance(e, ChunkEvent)) == EXPECTED_TEXT


async def test_complete_publishes_only_the_final_event(pool: Pool) -> None:
    reply, events = await run_plain(pool, "complete", request())
    assert [e["type"] for e in events] == ["done"]
    assert reply["status"] == "ok" and events[0]["usage"] == reply["usage"]


@pytest.mark.parametrize("function", ["complete", "complete_stream"])
async def test_quality_falls_back_to_fast(pool: Pool, function: str) -> None:
    fail_group(pool, "quality", "500")
    before = pool.provider.stats()
    reply, events = await run_plain(pool, function, request(model="quality"))
    assert reply["status"] == "ok", reply
    assert reply["fallback"] is True and reply["model"] == "quality"
    assert reply["served_by"] in FAST_MODELS
    assert reply["content"] == EXPECTED_TEXT
    after = pool.provider.stats()
    tried = sum(
        after.get(name, {}).get("faults", 0) - before.get(name, {}).get("faults", 0)
        for name in ("quality-anthropic", "quality-openai", "quality-ollama")
    )
    assert tried >= 1, "quality was tried before falling back"
    # A fallback before the first chunk is invisible to listeners: no reset, seq from 0.
    assert "reset" not in [e["type"] for e in events]
    if function == "complete_stream":
        assert [e["seq"] for e in events if e["type"] == "chunk"] == list(range(8))


@pytest.mark.parametrize("function", ["complete", "complete_stream"])
async def test_every_deployment_failing_is_providers_unavailable(pool: Pool, function: str) -> None:
    fail_group(pool, "quality", "500")
    fail_group(pool, "fast", "500")
    reply, events = await run_plain(pool, function, request())
    assert reply["status"] == "error"
    assert reply["error"]["code"] == "providers_unavailable"
    assert reply["error"]["message"].startswith("All providers unavailable; tried: ")
    assert events[-1] == {
        "type": "error",
        "request_id": reply["request_id"],
        "code": "providers_unavailable",
        "message": reply["error"]["message"],
    }
    assert [e["type"] for e in events if e["type"] == "chunk"] == []


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calls(client: LLMPool, stream: bool) -> None:
    messages = user("what is the weather in Paris")
    if stream:
        events = [e async for e in client.stream("quality", messages, TENANT, tools=[WEATHER_TOOL])]
        done = events[-1]
        assert isinstance(done, DoneEvent)
        tool_calls = done.tool_calls
        reply = await client.reply(done.request_id)
    else:
        reply = await client.complete("quality", messages, TENANT, tools=[WEATHER_TOOL], tool_choice="auto")
        assert isinstance(reply, OkReply)
        tool_calls = reply.tool_calls
    assert isinstance(reply, OkReply)
    assert reply.finish_reason == "tool_calls" and reply.content == ""
    assert len(tool_calls) == 1 and tool_calls == reply.tool_calls
    call = tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments) == {"city": "Paris", "n": 1}
    assert reply.usage.completion_tokens > 0


async def test_tool_result_round_trip(client: LLMPool) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    reply = await client.complete("fast", messages, TENANT)
    assert isinstance(reply, OkReply), reply
    # For Anthropic, LiteLLM declares a placeholder tool when the history holds tool calls, and
    # the fake provider answers any request that declares tools with a tool call.
    assert reply.content == EXPECTED_TEXT or reply.tool_calls


BAD_PAYLOADS: dict[str, Any] = {
    "missing_messages": {"model": "quality", "tenant_id": TENANT},
    "missing_tenant": {"model": "quality", "messages": user()},
    "wrong_type_messages": {"model": "quality", "messages": "hello", "tenant_id": TENANT},
    "wrong_type_model": {"model": 7, "messages": user(), "tenant_id": TENANT},
    "unknown_group": {"model": "gigantic", "messages": user(), "tenant_id": TENANT},
    "empty_messages": {"model": "quality", "messages": [], "tenant_id": TENANT},
    "unknown_field": {**request(), "temperature": 0.2},
    "unknown_param": {**request(), "params": {"logit_bias": {}}},
    "bad_role": {**request(), "messages": [{"role": "wizard", "content": "x"}]},
    "tenant_not_uuid": {**request(), "tenant_id": "acme"},
    "metadata_not_strings": {**request(), "metadata": {"n": 1}},
    "not_an_object": ["model", "quality"],
}


@pytest.mark.parametrize("function", ["complete", "complete_stream"])
@pytest.mark.parametrize("case", sorted(BAD_PAYLOADS))
async def test_bad_payload_gets_invalid_request(pool: Pool, case: str, function: str) -> None:
    reply, events = await run_plain(pool, function, BAD_PAYLOADS[case])
    assert reply["status"] == "error" and reply["error"]["code"] == "invalid_request", reply
    assert reply["error"]["message"]
    assert events[-1]["type"] == "error" and events[-1]["code"] == "invalid_request"
    assert [e for e in events if e["type"] == "chunk"] == []


async def _enqueue_raw(aredis: aioredis.Redis, pool: Pool, job_id: str, data: bytes) -> None:
    """What a buggy or hostile client could write: any bytes as the job, and the queue entry."""
    async with aredis.pipeline(transaction=True) as pipe:
        pipe.psetex(f"arq:job:{job_id}", 60_000, data)
        pipe.zadd(pool.keys.queue, {job_id: 1})
        await pipe.execute()


PWNED = Path(tempfile.gettempdir()) / f"llm_pool_pwned_{uuid.uuid4().hex}"


class _Boom:
    """Unpickling this writes PWNED: proof that a worker ran code from a job payload."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"import pathlib; pathlib.Path({str(PWNED)!r}).write_text('x')",))


def _pwned() -> bool:
    return PWNED.exists()


@pytest.mark.parametrize(
    "case",
    ["not_json", "pickle_envelope", "json_not_object", "unknown_function", "kwargs", "two_args"],
)
async def test_undecodable_job_gets_invalid_request_and_worker_keeps_serving(
    pool: Pool, client: LLMPool, aredis: aioredis.Redis, case: str
) -> None:
    job_id = uuid.uuid4().hex
    raw = {
        "not_json": b"\x80\x04not json at all",
        "pickle_envelope": pickle.dumps({"f": "complete", "a": [_Boom()], "k": {}, "t": 1, "et": 1}),
        "json_not_object": b"[1, 2, 3]",
        "unknown_function": json.dumps(
            {"f": "shutdown", "a": [request()], "k": {}, "t": 1, "et": 1}
        ).encode(),
        "kwargs": json.dumps(
            {"f": "complete", "a": [], "k": {"request": request()}, "t": 1, "et": 1}
        ).encode(),
        "two_args": json.dumps({"f": "complete", "a": [request(), 1], "k": {}, "t": 1, "et": 1}).encode(),
    }[case]
    async with Listener(aredis, pool.keys.stream(job_id)) as listener:
        await _enqueue_raw(aredis, pool, job_id, raw)
        events = await listener.until_final()
    reply = decode(await aredis.get(pool.keys.reply(job_id)))
    assert reply["status"] == "error" and reply["error"]["code"] == "invalid_request", reply
    assert events == [{**events[-1], "type": "error", "code": "invalid_request"}]
    assert await job_ended(aredis, pool.keys, job_id), "the job left the queue"
    assert not _pwned(), "a pickled payload ran code in a worker"
    # The worker is still serving.
    good = await client.complete("fast", user(), TENANT)
    assert isinstance(good, OkReply)


async def test_plain_arq_caller_without_project_code(pool: Pool) -> None:
    request_id = uuid.uuid4().hex
    client = aioredis.Redis.from_url(REDIS_URL)
    arq = await plain_arq(REDIS_URL, pool.keys.queue)
    try:
        async with Listener(client, pool.keys.stream(request_id)) as listener:
            job = await arq.enqueue_job("complete", request(), _job_id=request_id)
            assert job is not None
            # The same id again while queued/running/kept is a no-op (arq's dedupe).
            assert await arq.enqueue_job("complete", request(), _job_id=request_id) is None
            events = await listener.until_final()
        assert events[-1]["type"] == "done"
        reply = decode(await client.get(pool.keys.reply(request_id)))
        assert reply["status"] == "ok" and reply["content"] == EXPECTED_TEXT
        # arq's own result is JSON too, and holds the same reply.
        assert await job.result(timeout=10) == reply
    finally:
        await arq.aclose()
        await client.aclose()


async def test_ledger_adds_each_finished_request(pool: Pool, aredis: aioredis.Redis) -> None:
    tenant = str(uuid.uuid4())
    async with LLMPool(pool.settings, redis_url=REDIS_URL) as client:
        replies = await asyncio.gather(
            *[client.complete("fast" if i % 2 else "quality", user(), tenant) for i in range(6)]
        )
    ok = [r for r in replies if isinstance(r, OkReply)]
    assert len(ok) == 6
    raw = await cast(Awaitable[dict[bytes, bytes]], aredis.hgetall(pool.keys.usage(tenant)))
    ledger = {k.decode(): v.decode() for k, v in raw.items()}
    assert int(ledger["requests"]) == 6
    assert int(ledger["prompt_tokens"]) == sum(r.usage.prompt_tokens for r in ok) == 18
    assert int(ledger["completion_tokens"]) == sum(r.usage.completion_tokens for r in ok) == 48
    assert float(ledger["cost_usd"]) == pytest.approx(sum(r.usage.cost_usd for r in ok))


async def test_deadline_passed_in_queue_is_timeout(pool: Pool, aredis: aioredis.Redis) -> None:
    reply, events = await run_plain(pool, "complete", request(timeout_s=0.001))
    assert reply["error"]["code"] == "timeout" and events[-1]["code"] == "timeout"


async def test_slow_provider_stopped_at_deadline(pool: Pool) -> None:
    pool.provider.configure_deployments(DEPLOYMENTS, "quality", token_delay_ms=400, tokens=50)
    reply, events = await run_plain(pool, "complete_stream", request(timeout_s=1.5))
    assert reply["error"]["code"] == "timeout", reply
    assert events[-1]["type"] == "error" and events[-1]["code"] == "timeout"


async def test_cancel_running_stream(pool: Pool, client: LLMPool, aredis: aioredis.Redis) -> None:
    pool.provider.configure_deployments(DEPLOYMENTS, token_delay_ms=100, tokens=200)
    request_id = uuid.uuid4().hex
    async with Listener(aredis, pool.keys.stream(request_id)) as listener:
        await client.submit("fast", user(), TENANT, stream=True, request_id=request_id)
        await asyncio.sleep(1.0)
        await client.cancel(request_id)
        events = await listener.until_final(timeout_s=5)
    assert events[-1]["type"] == "error" and events[-1]["code"] == "cancelled"
    reply = await client.reply(request_id)
    assert isinstance(reply, ErrorReply) and reply.error.code == ErrorCode.CANCELLED
    assert 0 < len([e for e in events if e["type"] == "chunk"]) < 200


async def test_stream_dropped_mid_way_resets_and_resumes_on_fallback(pool: Pool) -> None:
    pool.provider.configure_deployments(DEPLOYMENTS, "quality", fault="drop", drop_after=3)
    reply, events = await run_plain(pool, "complete_stream", request(model="quality"))
    assert reply["status"] == "ok", reply
    kinds = [e["type"] for e in events]
    assert kinds == ["chunk"] * 3 + ["reset"] + ["chunk"] * 8 + ["done"], kinds
    reset = events[3]
    assert reset == {"type": "reset", "request_id": reply["request_id"], "attempt": 2}
    after_reset = [e for e in events[4:] if e["type"] == "chunk"]
    assert [e["seq"] for e in after_reset] == list(range(8))
    assert "".join(e["text"] for e in after_reset) == reply["content"] == EXPECTED_TEXT
    assert reply["attempt"] == 2 and reply["fallback"] is True and reply["served_by"] in FAST_MODELS


@pytest.mark.parametrize("function", ["complete", "complete_stream"])
async def test_hanging_provider_times_out_and_falls_back(pool: Pool, function: str) -> None:
    fail_group(pool, "quality", "hang")
    reply, _ = await run_plain(pool, function, request(model="quality"))
    assert reply["status"] == "ok" and reply["fallback"] is True, reply
    # The hung deployment held the request no longer than its timeout (3 s in the test settings).
    assert reply["latency_ms"] < 3000 + 2000
