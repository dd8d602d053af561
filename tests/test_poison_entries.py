"""Queue entries and envelopes written by hand, as a buggy or hostile foreign program could write them.

Every job that reaches a worker ends with one reply and one final event; a queue member that cannot
even be a request id goes to ``P:dead-letter``. In every case the worker keeps running and serving.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from llm_pool.testing.cluster import FakeProviderProcess
from tests.helpers import (
    JOB_PREFIX,
    Pool,
    assert_workers_serving,
    envelope,
    final_events,
    forget_jobs,
    get_json,
    new_id,
    own_pool,
    put_job,
    redis_now_ms,
    request_json,
    worker_state,
)
from tests.plain import Listener, plain_arq

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def epool(tmp_path_factory: pytest.TempPathFactory, provider: FakeProviderProcess) -> Iterator[Pool]:
    """One worker of its own: hostile envelopes must not reach the session's shared workers."""
    with own_pool(tmp_path_factory.mktemp("envelopes"), provider) as pool:
        yield pool


async def expect_invalid_request(
    client: aioredis.Redis, pool: Pool, request_id: str, job: bytes | None, forbidden: list[str]
) -> None:
    """Enqueue ``job`` (None: no ``arq:job:`` key at all) under ``request_id`` and check that it
    ends with an ``invalid_request`` reply and error event that quote none of ``forbidden``."""
    try:
        async with Listener(client, pool.keys.stream(request_id)) as listener:
            await put_job(client, pool.keys.queue, request_id, job, await redis_now_ms(client))
            events = await final_events(listener, 10, f"job {request_id} ({worker_state(pool)})")
            assert await listener.quiet_for(0.3) == [], "nothing may follow the final event"
    finally:
        await forget_jobs(client, request_id)
    final = events[-1]
    assert final["type"] == "error" and final["code"] == "invalid_request", (
        f"expected an invalid_request error event, got {final}"
    )
    raw = await client.get(pool.keys.reply(request_id))
    assert raw is not None, f"the error event came but {pool.keys.reply(request_id)} is missing"
    raw.decode("utf-8")  # the reply is UTF-8 JSON (contract section 1), whatever the job held
    reply = json.loads(raw)
    assert reply["status"] == "error" and reply["error"]["code"] == "invalid_request", reply
    assert reply["request_id"] == request_id, reply
    message: str = reply["error"]["message"]
    assert len(message) < 1000, f"the message echoes the payload ({len(message)} characters)"
    for text in [*forbidden, "\ud800"]:
        assert text not in message and text not in final["message"], (
            f"the error message quotes the offending value {text!r}: {message!r}"
        )
    assert_workers_serving(pool)


async def test_unusable_queue_members_are_dead_lettered(
    tmp_path: Path, provider: FakeProviderProcess
) -> None:
    """Queue members ``b"\\xff"`` (no job key) and a 200-character id (with a good envelope) go to
    ``P:dead-letter``; the worker keeps running and serves a request enqueued after them."""
    with own_pool(tmp_path, provider) as pool:
        client = aioredis.Redis.from_url(pool.redis_url)
        dead_letter = f"{pool.prefix}:dead-letter"
        not_utf8 = b"\xff"
        too_long = ("long-" + new_id()).ljust(200, "x").encode()  # a unique 200-character id
        request_id = new_id()  # a normal request, after those
        try:
            started_ms = await redis_now_ms(client)
            # No job key for the first; a perfectly good envelope for the second.
            await put_job(client, pool.keys.queue, not_utf8, None, 1)
            job = envelope("complete", request_json(), started_ms)
            await put_job(client, pool.keys.queue, too_long, job, 1)

            deadline = time.monotonic() + 10
            scores: list[float | None] = [None, None]
            while time.monotonic() < deadline:
                scores = [await client.zscore(dead_letter, m) for m in (not_utf8, too_long)]
                if all(s is not None for s in scores):
                    break
                await asyncio.sleep(0.1)
            queued = await client.zrange(pool.keys.queue, 0, -1)
            assert all(s is not None for s in scores), (
                f"after 10 s, dead-letter scores of (\\xff, 200-char id) are {scores}; "
                f"queue holds {queued}; workers: {worker_state(pool)}"
            )
            now_ms = await redis_now_ms(client)
            for member, score in zip((not_utf8, too_long), scores, strict=True):
                assert score is not None and started_ms - 1000 <= score <= now_ms + 1000, (
                    f"the dead-letter score of {member[:20]!r} is {score}, not Redis time in ms "
                    f"({started_ms}..{now_ms})"
                )
                assert await client.zscore(pool.keys.queue, member) is None, (
                    f"{member[:20]!r} is still queued"
                )
            assert not await client.exists(JOB_PREFIX + too_long), "the dead-lettered job's key was kept"
            lines = [line for line in pool.logs().splitlines() if "job_dead_lettered" in line]
            assert len(lines) == 2, f"expected one job_dead_lettered log line per member, got {lines}"
            assert_workers_serving(pool)

            # The worker still serves a normal request enqueued afterwards.
            arq = await plain_arq(pool.redis_url, pool.keys.queue)
            try:
                async with Listener(client, pool.keys.stream(request_id)) as listener:
                    request = json.loads(request_json())
                    assert await arq.enqueue_job("complete", request, _job_id=request_id) is not None
                    events = await final_events(listener, 10, "a normal request after the bad members")
            finally:
                await arq.aclose()
            reply = await get_json(client, pool.keys.reply(request_id))
            assert events[-1]["type"] == "done" and reply is not None and reply["status"] == "ok", (
                events,
                reply,
            )
        finally:
            await forget_jobs(client, not_utf8, too_long, request_id)
            await client.aclose()


async def test_job_without_envelope_is_answered(epool: Pool) -> None:
    """A usable id whose ``arq:job:`` key is missing (expired, deleted) still gets its reply."""
    client = aioredis.Redis.from_url(epool.redis_url)
    try:
        await expect_invalid_request(client, epool, new_id(), None, forbidden=[])
    finally:
        await client.aclose()


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


HOSTILE_ARGUMENTS: dict[str, tuple[str, list[str]]] = {
    # name: (the request object as JSON text, text the error message must not quote)
    "depth_1000_in_metadata": (request_json()[:-1] + f', "metadata": {{"conv": {nested(1000)}}}}}', ["[[["]),
    "depth_10000_in_response_format": (
        request_json()[:-1]
        + f', "params": {{"response_format": {{"type": "json_object", "x": {nested(10_000)}}}}}}}',
        ["[[["],
    ),
    # (a generic description such as "a lone surrogate (\\ud800-\\udfff)" is fine: the marker is not)
    "lone_surrogate_in_metadata": (request_json(metadata={"conv": "leak-check\ud800"}), ["leak-check"]),
    "lone_surrogate_in_unknown_model": (request_json(model="leak-check\ud800"), ["leak-check"]),
}


@pytest.mark.parametrize("case", list(HOSTILE_ARGUMENTS))
async def test_hostile_envelope_is_answered_invalid_request(epool: Pool, case: str) -> None:
    argument, forbidden = HOSTILE_ARGUMENTS[case]
    client = aioredis.Redis.from_url(epool.redis_url)
    try:
        job = envelope("complete", argument, await redis_now_ms(client))
        await expect_invalid_request(client, epool, new_id(), job, forbidden)
    finally:
        await client.aclose()
