"""What the pool keeps and reads of a request: arq's result holds the reply but no prompt text, an
oversize envelope is refused without being read, and the client refuses unusable request ids."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import cast

import pytest
import redis.asyncio as aioredis
from arq.jobs import Job

from llm_pool import InvalidRequestError, LLMPool, OkReply
from llm_pool.testing.cluster import FakeProviderProcess
from tests.helpers import (
    REDIS_URL,
    TENANT,
    Pool,
    envelope,
    final_events,
    forget_jobs,
    get_json,
    new_id,
    own_pool,
    private_redis,
    put_job,
    redis_now_ms,
    request_json,
    user,
    worker_state,
)
from tests.plain import Listener, plain_arq

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("function", ["complete", "complete_stream"])
async def test_arq_result_keeps_the_reply_but_not_the_prompt(pool: Pool, function: str) -> None:
    marker = f"prompt-marker-{new_id()}"
    request_id = new_id()
    arq = await plain_arq(REDIS_URL, pool.keys.queue)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        request = json.loads(request_json(messages=[{"role": "user", "content": f"please say {marker}"}]))
        assert await arq.enqueue_job(function, request, _job_id=request_id) is not None
        job = Job(request_id, arq, _queue_name=pool.keys.queue, _deserializer=json.loads)
        result = await job.result(timeout=15, poll_delay=0.1)
        assert isinstance(result, dict) and result["status"] == "ok", result
        assert result["request_id"] == request_id, result
        assert result == await get_json(client, pool.keys.reply(request_id)), "arq's r is not the reply"
        raw = cast(bytes | None, await client.get(f"arq:result:{request_id}"))
        assert raw is not None, "arq kept no result"
        assert marker.encode() not in raw, (
            f"arq:result:{request_id} holds the request's message text: "
            f"{raw[max(0, raw.find(marker.encode()) - 80) :][:200]!r}"
        )
    finally:
        await forget_jobs(client, request_id)
        await arq.aclose()
        await client.aclose()


async def test_oversize_envelope_is_refused_without_being_read(
    tmp_path: Path, provider: FakeProviderProcess
) -> None:
    """A 20 MB envelope (limit: ``max_payload_bytes``, 2 MB by default) is answered
    ``invalid_request`` while Redis sends the worker far less than the envelope (STRLEN first)."""
    size = 20_000_000
    with private_redis() as server, own_pool(tmp_path, provider, redis_url=server.url) as pool:
        client = aioredis.Redis.from_url(server.url)
        request_id = new_id()
        try:
            argument = request_json(messages=[{"role": "user", "content": "x" * size}])
            job = envelope("complete", argument, await redis_now_ms(client))
            assert len(job) > size > pool.settings.worker.max_payload_bytes
            async with Listener(client, pool.keys.stream(request_id)) as listener:
                sent_before = int((await client.info("stats"))["total_net_output_bytes"])
                await put_job(client, pool.keys.queue, request_id, job, await redis_now_ms(client))
                events = await final_events(listener, 15, f"a {len(job)}-byte job ({worker_state(pool)})")
                sent = int((await client.info("stats"))["total_net_output_bytes"]) - sent_before
            final = events[-1]
            assert final["type"] == "error" and final["code"] == "invalid_request", final
            reply = await get_json(client, pool.keys.reply(request_id))
            assert reply is not None and reply["error"]["code"] == "invalid_request", reply
            assert "bytes" in reply["error"]["message"], reply["error"]["message"]
            assert sent < len(job) // 20, (
                f"Redis sent {sent} bytes between the enqueue and the reply: the worker read the "
                f"{len(job)}-byte envelope instead of checking its length"
            )
            print(f"{len(job)}-byte envelope refused; Redis sent {sent} bytes meanwhile")
        finally:
            await client.aclose()


async def test_client_refuses_request_ids_longer_than_128_characters(
    client: LLMPool, aredis: aioredis.Redis
) -> None:
    too_long = ("r" * 129)[: 129 - 32] + new_id()
    assert len(too_long) == 129
    try:
        with pytest.raises(InvalidRequestError):
            await client.submit("fast", user(), TENANT, request_id=too_long)
        assert not await aredis.exists(f"arq:job:{too_long}"), "the refused request was enqueued"
        longest = ("r" * 128)[: 128 - 32] + new_id()
        started = time.monotonic()
        reply = await client.complete("fast", user(), TENANT, request_id=longest)
        assert isinstance(reply, OkReply) and reply.request_id == longest, reply
        assert time.monotonic() - started < 10
    finally:
        await forget_jobs(aredis, too_long)
