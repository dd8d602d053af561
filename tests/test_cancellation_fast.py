"""``CancelWatcher`` (worker/cancellation.py) against the shared Redis, in this process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from llm_pool.keys import Keys
from tests.helpers import REDIS_URL, kill_clients_named
from worker.cancellation import CancelWatcher

INTERVAL_S = 0.05


@pytest.fixture
async def named_client() -> AsyncIterator[tuple[aioredis.Redis, str]]:
    """A client whose connections carry a name of their own, so a test can kill them."""
    name = f"cancel-{uuid.uuid4().hex[:8]}"
    client = aioredis.Redis.from_url(REDIS_URL, client_name=name)
    yield client, name
    await client.aclose()


def sleeper() -> asyncio.Task[object]:
    return asyncio.get_running_loop().create_task(asyncio.sleep(30))


async def finished(task: asyncio.Task[object], timeout_s: float = 2.0) -> bool:
    done, _ = await asyncio.wait([task], timeout=timeout_s)
    return bool(done)


async def test_a_cancel_key_cancels_that_request_only(aredis: aioredis.Redis, scratch_keys: Keys) -> None:
    watcher = CancelWatcher(aredis, scratch_keys.cancel, interval_s=INTERVAL_S)
    watcher.start()
    wanted, other = sleeper(), sleeper()
    try:
        watcher.watch("wanted", wanted)
        watcher.watch("other", other)
        assert not await watcher.is_requested("wanted")
        await aredis.set(scratch_keys.cancel("wanted"), 1, ex=60)
        assert await watcher.is_requested("wanted")
        assert await finished(wanted), "the watcher cancels within a few ticks"
        assert wanted.cancelled()
        await asyncio.sleep(INTERVAL_S * 3)
        assert not other.done()
        assert watcher.unwatch("wanted") is True, "cancelled by its caller"
        assert watcher.unwatch("wanted") is False, "said once"
        assert watcher.unwatch("other") is False
    finally:
        other.cancel()
        await watcher.stop()


async def test_an_unwatched_request_is_left_alone(aredis: aioredis.Redis, scratch_keys: Keys) -> None:
    watcher = CancelWatcher(aredis, scratch_keys.cancel, interval_s=INTERVAL_S)
    watcher.start()
    task = sleeper()
    try:
        watcher.watch("r", task)
        assert watcher.unwatch("r") is False
        await aredis.set(scratch_keys.cancel("r"), 1, ex=60)
        await asyncio.sleep(INTERVAL_S * 4)
        assert not task.done()
    finally:
        task.cancel()
        await watcher.stop()


async def test_the_watcher_outlives_a_dropped_connection(
    named_client: tuple[aioredis.Redis, str], aredis: aioredis.Redis, scratch_keys: Keys
) -> None:
    client, name = named_client
    watcher = CancelWatcher(client, scratch_keys.cancel, interval_s=INTERVAL_S)
    watcher.start()
    task = sleeper()
    try:
        watcher.watch("r", task)
        await asyncio.sleep(INTERVAL_S * 3)  # a few MGETs on the named connection
        assert await kill_clients_named(aredis, name) >= 1
        await asyncio.sleep(INTERVAL_S * 3)
        await aredis.set(scratch_keys.cancel("r"), 1, ex=60)
        assert await finished(task), "a cancel key set after the drop still cancels"
        assert watcher.unwatch("r") is True
    finally:
        await watcher.stop()
