"""The worker's ``Outbox`` (worker/outbox.py, finalize.lua) against the shared Redis, in this
process: order across batches, reply and ledger once, final writes kept while Redis is away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import cast

import pytest
import redis
import redis.asyncio as aioredis

from llm_pool.keys import Keys
from tests.helpers import REDIS_URL, kill_clients_named
from tests.plain import Listener
from worker.limits import current_minute
from worker.outbox import DUPLICATE, WRITTEN, Final, LedgerEntry, Outbox

TENANT_A, TENANT_B = "00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"


def final_for(keys: Keys, request_id: str, tenant: str, text: str) -> Final:
    return Final(
        reply_key=keys.reply(request_id),
        reply_json=json.dumps({"request_id": request_id, "content": text}).encode(),
        reply_ttl_s=60,
        channel=keys.stream(request_id),
        event_json=json.dumps({"type": "done", "request_id": request_id}).encode(),
        ledger=LedgerEntry(
            key=keys.usage(tenant),
            prompt_tokens=3,
            completion_tokens=len(text),
            cost_usd=0.125,
            ttl_s=600,
            tpm_key=keys.rate(tenant, "tpm", current_minute()),
        ),
    )


def chunk(request_id: str, seq: int) -> bytes:
    return json.dumps({"type": "chunk", "request_id": request_id, "seq": seq}).encode()


async def test_two_interleaved_streams_keep_their_order_across_batches(
    aredis: aioredis.Redis, scratch_keys: Keys
) -> None:
    outbox = Outbox(redis.Redis.from_url(REDIS_URL), max_batch=7)
    outbox.start()
    try:
        async with (
            Listener(aredis, scratch_keys.stream("a")) as a,
            Listener(aredis, scratch_keys.stream("b")) as b,
        ):
            for seq in range(40):
                outbox.publish(scratch_keys.stream("a"), chunk("a", seq))
                outbox.publish(scratch_keys.stream("b"), chunk("b", seq))
            results = await asyncio.gather(
                outbox.finish(final_for(scratch_keys, "a", TENANT_A, "alpha")),
                outbox.finish(final_for(scratch_keys, "b", TENANT_B, "beta")),
            )
            assert list(results) == [WRITTEN, WRITTEN]
            for listener, request_id in ((a, "a"), (b, "b")):
                events = await listener.until_final(timeout_s=5)
                assert [e.get("seq") for e in events[:-1]] == list(range(40))
                assert events[-1] == {"type": "done", "request_id": request_id}
    finally:
        await outbox.close()
    assert json.loads(await aredis.get(scratch_keys.reply("a")) or b"{}")["content"] == "alpha"
    assert 0 < await aredis.ttl(scratch_keys.reply("b")) <= 60
    ledger = await cast(Awaitable[dict[bytes, bytes]], aredis.hgetall(scratch_keys.usage(TENANT_B)))
    assert ledger == {
        b"requests": b"1",
        b"prompt_tokens": b"3",
        b"completion_tokens": b"4",
        b"cost_usd": b"0.125",
    }
    assert 0 < await aredis.ttl(scratch_keys.usage(TENANT_B)) <= 600
    assert int(await aredis.get(scratch_keys.rate(TENANT_A, "tpm", current_minute())) or 0) == 3 + 5


async def test_a_second_final_writes_and_publishes_nothing(
    aredis: aioredis.Redis, scratch_keys: Keys
) -> None:
    outbox = Outbox(redis.Redis.from_url(REDIS_URL))
    outbox.start()
    try:
        async with Listener(aredis, scratch_keys.stream("r")) as listener:
            assert await outbox.finish(final_for(scratch_keys, "r", TENANT_A, "first")) == WRITTEN
            assert await outbox.finish(final_for(scratch_keys, "r", TENANT_A, "second")) == DUPLICATE
            assert len(await listener.until_final(timeout_s=5)) == 1
            assert await listener.quiet_for(0.2) == [], "no second final event"
    finally:
        await outbox.close()
    assert json.loads(await aredis.get(scratch_keys.reply("r")) or b"{}")["content"] == "first"
    requests = cast(Awaitable[bytes | None], aredis.hget(scratch_keys.usage(TENANT_A), "requests"))
    assert await requests == b"1"


async def test_a_final_write_waits_for_redis_and_fails_only_when_the_outbox_closes(
    scratch_keys: Keys,
) -> None:
    outbox = Outbox(redis.Redis.from_url("redis://127.0.0.1:1/0"), retry_delay_s=0.05)
    outbox.start()
    outbox.publish(scratch_keys.stream("r"), chunk("r", 0))  # best effort: dropped
    pending = asyncio.ensure_future(outbox.finish(final_for(scratch_keys, "r", TENANT_A, "x")))
    await asyncio.sleep(0.3)
    assert not pending.done(), "the final write is kept and retried while Redis is away"
    await outbox.close(timeout_s=0.2)
    with pytest.raises(redis.ConnectionError):
        await asyncio.wait_for(pending, 5)


async def test_a_quiet_outbox_writes_a_request_from_the_event_loop_in_order(
    aredis: aioredis.Redis, scratch_keys: Keys
) -> None:
    """With the thread idle and the worker quiet, a request's chunks and final write leave from the
    event loop's own connection, in order; with the worker busy, through the thread."""
    busy = False
    outbox = Outbox(redis.Redis.from_url(REDIS_URL), direct=aredis, quiet=lambda: not busy)
    outbox.start()
    try:
        # The loop's connection is taken by the first final write made while the thread is idle.
        assert await outbox.finish(final_for(scratch_keys, "first", TENANT_A, "x")) == WRITTEN
        for request_id, loop_expected in (("quiet", True), ("busy", False)):
            busy = not loop_expected
            writer = outbox.writer()
            async with Listener(aredis, scratch_keys.stream(request_id)) as listener:
                for seq in range(30):
                    await writer.publish(scratch_keys.stream(request_id), chunk(request_id, seq))
                assert writer.from_loop is loop_expected
                final = final_for(scratch_keys, request_id, TENANT_A, request_id)
                assert await writer.finish(final) == WRITTEN
                events = await listener.until_final(timeout_s=5)
            assert [e.get("seq") for e in events[:-1]] == list(range(30))
            assert events[-1] == {"type": "done", "request_id": request_id}
    finally:
        await outbox.close()
    assert json.loads(await aredis.get(scratch_keys.reply("quiet")) or b"{}")["content"] == "quiet"


async def test_a_request_moves_to_the_thread_when_the_loop_connection_fails(
    aredis: aioredis.Redis, scratch_keys: Keys
) -> None:
    """A dropped connection mid-stream: chunks are best effort, the rest keep their order, and the
    final write goes through the thread, once."""
    name = f"line-{scratch_keys.prefix}"
    loop_client = aioredis.Redis.from_url(REDIS_URL, client_name=name)
    outbox = Outbox(redis.Redis.from_url(REDIS_URL), direct=loop_client)
    outbox.start()
    try:
        assert await outbox.finish(final_for(scratch_keys, "first", TENANT_A, "x")) == WRITTEN
        writer = outbox.writer()
        async with Listener(aredis, scratch_keys.stream("r")) as listener:
            for seq in range(10):
                await writer.publish(scratch_keys.stream("r"), chunk("r", seq))
            assert writer.from_loop
            assert await kill_clients_named(aredis, name) == 1
            for seq in range(10, 40):
                await writer.publish(scratch_keys.stream("r"), chunk("r", seq))
                await asyncio.sleep(0.001)
            assert not writer.from_loop, "the thread from the first failed write on"
            assert await writer.finish(final_for(scratch_keys, "r", TENANT_A, "after")) == WRITTEN
            events = await listener.until_final(timeout_s=5)
            assert await listener.quiet_for(0.1) == []
        seqs = [e["seq"] for e in events[:-1]]
        assert seqs == sorted(seqs) and seqs[:10] == list(range(10)) and seqs[-1] == 39
        assert events[-1] == {"type": "done", "request_id": "r"}
    finally:
        await outbox.close()
        await loop_client.aclose()
    assert json.loads(await aredis.get(scratch_keys.reply("r")) or b"{}")["content"] == "after"
    requests = cast(Awaitable[bytes | None], aredis.hget(scratch_keys.usage(TENANT_A), "requests"))
    assert await requests == b"2"
