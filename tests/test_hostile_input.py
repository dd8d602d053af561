"""Every job is untrusted: size limits, and 1,000 generated malformed payloads at a live worker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from llm_pool.client import InvalidRequestError, LLMPool
from llm_pool.schemas import CompletionRequest
from tests.helpers import REDIS_URL, TENANT, Pool, run_plain, user
from tests.plain import plain_arq

VALID: dict[str, Any] = {"model": "fast", "messages": user(), "tenant_id": TENANT}
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
FIELDS = [*CompletionRequest.model_fields, "temperature", "stream", "api_key", "__class__"]


def is_invalid(payload: Any) -> bool:
    if not isinstance(payload, dict):
        return True
    try:
        request = CompletionRequest.model_validate(payload)
    except ValidationError:
        return True
    return request.model not in ("quality", "fast")


@st.composite
def malformed(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["any_json", "drop", "replace", "add", "message"]))
    if kind == "any_json":
        return draw(JSON_VALUES)
    payload = dict(VALID)
    if kind == "drop":
        payload.pop(draw(st.sampled_from(["model", "messages", "tenant_id"])))
    elif kind == "replace":
        payload[draw(st.sampled_from(FIELDS))] = draw(JSON_VALUES)
    elif kind == "add":
        payload[draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in VALID))] = draw(JSON_VALUES)
    else:
        payload["messages"] = [
            draw(
                st.dictionaries(st.sampled_from(["role", "content", "name", "tool_calls", "x"]), JSON_VALUES)
            )
        ]
    return payload


def generate(count: int) -> list[Any]:
    found: list[Any] = []

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(malformed().filter(is_invalid))
    def collect(payload: Any) -> None:
        found.append(payload)

    collect()
    return found


async def test_thousand_malformed_payloads_at_a_live_worker(pool: Pool) -> None:
    payloads = generate(1100)[:1000]
    assert len(payloads) >= 1000
    arq = await plain_arq(REDIS_URL, pool.keys.queue)
    client = aioredis.Redis.from_url(REDIS_URL)
    ids: list[tuple[str, bool]] = []
    try:
        for index, payload in enumerate(payloads):
            if index % 10 == 0:  # a valid request between every ten bad ones
                good = uuid.uuid4().hex
                await arq.enqueue_job("complete", VALID, _job_id=good)
                ids.append((good, True))
            bad = uuid.uuid4().hex
            await arq.enqueue_job("complete_stream" if index % 2 else "complete", payload, _job_id=bad)
            ids.append((bad, False))
        deadline = time.monotonic() + 120
        replies: list[Any] = []
        while time.monotonic() < deadline:
            replies = await client.mget([pool.keys.reply(i) for i, _ in ids])
            if all(r is not None for r in replies):
                break
            await asyncio.sleep(0.2)
    finally:
        await arq.aclose()
        await client.aclose()
    missing = sum(r is None for r in replies)
    assert missing == 0, f"{missing} requests got no reply"
    for (request_id, valid), raw in zip(ids, replies, strict=True):
        reply = json.loads(raw)
        if valid:
            assert reply["status"] == "ok", reply
        else:
            assert reply["status"] == "error" and reply["error"]["code"] == "invalid_request", (
                request_id,
                reply,
            )
    assert all(w.alive for w in pool.workers[:2]), "the workers never died"
    print(f"{len(payloads)} malformed payloads, {len(ids) - len(payloads)} valid ones: all answered")


async def test_size_limits(pool: Pool, client: LLMPool) -> None:
    too_many = [{"role": "user", "content": "x"}] * (pool.settings.worker.max_messages + 1)
    with pytest.raises(InvalidRequestError, match="limit"):
        await client.complete("fast", too_many, TENANT)
    reply, _ = await run_plain(pool, "complete", {**VALID, "messages": too_many})
    assert reply["error"]["code"] == "invalid_request" and "limit" in reply["error"]["message"]
    huge = user("x" * (pool.settings.worker.max_payload_bytes + 10))
    with pytest.raises(InvalidRequestError, match="bytes"):
        await client.complete("fast", huge, TENANT)
    reply, _ = await run_plain(pool, "complete_stream", {**VALID, "messages": huge})
    assert reply["error"]["code"] == "invalid_request" and "bytes" in reply["error"]["message"]


async def test_client_validates_before_enqueueing(client: LLMPool, pool: Pool) -> None:
    with pytest.raises(InvalidRequestError, match="tenant_id"):
        await client.submit("fast", user(), "not-a-uuid")
    with pytest.raises(InvalidRequestError, match=r"params\.logit_bias"):
        await client.submit("fast", user(), TENANT, params={"logit_bias": {}})
