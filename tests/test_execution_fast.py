"""``Execution`` in this process (the fast tier): one request from its raw arguments to its reply
key and final event, over LiteLLM's ``mock_response`` deployments (tests/support/inprocess.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from typing import Any, cast

import pytest

from llm_pool.schemas import PROVIDERS_UNAVAILABLE_MESSAGE
from llm_pool.serialization import UndecodableJob
from tests.helpers import get_json, same_minute, user
from tests.support.inprocess import (
    MOCK_PIECES,
    MOCK_TEXT,
    PRICE_IN,
    PRICE_OUT,
    RATE_LIMIT_RETRIES,
    RPM_TENANT,
    SLOW_S,
    InProcessWorker,
    now_ms,
    request,
)

FAST_MODEL = "openai/gpt-4.1-mini"


async def stored_reply(inproc: InProcessWorker, request_id: str) -> dict[str, Any] | None:
    return await get_json(inproc.redis, inproc.state.keys.reply(request_id))


def assert_error(reply: dict[str, Any], events: list[dict[str, Any]], code: str) -> None:
    """An error reply with ``code``, and the channel's only event its error event."""
    assert reply["status"] == "error" and reply["error"]["code"] == code, reply
    assert [e["type"] for e in events] == ["error"], events
    assert events[0]["code"] == code and events[0]["message"] == reply["error"]["message"]
    assert events[0]["request_id"] == reply["request_id"]


# --- the two paths --------------------------------------------------------------------------------


async def test_complete_writes_the_reply_once_and_publishes_only_the_final_event(
    inproc: InProcessWorker,
) -> None:
    request_id = uuid.uuid4().hex
    tenant = str(uuid.uuid4())
    payload = request(tenant_id=tenant, metadata={"conv": "c1"})
    reply, events = await inproc.run(payload, request_id=request_id)
    assert reply["status"] == "ok" and reply["content"] == MOCK_TEXT
    assert (reply["model"], reply["served_by"], reply["fallback"]) == ("fast", FAST_MODEL, False)
    assert reply["metadata"] == {"conv": "c1"} and reply["attempt"] == 1
    usage = reply["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    expected_cost = usage["prompt_tokens"] * PRICE_IN + usage["completion_tokens"] * PRICE_OUT
    assert usage["cost_usd"] == pytest.approx(expected_cost)
    assert await stored_reply(inproc, request_id) == reply
    ttl = await inproc.redis.ttl(inproc.state.keys.reply(request_id))
    assert 0 < ttl <= inproc.settings.worker.reply_ttl_s
    assert [e["type"] for e in events] == ["done"]
    assert events[0]["usage"] == usage and events[0]["request_id"] == request_id

    # The same job run again (a retry after a lost lease): the first reply and ledger stand.
    again = await inproc.execute(request(tenant_id=tenant, metadata={"conv": "c2"}), request_id=request_id)
    assert again["metadata"] == {"conv": "c2"}
    assert await stored_reply(inproc, request_id) == reply
    ledger = await cast(Awaitable[dict[bytes, bytes]], inproc.redis.hgetall(inproc.state.keys.usage(tenant)))
    assert int(ledger[b"requests"]) == 1
    assert int(ledger[b"completion_tokens"]) == usage["completion_tokens"]


@pytest.mark.parametrize("channel", [None, "ws:conversation-7"])
async def test_stream_publishes_tokens_in_order_then_done(
    inproc: InProcessWorker, channel: str | None
) -> None:
    request_id = uuid.uuid4().hex
    payload = request(**({"channel": channel} if channel else {}))
    reply, events = await inproc.run(payload, stream=True, channel=channel, request_id=request_id)
    chunks = [e for e in events if e["type"] == "chunk"]
    assert [e["type"] for e in events] == ["chunk"] * len(chunks) + ["done"]
    assert [c["seq"] for c in chunks] == list(range(len(MOCK_PIECES)))
    assert [c["text"] for c in chunks] == MOCK_PIECES
    assert all(c["request_id"] == request_id for c in chunks)
    assert reply["content"] == "".join(c["text"] for c in chunks) == MOCK_TEXT
    assert await stored_reply(inproc, request_id) == reply
    assert events[-1]["usage"] == reply["usage"]


async def test_a_rerun_stream_starts_with_a_reset(inproc: InProcessWorker) -> None:
    reply, events = await inproc.run(request(), stream=True, attempt=2)
    assert reply["attempt"] == 2
    assert events[0] == {"type": "reset", "request_id": reply["request_id"], "attempt": 2}
    assert [e["seq"] for e in events if e["type"] == "chunk"] == list(range(len(MOCK_PIECES)))


async def test_a_request_run_more_than_max_tries_is_not_run_again(inproc: InProcessWorker) -> None:
    attempt = inproc.settings.worker.max_tries + 1
    reply, events = await inproc.run(request(), stream=True, attempt=attempt)
    assert_error(reply, events, "internal")
    assert "never finished" in reply["error"]["message"] and reply["attempt"] == attempt


# --- invalid requests -----------------------------------------------------------------------------

INVALID: dict[str, tuple[tuple[Any, ...], dict[str, Any], str]] = {
    "not an object": ((["fast"],), {}, "JSON object"),
    "two arguments": ((request(), request()), {}, "exactly one positional argument"),
    "keyword arguments": ((request(),), {"stream": True}, "keyword"),
    "undecodable envelope": ((UndecodableJob("the job is not UTF-8 JSON"),), {}, "UTF-8 JSON"),
    "unknown field": ((request(temperature=0.5),), {}, "temperature"),
    "unknown group": ((request(model="gpt-5"),), {}, "unknown model group"),
    "bad tenant": ((request(tenant_id="acme"),), {}, "tenant_id"),
    "too many messages": ((request(messages=user() * 21),), {}, "the limit is 20"),
    "timeout over the maximum": ((request(timeout_s=61),), {}, "timeout_s"),
    "channel not allowed": ((request(channel="other:stream:x"),), {}, "allowed_channels"),
}


@pytest.mark.parametrize("case", list(INVALID))
@pytest.mark.parametrize("stream", [False, True])
async def test_invalid_request_gets_an_invalid_request_reply(
    inproc: InProcessWorker, case: str, stream: bool
) -> None:
    args, kwargs, says = INVALID[case]
    request_id = uuid.uuid4().hex
    # A refused or absent channel: the error event goes to the request's own channel.
    reply, events = await inproc.run(*args, kwargs=kwargs, stream=stream, request_id=request_id)
    assert_error(reply, events, "invalid_request")
    assert says in reply["error"]["message"]
    assert await stored_reply(inproc, request_id) == reply


# --- cancellation and deadlines -------------------------------------------------------------------


async def test_cancel_key_set_before_the_start_cancels_without_calling_the_provider(
    inproc: InProcessWorker,
) -> None:
    request_id = uuid.uuid4().hex
    await inproc.redis.set(inproc.state.keys.cancel(request_id), 1, ex=60)
    started = time.monotonic()
    reply, events = await inproc.run(request("slow"), stream=True, request_id=request_id)
    assert time.monotonic() - started < SLOW_S
    assert_error(reply, events, "cancelled")
    assert "before it started" in reply["error"]["message"]


async def test_a_cancel_the_claim_read_cancels_without_asking_redis_again(inproc: InProcessWorker) -> None:
    """The claim reads the cancel key with the job's start (``JobInfo.cancel_requested``)."""
    reply, events = await inproc.run(request("slow"), stream=True, cancel_requested=True)
    assert_error(reply, events, "cancelled")
    assert "before it started" in reply["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_cancel_key_set_while_running_stops_the_request(inproc: InProcessWorker, stream: bool) -> None:
    request_id = uuid.uuid4().hex

    async def cancel_soon() -> None:
        await asyncio.sleep(0.1)
        await inproc.redis.set(inproc.state.keys.cancel(request_id), 1, ex=60)

    canceller = asyncio.create_task(cancel_soon())
    started = time.monotonic()
    reply, events = await inproc.run(request("slow"), stream=stream, request_id=request_id)
    await canceller
    assert time.monotonic() - started < SLOW_S, "the watcher cancels within a tick or two"
    assert_error(reply, events, "cancelled")
    assert reply["error"]["message"] == "cancelled by the caller"
    assert inproc.state.counters.running == 0


async def test_deadline_passed_in_the_queue_is_a_timeout(inproc: InProcessWorker) -> None:
    reply, events = await inproc.run(request(timeout_s=5), enqueued_ms=now_ms() - 6000)
    assert_error(reply, events, "timeout")
    assert "while it was queued" in reply["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_slow_provider_is_stopped_at_the_deadline(inproc: InProcessWorker, stream: bool) -> None:
    started = time.monotonic()
    reply, events = await inproc.run(request("slow", timeout_s=0.3), stream=stream)
    took = time.monotonic() - started
    assert_error(reply, events, "timeout")
    assert "while it ran" in reply["error"]["message"]
    assert 0.25 < took < SLOW_S, took


# --- provider outcomes ----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_failing_group_falls_back(inproc: InProcessWorker, stream: bool) -> None:
    reply, events = await inproc.run(request("quality"), stream=stream)
    assert reply["status"] == "ok" and reply["content"] == MOCK_TEXT
    assert (reply["model"], reply["served_by"], reply["fallback"]) == ("quality", FAST_MODEL, True)
    assert events[-1]["type"] == "done"


def retries(inproc: InProcessWorker, group: str, reason: str) -> float:
    value = inproc.state.metrics.registry.get_sample_value(
        "llm_pool_retries_total", {"group": group, "reason": reason}
    )
    return value or 0.0


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("group", "code", "message"),
    [
        ("failing", "providers_unavailable", PROVIDERS_UNAVAILABLE_MESSAGE),
        ("limited", "providers_unavailable", PROVIDERS_UNAVAILABLE_MESSAGE),
        ("refusing", "invalid_request", "the messages do not fit the model's context window"),
    ],
)
async def test_provider_errors_map_to_reply_codes(
    inproc: InProcessWorker, stream: bool, group: str, code: str, message: str
) -> None:
    rate_limited_before = retries(inproc, group, "rate_limited")
    reply, events = await inproc.run(request(group), stream=stream)
    assert_error(reply, events, code)
    assert reply["error"]["message"].startswith(message) and reply["model"] == group
    if code == "providers_unavailable":  # it names each deployment tried and how it failed
        assert "[" + group + "] openai/gpt-4.1" in reply["error"]["message"], reply["error"]["message"]
    waits = retries(inproc, group, "rate_limited") - rate_limited_before
    # Every deployment said 429: the request waits and tries again rate_limit_retries times.
    assert waits == (RATE_LIMIT_RETRIES if group == "limited" else 0)


async def test_tenant_over_its_rpm_limit_is_over_budget(inproc: InProcessWorker) -> None:
    same_minute(1)
    first, _ = await inproc.run(request(tenant_id=RPM_TENANT))
    second, events = await inproc.run(request(tenant_id=RPM_TENANT))
    assert first["status"] == "ok", first
    assert_error(second, events, "over_budget")
    assert "requests per minute" in second["error"]["message"]


async def test_counters_follow_the_requests(inproc: InProcessWorker) -> None:
    counters = inproc.state.counters
    done, failed = counters.done, counters.failed
    await inproc.execute(request())
    await inproc.execute(request("failing"))
    assert (counters.done, counters.failed, counters.running) == (done + 1, failed + 1, 0)
    heartbeat = inproc.state.heartbeat()
    assert (heartbeat.jobs_done, heartbeat.jobs_failed) == (counters.done, counters.failed)
