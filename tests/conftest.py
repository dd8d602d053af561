"""Shared fixtures: the real Redis, the fake provider process, worker processes, and the in-process
worker of the fast tier.

The end-to-end tests (marker ``e2e``) run against a pool started exactly as an operator would start
one (the Procfile's command), with a key prefix of its own so several runs can share one Redis. The
other tests (``make test-fast``) run in this process only: a test not marked ``e2e`` that starts a
Python interpreter or a redis-server fails (``SubprocessOutsideE2E``), so the tiers cannot drift.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from llm_pool.client import LLMPool
from llm_pool.keys import Keys
from llm_pool.testing.cluster import FakeProviderProcess, aforget_keys, forget_keys
from tests.helpers import ALLOWED_CHANNELS, REDIS_URL, Pool
from tests.support.inprocess import InProcessWorker, mock_settings

# --- the fast tier's guard ----------------------------------------------------------------------


class SubprocessOutsideE2E(RuntimeError):
    """A test not marked ``e2e`` started a worker, provider, Python or redis-server process."""


# The test running now, while it is not marked e2e (set around its setup, call and teardown).
_fast_test: list[str] = []
_popen_init: Callable[..., None] = subprocess.Popen.__init__


def _pool_program(args: Any) -> str | None:
    """The program ``Popen(args)`` starts if only end-to-end tests may start it: a Python
    interpreter (a worker, the fake provider, a CLI) or a redis-server (a private server, a
    Sentinel); else None."""
    argv = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
    if not argv:
        return None
    program = os.fsdecode(argv[0])
    name = os.path.basename(program)
    if program == sys.executable or name.startswith(("python", "redis-server")):
        return program
    return None


def _guarded_popen_init(self: subprocess.Popen[Any], args: Any, *rest: Any, **options: Any) -> None:
    program = _pool_program(args) if _fast_test else None
    if program is not None:
        raise SubprocessOutsideE2E(
            f"{_fast_test[0]} starts {program!r} but is not marked e2e: "
            "mark it (pytestmark = pytest.mark.e2e) or keep it in-process"
        )
    _popen_init(self, args, *rest, **options)


def pytest_configure(config: pytest.Config) -> None:
    subprocess.Popen.__init__ = _guarded_popen_init  # type: ignore[method-assign]


def pytest_unconfigure(config: pytest.Config) -> None:
    subprocess.Popen.__init__ = _popen_init  # type: ignore[method-assign]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    if item.get_closest_marker("e2e") is None:
        _fast_test.append(item.nodeid)
    try:
        return (yield)
    finally:
        _fast_test.clear()


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_sync() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    yield client
    client.close()


@pytest.fixture(scope="session")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeProviderProcess]:
    log = (tmp_path_factory.mktemp("provider") / "provider.log").open("w")
    fake = FakeProviderProcess(log=log)
    yield fake
    fake.stop()
    log.close()


@pytest.fixture(scope="session")
def pool(
    tmp_path_factory: pytest.TempPathFactory, provider: FakeProviderProcess, redis_sync: redis.Redis
) -> Iterator[Pool]:
    """Two workers on one queue, started once for the session; channels ``ws:*`` allowed too."""
    the_pool = Pool(tmp_path_factory.mktemp("pool"), provider, worker={"allowed_channels": ALLOWED_CHANNELS})
    first, second = the_pool.start_worker("alpha"), the_pool.start_worker("beta")
    the_pool.wait_ready(first, second)
    yield the_pool
    for worker in the_pool.workers:
        worker.stop()
    forget_keys(redis_sync, f"{the_pool.prefix}:*")


@pytest.fixture(autouse=True)
def _clean_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "provider" in request.fixturenames:
        request.getfixturevalue("provider").reset()


@pytest.fixture
async def client(pool: Pool) -> AsyncIterator[LLMPool]:
    async with LLMPool(pool.settings, redis_url=REDIS_URL) as pool_client:
        yield pool_client


@pytest.fixture
async def idle(tmp_path: Path, provider: FakeProviderProcess) -> AsyncIterator[Pool]:
    """A pool with no workers, under a prefix of its own; its keys (and the arq jobs the client API
    tests enqueue as ``api-*``) are deleted afterwards."""
    the_pool = Pool(tmp_path, provider)
    yield the_pool
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await aforget_keys(client, f"{the_pool.prefix}:*", "arq:job:api-*")
    finally:
        await client.aclose()


@pytest.fixture
async def aredis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


# --- the fast tier ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def inproc() -> AsyncIterator[InProcessWorker]:
    """The worker's state built by its own start-up hook in this process, over ``MOCK_GROUPS``
    (tests/support/inprocess.py), under a key prefix of its own."""
    client = aioredis.Redis.from_url(REDIS_URL)
    worker = InProcessWorker(mock_settings(f"t{uuid.uuid4().hex[:10]}"), client)
    await worker.start()
    yield worker
    await worker.stop()
    await aforget_keys(client, f"{worker.settings.redis.key_prefix}:*")
    await client.aclose()


@pytest.fixture
async def scratch_keys(aredis: aioredis.Redis) -> AsyncIterator[Keys]:
    """Key names under a prefix of the test's own on the shared Redis, deleted afterwards."""
    keys = Keys(f"t{uuid.uuid4().hex[:10]}")
    yield keys
    await aforget_keys(aredis, f"{keys.prefix}:*")
