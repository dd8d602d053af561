"""Redis Sentinel: the pool follows a failover by itself, and ``redis.min_replicas_ack`` confirms writes.

The failover test runs a primary (AOF everysec), two replicas and three Sentinels on loopback ports,
two worker processes and 60 streamed requests (half through ``LLMPool.stream()``, half through plain
arq in Sentinel mode, listened to by plain redis-py listeners or by the README's WebSocket
``relay()`` recipe), and SIGKILLs the primary in the middle. The other tests need no
Sentinel: the settings and connection factory, a connection left on a demoted primary (``READONLY``),
and what a ``WAIT`` that confirms too few replicas does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import redis.asyncio as aioredis
from arq.connections import RedisSettings, create_pool
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.sentinel import SentinelConnectionPool, SentinelManagedSSLConnection
from structlog.testing import capture_logs

from llm_pool.client import LLMPool
from llm_pool.connections import arq_settings, async_redis, sync_redis
from llm_pool.errors import PoolUnavailable, redis_address
from llm_pool.settings import RedisSection, SettingsError, load_settings
from llm_pool.testing.cluster import (
    DEPLOYMENTS,
    ROOT,
    FakeProviderProcess,
    RedisServer,
    SentinelServer,
    forget_keys,
    free_port,
)
from tests.helpers import REDIS_URL, Pool, user
from worker.metrics import Metrics
from worker.outbox import WRITTEN, Final, LedgerEntry, Outbox

MASTER = "llm-pool-test"
# What production runs (README, "Scaling and health"); no delay before a replica's first sync.
AOF = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    "maxmemory-policy": "noeviction",
    "repl-diskless-sync-delay": "0",
}
REQUESTS = 60
SEND_EVERY_S = 0.05  # 60 requests over 3 s
KILL_AFTER_S = 1.5
TOKENS, TOKEN_DELAY_MS = 20, 50


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, state: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():
                return
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout_s:g} s: {state()}")


# --- the settings and connection factory, no servers -----------------------------------------


def test_sentinel_settings_build_sentinel_managed_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = uuid.uuid4().hex
    monkeypatch.setenv("SENTINELS_PASSWORD", secret)
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(
        '[redis]\nurl = "redis://app:pw@ignored:1/3"\nsentinel_password_env = "SENTINELS_PASSWORD"\n'
    )
    settings = load_settings(
        settings_file,
        environ={
            "LLM_POOL__REDIS__SENTINELS": '["127.0.0.1:26379", "[::1]:26380"]',
            "LLM_POOL__REDIS__SENTINEL_MASTER": "main",
            "LLM_POOL__REDIS__MIN_REPLICAS_ACK": "1",
        },
    )
    section = settings.redis
    assert section.sentinel_addresses() == [("127.0.0.1", 26379), ("::1", 26380)]
    assert (section.min_replicas_ack, section.replica_ack_timeout_ms) == (1, 1000)
    assert RedisSection().sentinels == [] and RedisSection().sentinel_master == "llm-pool"

    arq = arq_settings(section)
    assert arq.sentinel and arq.sentinel_master == "main"
    assert arq.host == [("127.0.0.1", 26379), ("::1", 26380)]
    assert (arq.database, arq.username, arq.password) == (3, "app", "pw")

    for client in (async_redis(section), sync_redis(section, socket_timeout=5)):
        pool = client.connection_pool
        assert isinstance(pool, AsyncSentinelPool | SentinelConnectionPool), type(pool)
        assert pool.service_name == "main" and pool.is_master
        options = pool.connection_kwargs
        assert (options["db"], options["username"], options["password"]) == (3, "app", "pw")
        assert "host" not in options or options["host"] != "ignored"
        sentinels = pool.sentinel_manager.sentinels
        assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]
        assert all(s.connection_pool.connection_kwargs["password"] == secret for s in sentinels)
    assert sync_redis(section, socket_timeout=5).connection_pool.connection_kwargs["socket_timeout"] == 5
    address = redis_address(async_redis(section))
    assert "127.0.0.1:26379" in address and "main" in address and "pw" not in address

    tls = RedisSection(url="rediss://h:1/0?ssl_ca_certs=/ca.crt", sentinels=["127.0.0.1:26379"])
    pool = cast(SentinelConnectionPool, sync_redis(tls).connection_pool)
    assert pool.connection_class is SentinelManagedSSLConnection
    assert pool.connection_kwargs["ssl_ca_certs"] == "/ca.crt"
    sentinel_options = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert sentinel_options["ssl_ca_certs"] == "/ca.crt"

    monkeypatch.delenv("SENTINELS_PASSWORD")
    with pytest.raises(SettingsError, match="SENTINELS_PASSWORD"):
        sync_redis(section)
    for bad in (["nohost"], ["h:port"], ["h:70000"], [":1"]):
        with pytest.raises(ValueError, match="host:port"):
            RedisSection(sentinels=bad)
    with pytest.raises(ValueError, match="redis:// or rediss://"):
        RedisSection(url="unix:///tmp/r.sock", sentinels=["h:1"])
    with pytest.raises(ValueError):
        RedisSection(min_replicas_ack=-1)


# --- a connection on a demoted primary ----------------------------------------------------------


def final_for(prefix: str, request_id: str) -> Final:
    return Final(
        reply_key=f"{prefix}:reply:{request_id}",
        reply_json=b'{"status":"ok"}',
        reply_ttl_s=60,
        channel=f"{prefix}:stream:{request_id}",
        event_json=b'{"type":"done"}',
        ledger=LedgerEntry(f"{prefix}:usage:t:d", prompt_tokens=1, completion_tokens=1, cost_usd=0, ttl_s=60),
    )


def link_up(server: RedisServer) -> bool:
    client = server.client()
    try:
        return cast(dict[str, Any], client.info("replication")).get("master_link_status") == "up"
    finally:
        client.close()


@pytest.mark.e2e
async def test_a_connection_left_on_a_demoted_primary_finds_the_new_one(tmp_path: Path) -> None:
    """Clients connected to a primary that becomes a replica get ``READONLY`` on their next write:
    redis-py's Sentinel-managed connection then disconnects and raises ``ConnectionError``, and the
    next connection asks the Sentinels again. The outbox's final write (a script in a pipeline,
    with ``WAIT``) retries by itself and lands on the new primary, script cache and all."""
    first = RedisServer(port=free_port(), directory=_mkdir(tmp_path / "a"), config=AOF)
    second_config = {**AOF, "replicaof": f"127.0.0.1 {first.port}"}
    second = RedisServer(port=free_port(), directory=_mkdir(tmp_path / "b"), config=second_config)
    first.start()
    second.start()
    primary = [("127.0.0.1", first.port)]  # what the (stand-in) Sentinels answer

    async def discover_async(_: str) -> tuple[str, int]:
        return primary[0]

    section = RedisSection(url="redis://127.0.0.1:1/0", sentinels=["127.0.0.1:1"], sentinel_master="m")
    sync_client, async_client, outbox_client = sync_redis(section), async_redis(section), sync_redis(section)
    for client in (sync_client, outbox_client):
        cast(Any, client.connection_pool).sentinel_manager.discover_master = lambda _: primary[0]
    cast(Any, async_client.connection_pool).sentinel_manager.discover_master = discover_async
    shortfalls: list[int] = []
    outbox = Outbox(
        outbox_client, min_replicas_ack=1, replica_ack_timeout_ms=2000, on_ack_shortfall=shortfalls.append
    )
    try:
        wait_until(lambda: link_up(second), 20, "the replica's first sync", lambda: "link down")
        outbox.start()
        assert sync_client.set("k", "before") and await async_client.set("k2", "before")
        assert await outbox.finish(final_for("p", "r1")) == WRITTEN
        assert shortfalls == [], "the replica acknowledged the final write"

        # The switch a Sentinel makes, without the Sentinel: our clients stay connected to `first`.
        second.client().replicaof("NO", "ONE")
        first.client().replicaof("127.0.0.1", second.port)
        primary[0] = ("127.0.0.1", second.port)
        wait_until(lambda: link_up(first), 20, "the old primary following the new one", lambda: "link down")

        with pytest.raises(redis.ConnectionError, match="previous master is now a slave"):
            sync_client.set("k", "after")
        assert sync_client.set("k", "after")
        with pytest.raises(redis.ConnectionError, match="previous master is now a slave"):
            await async_client.set("k2", "after")
        assert await async_client.set("k2", "after")
        assert await asyncio.wait_for(outbox.finish(final_for("p", "r2")), 10) == WRITTEN
        on_new = second.client()
        assert on_new.get("k") == b"after" and on_new.get("k2") == b"after"
        assert on_new.get("p:reply:r2") == b'{"status":"ok"}'
        assert cast(bytes, on_new.hget("p:usage:t:d", "requests")) == b"2"
    finally:
        await outbox.close()
        sync_client.close()
        await async_client.aclose()
        first.stop()
        second.stop()


# --- WAIT that confirms too few replicas ---------------------------------------------------------


async def test_too_few_replica_acks_are_logged_and_counted() -> None:
    """The shared test Redis has no replicas: ``WAIT 1`` confirms 0. The worker's final write and
    the client's enqueue still complete; each shortfall is one warning naming 0, and the worker's
    counter ``llm_pool_replica_ack_shortfalls_total`` goes up."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    metrics = Metrics(["fast"], lambda: 0)
    outbox = Outbox(
        redis.Redis.from_url(REDIS_URL),
        min_replicas_ack=1,
        replica_ack_timeout_ms=50,
        on_ack_shortfall=lambda _acknowledged: metrics.replica_ack_shortfalls.inc(),
    )
    shared = redis.Redis.from_url(REDIS_URL)
    request_id = uuid.uuid4().hex
    try:
        outbox.start()
        with capture_logs() as logs:
            assert await outbox.finish(final_for(prefix, "r1")) == WRITTEN
            settings = load_settings(
                environ={
                    "REDIS_URL": REDIS_URL,
                    "LLM_POOL__REDIS__KEY_PREFIX": prefix,
                    "LLM_POOL__REDIS__MIN_REPLICAS_ACK": "1",
                    "LLM_POOL__REDIS__REPLICA_ACK_TIMEOUT_MS": "50",
                }
            )
            async with LLMPool(settings) as caller:
                started = time.monotonic()
                assert (
                    await caller.submit("fast", user(), str(uuid.uuid4()), request_id=request_id)
                    == request_id
                )
                took = time.monotonic() - started
        shortfalls = [entry for entry in logs if entry["event"] == "replica_ack_shortfall"]
        assert len(shortfalls) == 2, logs
        assert all(
            e["acknowledged"] == 0 and e["wanted"] == 1 and e["log_level"] == "warning" for e in shortfalls
        )
        assert shortfalls[1]["request_id"] == request_id
        assert 0.04 < took < 2, f"the enqueue waited {took:.3f} s for WAIT's 50 ms"
        assert metrics.registry.get_sample_value("llm_pool_replica_ack_shortfalls_total") == 1.0
        assert shared.get(f"{prefix}:reply:r1") == b'{"status":"ok"}'
        assert shared.exists(f"arq:job:{request_id}")
    finally:
        await outbox.close()
        forget_keys(shared, f"{prefix}:*")
        shared.delete(f"arq:job:{request_id}")
        shared.close()


# --- the failover under load ---------------------------------------------------------------------


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Cluster:
    primary: RedisServer
    replicas: list[RedisServer]
    sentinels: list[SentinelServer]

    @property
    def sentinel_addresses(self) -> list[str]:
        return [s.address for s in self.sentinels]

    @property
    def sentinel_pairs(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", s.port) for s in self.sentinels]

    def describe(self) -> str:
        parts = []
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError, OSError):
                state = sentinel.master()
                parts.append(
                    f"sentinel {sentinel.port}: primary {state.get('port')}, "
                    f"{state.get('num-slaves')} replicas, "
                    f"{state.get('num-other-sentinels')} other sentinels, flags {state.get('flags')}"
                )
        return "; ".join(parts) or "no sentinel answers"


@contextlib.contextmanager
def sentinel_cluster(directory: Path) -> Iterator[Cluster]:
    """A primary, two replicas and three Sentinels (quorum 2), all up and aware of each other."""
    primary = RedisServer(port=free_port(), directory=_mkdir(directory / "primary"), config=AOF)
    replicas = [
        RedisServer(
            port=free_port(),
            directory=_mkdir(directory / f"replica{i}"),
            config={**AOF, "replicaof": f"127.0.0.1 {primary.port}"},
        )
        for i in (1, 2)
    ]
    sentinels = [SentinelServer(directory / "sentinels", MASTER, primary.port) for _ in range(3)]
    cluster = Cluster(primary, replicas, sentinels)
    started: list[RedisServer | SentinelServer] = []
    try:
        for server in (primary, *replicas):
            server.start()
            started.append(server)
        wait_until(
            lambda: all(link_up(r) for r in replicas), 30, "both replicas' master_link_status:up", lambda: ""
        )
        for sentinel in sentinels:
            sentinel.start()
            started.append(sentinel)

        def aware() -> bool:
            states = [s.master() for s in sentinels]
            return all(s["num-other-sentinels"] == 2 and s["num-slaves"] == 2 for s in states)

        wait_until(aware, 30, "the Sentinels knowing both replicas and each other", cluster.describe)
        yield cluster
    finally:
        for running in reversed(started):  # the Sentinels first: no failover while stopping
            running.stop()


@dataclass
class Tracked:
    index: int
    request_id: str
    # "client": LLMPool.stream(); "arq": plain arq + a plain redis-py listener; "relay": plain arq +
    # the README's WebSocket relay() recipe, run as it is printed there.
    path: str
    sent_at: float = 0.0
    completed_at: float | None = None
    # One list of events per listener: each LLMPool.stream() call, the plain listener, or what
    # relay() sent to its WebSocket.
    listeners: list[list[dict[str, Any]]] = field(default_factory=list)
    finals: list[int] = field(default_factory=list)  # final events seen, per listener
    gaps: int = 0  # the plain listener's connection dropped or it re-subscribed
    retries: int = 0  # submissions that failed (Redis away) and were sent again, same id
    reenqueued: int = 0  # plain arq: enqueued again after a re-subscription found nothing
    error: str | None = None


class PlainListener:
    """A listener in plain redis-py (no llm_pool import) on a Sentinel-managed client: its pub-sub
    reconnects to the new primary and re-subscribes by itself; after a drop it reads the reply key.
    It keeps every event it receives until the end of the run, so anything published after a
    request's final event would be seen."""

    def __init__(self, master: aioredis.Redis, item: Tracked, channel: str, reply_key: str) -> None:
        self._master = master
        self._pubsub = master.pubsub()
        self._item = item
        self._channel = channel
        self._reply_key = reply_key
        self.events: list[dict[str, Any]] = []
        item.listeners.append(self.events)
        item.finals.append(0)
        self.confirmations = 0
        self.reply_read = False

    async def subscribe(self, deadline: float) -> None:
        while True:
            try:
                await self._pubsub.subscribe(self._channel)
                while time.monotonic() < deadline:
                    message = await self._pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "subscribe":
                        self.confirmations = 1
                        return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no SUBSCRIBE {self._channel} confirmed")
            await asyncio.sleep(0.2)

    async def follow(self, stop: asyncio.Event, on_resubscribed: Callable[[], Any]) -> None:
        """Collect events until ``stop``: the request ends at its final event or at the reply key
        after a gap; the listener stays subscribed to catch anything published after its end."""
        item = self._item
        while not stop.is_set():
            try:
                message = await self._pubsub.get_message(timeout=0.5)
            except (redis.RedisError, OSError):
                item.gaps += 1  # the next get_message reconnects (new primary) and re-subscribes
                await asyncio.sleep(0.1)
                continue
            if message is None:
                if item.gaps and item.completed_at is None:
                    await self._read_reply()
                continue
            if message["type"] == "subscribe":
                self.confirmations += 1
                item.gaps += 1
                if item.completed_at is None and not await self._read_reply():
                    await on_resubscribed()
                continue
            if message["type"] != "message":
                continue
            event = json.loads(message["data"])
            if event.get("request_id") != item.request_id:
                continue
            self.events.append(event)
            if event["type"] in ("done", "error"):
                item.finals[-1] += 1
                if item.completed_at is None:
                    item.completed_at = time.monotonic()

    async def _read_reply(self) -> bool:
        try:
            found = await self._master.exists(self._reply_key)
        except (redis.RedisError, OSError):
            return False
        if found and self._item.completed_at is None:
            self._item.completed_at = time.monotonic()
            self.reply_read = True
        return bool(found)

    async def close(self) -> None:
        with contextlib.suppress(redis.RedisError, OSError):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]


class FakeSocket:
    """What the README's relay() sends to its WebSocket client."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_json(self, event: dict[str, Any]) -> None:
        self.sent.append(event)


def readme_relay() -> Callable[..., Coroutine[Any, Any, None]]:
    """``relay()`` from README's "Listening to a stream from a WebSocket handler", as printed."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Listening to a stream from a WebSocket handler", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md (relay)", "exec"), namespace)  # noqa: S102 (our own README)
    return cast(Callable[..., Coroutine[Any, Any, None]], namespace["relay"])


@dataclass
class Run:
    items: list[Tracked]
    killed_at: float
    failover_at: float | None
    old_port: int
    new_port: int | None


async def drive(pool: Pool, cluster: Cluster, tenant: str) -> Run:
    """Send the requests, SIGKILL the primary mid-way, and follow every request to its end."""
    keys = pool.keys
    paths = ("client", "arq", "client", "relay")
    items = [Tracked(i, uuid.uuid4().hex, paths[i % 4]) for i in range(REQUESTS)]
    relay = readme_relay()
    stop = asyncio.Event()
    sentinel = AsyncSentinel(cluster.sentinel_pairs, sentinel_kwargs={"socket_timeout": 1})  # type: ignore[no-untyped-call]
    master = sentinel.master_for(MASTER, socket_timeout=5)
    arq = await create_pool(
        RedisSettings(host=cluster.sentinel_pairs, sentinel=True, sentinel_master=MASTER),
        job_serializer=lambda o: json.dumps(o).encode(),
        job_deserializer=json.loads,
        default_queue_name=keys.queue,
    )
    messages = user("tell me something")
    request = {"model": "fast", "messages": messages, "tenant_id": tenant, "timeout_s": 40}
    started = time.monotonic()
    hard_deadline = started + 50

    async def via_client(caller: LLMPool, item: Tracked) -> None:
        while True:
            events: list[dict[str, Any]] = []
            item.listeners.append(events)
            item.finals.append(0)
            try:
                async for event in caller.stream(
                    "fast", messages, tenant, request_id=item.request_id, timeout_s=40
                ):
                    events.append(event.model_dump(mode="json"))
                    if event.type in ("done", "error"):
                        item.finals[-1] += 1
                item.completed_at = time.monotonic()
                return
            except PoolUnavailable as exc:
                item.retries += 1  # Redis away (the failover): the same id again is safe
                if time.monotonic() > hard_deadline:
                    item.error = str(exc)
                    return
                await asyncio.sleep(0.2)

    async def enqueue(item: Tracked) -> bool:
        """Plain arq's enqueue, retried while Redis is away; True if this call enqueued it."""
        while True:
            try:
                return await arq.enqueue_job("complete_stream", request, _job_id=item.request_id) is not None
            except (redis.RedisError, OSError) as exc:
                item.retries += 1
                if time.monotonic() > hard_deadline:
                    item.error = f"enqueue: {exc}"
                    return False
                await asyncio.sleep(0.2)

    async def via_arq(item: Tracked) -> None:
        listener = PlainListener(master, item, keys.stream(item.request_id), keys.reply(item.request_id))

        async def again() -> None:  # a request enqueued just before the kill may not have reached a replica
            if await enqueue(item):
                item.reenqueued += 1

        try:
            await listener.subscribe(hard_deadline)
            await enqueue(item)
            await listener.follow(stop, again)
        except TimeoutError as exc:
            item.error = str(exc)
        finally:
            await listener.close()

    async def via_relay(item: Tracked) -> None:
        socket = FakeSocket()
        item.listeners.append(socket.sent)
        item.finals.append(0)
        channel = keys.stream(item.request_id)
        while True:  # the recipe's first step: subscribed (confirmed) before the enqueue
            subscribed = asyncio.Event()
            task = asyncio.create_task(
                relay(master, socket, item.request_id, channel, hard_deadline - 5, subscribed, keys.prefix)
            )
            waiter = asyncio.create_task(subscribed.wait())
            await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
            if subscribed.is_set():
                break
            waiter.cancel()
            item.retries += 1  # SUBSCRIBE failed (no primary): a handler would try again
            if time.monotonic() > hard_deadline or task.exception() is None:
                item.error = f"relay ended before subscribing: {task.exception()!r}"
                return
            await asyncio.sleep(0.2)
        await enqueue(item)
        try:
            await task
        except Exception as exc:
            item.error = f"relay failed: {exc!r}"
            return
        item.finals[-1] = sum(1 for e in socket.sent if e["type"] in ("done", "error"))
        item.completed_at = time.monotonic()

    async def send(caller: LLMPool) -> list[asyncio.Task[None]]:
        tasks = []
        runs = {"client": lambda item: via_client(caller, item), "arq": via_arq, "relay": via_relay}
        for item in items:
            await asyncio.sleep(max(0.0, started + item.index * SEND_EVERY_S - time.monotonic()))
            item.sent_at = time.monotonic()
            tasks.append(asyncio.create_task(runs[item.path](item)))
        return tasks

    async def watch_failover() -> float | None:
        """When a Sentinel first reports another primary (polled every 20 ms)."""
        while time.monotonic() < hard_deadline:
            ports = await asyncio.gather(*(asyncio.to_thread(s.master_port) for s in cluster.sentinels))
            if any(port not in (None, cluster.primary.port) for port in ports):
                return time.monotonic()
            await asyncio.sleep(0.02)
        return None

    async with LLMPool(pool.settings) as caller:
        sender = asyncio.create_task(send(caller))
        await asyncio.sleep(max(0.0, started + KILL_AFTER_S - time.monotonic()))
        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.primary.kill)
        failover_at = await watch_failover()
        tasks = await sender
        while time.monotonic() < hard_deadline and any(  # noqa: ASYNC110 (state set by 60 tasks)
            item.completed_at is None and item.error is None for item in items
        ):
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # listeners stay subscribed: nothing may follow a final event
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    new_port = None
    with contextlib.suppress(redis.RedisError, OSError):
        new_port = int((await sentinel.discover_master(MASTER))[1])
    await arq.aclose()
    await master.aclose()
    for client in sentinel.sentinels:
        await client.aclose()
    return Run(items, killed_at, failover_at, cluster.primary.port, new_port)


def stream_text(events: list[dict[str, Any]]) -> tuple[str, bool]:
    """The text after the last ``reset``, and whether its chunks arrived contiguously (seq 0..n-1)
    up to a final event."""
    last_reset = max((i for i, e in enumerate(events) if e["type"] == "reset"), default=-1)
    after = events[last_reset + 1 :]
    chunks = [e for e in after if e["type"] == "chunk"]
    final = any(e["type"] in ("done", "error") for e in after)
    contiguous = final and [c["seq"] for c in chunks] == list(range(len(chunks)))
    return "".join(c["text"] for c in chunks), contiguous


@pytest.mark.e2e
@pytest.mark.timeout(180)
async def test_pool_rides_through_a_primary_failover(tmp_path: Path, provider: FakeProviderProcess) -> None:
    """SIGKILL the primary with requests in flight: Sentinel promotes a replica, and workers,
    ``LLMPool`` and plain redis-py/arq callers carry on against it by themselves."""
    tenant = str(uuid.uuid4())
    provider.configure_deployments(DEPLOYMENTS, tokens=TOKENS, token_delay_ms=TOKEN_DELAY_MS)
    with sentinel_cluster(tmp_path / "redis") as cluster:
        pool = Pool(
            tmp_path,
            provider,
            redis_url=cluster.primary.url,
            redis_options={
                "sentinels": cluster.sentinel_addresses,
                "sentinel_master": MASTER,
                "min_replicas_ack": 1,
            },
        )
        try:
            workers = [pool.start_worker(f"fo{i}") for i in range(2)]
            pool.wait_ready(*workers)
            run = await drive(pool, cluster, tenant)
            survivors = [w.worker_id for w in pool.workers if w.alive]
        finally:
            pool.stop()
        after = sync_redis(pool.settings.redis)
        try:
            replies: dict[str, dict[str, Any]] = {}
            for item in run.items:
                raw = cast(bytes | None, after.get(pool.keys.reply(item.request_id)))
                if raw is not None:
                    replies[item.request_id] = json.loads(raw)
            ledger = cast(dict[bytes, bytes], after.hgetall(pool.keys.usage(tenant)))
            # Each final write and LLMPool enqueue since the failover ended with a WAIT here.
            stats = cast(dict[str, Any], after.info("commandstats"))
            waits = int(stats.get("cmdstat_wait", {}).get("calls", 0))
        finally:
            after.close()
        state = cluster.describe()
    logs = pool.logs()

    items, killed = run.items, run.killed_at
    in_flight = [
        i for i in items if i.sent_at < killed and (i.completed_at is None or i.completed_at > killed)
    ]
    completed_after = sorted(
        i.completed_at
        for i in items
        if i.completed_at is not None and run.failover_at and i.completed_at >= run.failover_at
    )
    failover_s = run.failover_at - killed if run.failover_at else None
    recovery_s = completed_after[0] - killed if completed_after else None
    last_in_flight_s = max((i.completed_at or float("inf")) - killed for i in in_flight) if in_flight else 0.0
    contiguous, mismatched, gap_tails = 0, [], 0
    for item in items:
        reply = replies.get(item.request_id)
        if reply is None or not item.listeners:
            continue
        text, whole = stream_text(item.listeners[-1])
        if item.path == "arq" and item.gaps:
            # The listener's connection dropped (it knows: README's recipe): chunks published in the
            # outage are gone, so it reads the reply key. Count those whose seqs looked whole.
            gap_tails += whole and reply["status"] == "ok" and text != reply["content"]
            continue
        # LLMPool.stream() and the README's relay() make up what they missed from the reply key:
        # the text they pass on is always the whole reply.
        if whole or item.path in ("client", "relay"):
            contiguous += 1
            if reply["status"] == "ok" and text != reply["content"]:
                seqs = [e.get("seq", e["type"]) for e in item.listeners[-1]]
                mismatched.append(
                    f"#{item.index} {item.path} {item.request_id} attempt {reply['attempt']}: "
                    f"{len(text)} of {len(reply['content'])} characters, events {seqs}, "
                    f"{len(item.listeners)} listener(s), gaps {item.gaps}"
                )
    statuses = Counter(r["status"] if r["status"] == "ok" else r["error"]["code"] for r in replies.values())
    print(
        f"\nfailover: primary :{run.old_port} SIGKILLed with {len(in_flight)} requests in flight; "
        f"a Sentinel reported the new primary :{run.new_port} after "
        + (f"{failover_s:.2f} s" if failover_s is not None else "never")
        + "; first request completed after it "
        + (f"{recovery_s:.2f} s after the kill" if recovery_s is not None else "never")
        + f"; the last request in flight at the kill ended {last_in_flight_s:.2f} s after it\n"
        f"{len(replies)}/{REQUESTS} replies {dict(statuses)}, ledger requests {ledger.get(b'requests')!r}, "
        f"{contiguous} streams checked against their reply ({len(mismatched)} mismatched), "
        f"{gap_tails} plain streams lost their tail with their connection (and read the reply key), "
        f"submissions retried {sum(i.retries for i in items if i.path == 'client')} times (LLMPool) and "
        f"{sum(i.retries for i in items if i.path != 'client')} times (plain arq), "
        f"plain listeners with a gap {sum(1 for i in items if i.path == 'arq' and i.gaps)}, "
        f"re-enqueued {sum(i.reenqueued for i in items)}, "
        f"replica_ack_shortfall lines {logs.count('replica_ack_shortfall')}, "
        f"WAITs on the new primary {waits}; {state}"
    )

    errors = {i.request_id: i.error for i in items if i.error}
    assert not errors, f"requests that could not be sent or followed: {errors}"
    missing = [(i.index, i.path, i.request_id) for i in items if i.request_id not in replies]
    assert not missing, f"{len(missing)} requests without a reply key: {missing}; {state}"
    assert failover_s is not None, f"no Sentinel reported a new primary; {state}"
    assert waits >= REQUESTS // 4, f"only {waits} WAITs on the new primary (redis.min_replicas_ack = 1)"
    assert survivors == ["fo0", "fo1"], f"workers died: alive {survivors}; see {pool.tmp}"
    assert ledger.get(b"requests") == str(REQUESTS).encode(), (
        f"the tenant's ledger counted {ledger.get(b'requests')!r} requests for {REQUESTS} replies"
    )
    twice = {i.request_id: i.finals for i in items if any(n > 1 for n in i.finals)}
    assert not twice, f"listeners saw two final events: {twice}"
    unfinished = [i.request_id for i in items if i.completed_at is None]
    assert not unfinished, f"callers never saw the end of {unfinished}"
    max_attempt = pool.settings.worker.max_tries + pool.settings.worker.max_stream_resumes
    odd = {rid: r["attempt"] for rid, r in replies.items() if not 1 <= r["attempt"] <= max_attempt}
    assert not odd, f"replies with an attempt outside 1..{max_attempt}: {odd}"
    assert contiguous >= REQUESTS // 2 and not mismatched, (
        f"{len(mismatched)} of {contiguous} streams checked differ from their reply's content: {mismatched}"
    )
    slow = {i.request_id: round((i.completed_at or float("inf")) - killed, 2) for i in in_flight}
    assert in_flight and last_in_flight_s <= 20, f"requests in flight at the kill, ended after (s): {slow}"
    finished_logs = Counter(
        line.split('"request_id": "')[1][:32]
        for line in logs.splitlines()
        if '"request_finished"' in line and '"duplicate": false' in line and '"request_id": "' in line
    )
    assert finished_logs, "no request_finished lines in the workers' logs (has their format changed?)"
    answered_twice = {rid: n for rid, n in finished_logs.items() if n > 1}
    assert not answered_twice, f"requests whose final write was made twice: {answered_twice}"
