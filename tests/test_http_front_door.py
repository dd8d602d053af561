"""The HTTP front door (``llm-pool serve-http``, issue 13) as its callers see it: the server started
as a process, driven by httpx over loopback, against the session's real workers and the fake
provider. The old service's shapes byte for byte, NDJSON flushed per chunk, a client that goes away
cancelling its request, 100 concurrent streams, malformed bodies, health."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from llm_pool.testing.cluster import DEPLOYMENTS, FakeProviderProcess
from llm_pool.testing.front_door import FrontDoorProcess
from tests.helpers import (
    EXPECTED_TEXT,
    TENANT,
    WEATHER_TOOL,
    Pool,
    cleanup,
    decode,
    provider_calls,
    start_front_door,
    stop_cleanly,
    user,
    wait_for_key,
)

pytestmark = pytest.mark.e2e


def body(**overrides: Any) -> dict[str, Any]:
    """A request in the old service's shape."""
    return {"model": "fast", "messages": user(), "tenant_id": TENANT, **overrides}


@pytest.fixture(scope="module")
def front_door(pool: Pool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontDoorProcess]:
    door = start_front_door(pool, tmp_path_factory.mktemp("http") / "front-door.log")
    yield door
    stop_cleanly(door)


@pytest.fixture
async def http(front_door: FrontDoorProcess) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=front_door.url, timeout=60, limits=limits) as client:
        yield client


@dataclass
class StreamRead:
    status: int
    headers: httpx.Headers
    lines: list[bytes] = field(default_factory=list)  # each with its "\n"
    times: list[float] = field(default_factory=list)  # perf_counter when each line was complete
    rest: bytes = b""  # bytes after the last "\n" (must be none)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


async def read_stream(
    http: httpx.AsyncClient, payload: dict[str, Any], request_id: str | None = None, stop_after: int = 0
) -> StreamRead:
    """POST /complete/stream and time each NDJSON line; ``stop_after``: close the connection after
    that many lines."""
    headers = {"X-Request-Id": request_id} if request_id else {}
    async with http.stream("POST", "/complete/stream", json=payload, headers=headers) as response:
        read = StreamRead(response.status_code, response.headers)
        async for piece in response.aiter_raw():
            now = time.perf_counter()
            read.rest += piece
            while b"\n" in read.rest:
                line, read.rest = read.rest.split(b"\n", 1)
                read.lines.append(line + b"\n")
                read.times.append(now)
            if stop_after and len(read.lines) >= stop_after:
                break
    return read


async def first_chunk_on_channel(pubsub: aioredis.client.PubSub, until: float) -> float:
    """perf_counter when the channel's first chunk event arrived."""
    while time.perf_counter() < until:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        if message is not None:
            arrived = time.perf_counter()
            if json.loads(message["data"])["type"] == "chunk":
                return arrived
    raise AssertionError("no chunk on the request's channel")


async def subscribed(client: aioredis.Redis, channel: str) -> aioredis.client.PubSub:
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    while (await pubsub.get_message(timeout=5)) is None:
        pass  # Redis's confirmation
    return pubsub


# --- POST /complete ---------------------------------------------------------------------------


async def test_complete_answers_the_old_shape_with_real_usage(
    http: httpx.AsyncClient, pool: Pool, aredis: aioredis.Redis
) -> None:
    response = await http.post("/complete", json=body())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 32 and int(request_id, 16) >= 0  # a new UUID hex
    answer = response.json()
    assert list(answer) == ["content", "model", "usage", "tool_calls"]  # the old keys, in order
    assert answer == {
        "content": EXPECTED_TEXT,
        "model": "fast",
        "usage": {"prompt_tokens": 3, "completion_tokens": 8},  # the provider's counts, not zeros
        "tool_calls": [],
    }
    # FastAPI's JSON, as the old service wrote it; the X-Request-Id is the pool's request id.
    assert response.content == json.dumps(answer, separators=(",", ":")).encode()
    reply = decode(await aredis.get(pool.keys.reply(request_id)))
    assert reply["status"] == "ok" and reply["content"] == EXPECTED_TEXT


async def test_complete_with_tools_returns_the_tool_calls(http: httpx.AsyncClient) -> None:
    payload = body(model="quality", messages=user("weather in Paris"), tools=[WEATHER_TOOL])
    response = await http.post("/complete", json=payload)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["content"] == "" and len(answer["tool_calls"]) == 1
    call = answer["tool_calls"][0]
    assert call["type"] == "function" and call["id"] and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "n": 1}


async def test_x_request_id_is_kept_when_valid_and_replaced_when_not(
    http: httpx.AsyncClient, pool: Pool, aredis: aioredis.Redis
) -> None:
    mine = f"caller-{uuid.uuid4().hex}:1.a_b"
    response = await http.post("/complete", json=body(), headers={"X-Request-Id": mine})
    assert response.status_code == 200 and response.headers["x-request-id"] == mine
    assert decode(await aredis.get(pool.keys.reply(mine)))["content"] == EXPECTED_TEXT
    for bad in ("has spaces in it", "x" * 129, "star*", ""):
        response = await http.post("/complete", json=body(), headers={"X-Request-Id": bad})
        assert response.status_code == 200
        assert response.headers["x-request-id"] != bad and len(response.headers["x-request-id"]) == 32
    # On every response: errors, unknown paths, health.
    for method, path, payload in (
        ("POST", "/complete", {"model": "fast"}),
        ("GET", "/no/such/path", None),
        ("GET", "/health", None),
    ):
        response = await http.request(method, path, json=payload)
        assert len(response.headers.get("x-request-id", "")) == 32, (path, response.headers)


async def test_pool_errors_map_to_statuses_with_the_old_error_body(
    http: httpx.AsyncClient, pool: Pool, provider: FakeProviderProcess, aredis: aioredis.Redis
) -> None:
    # invalid_request found by the worker (an unknown group): 400 with the pool's message.
    response = await http.post("/complete", json=body(model="no-such-group"))
    assert response.status_code == 400 and list(response.json()) == ["error"]
    assert response.json() == {"error": "model: unknown model group (known groups: fast, quality)"}
    # invalid_request found before enqueueing: 400, nothing enqueued.
    calls = provider_calls(provider)
    response = await http.post("/complete", json=body(tenant_id="not-a-uuid"))
    assert response.status_code == 400 and response.json() == {
        "error": "tenant_id: Value error, must be a UUID"
    }
    assert provider_calls(provider) == calls
    # providers_unavailable: 503 and the old body, byte for byte.
    provider.configure_deployments(DEPLOYMENTS, fault="500")
    response = await http.post("/complete", json=body())
    assert response.status_code == 503 and response.content == b'{"error":"All providers unavailable"}'
    # ... and in a stream: 200 (the stream had begun), then the old error line (plus its code).
    read = await read_stream(http, body())
    assert read.status == 200 and read.lines == [
        b'{"type": "error", "message": "All providers unavailable", "code": "providers_unavailable"}\n'
    ]
    provider.reset()
    # cancelled (by an operator, mid-answer): 409.
    provider.configure_deployments(DEPLOYMENTS, "fast", token_delay_ms=100, tokens=50)
    request_id = uuid.uuid4().hex
    pending = asyncio.ensure_future(http.post("/complete", json=body(), headers={"X-Request-Id": request_id}))
    await wait_for_key(aredis, f"arq:in-progress:{request_id}", timeout_s=10)
    done = pool.run_module("llm_pool.cli", "cancel", request_id)
    assert done.returncode == 0, done.stderr
    response = await pending
    assert response.status_code == 409 and "cancel" in response.json()["error"]


# --- POST /complete/stream --------------------------------------------------------------------


async def test_stream_is_ndjson_flushed_per_chunk_as_the_channel_delivers_it(
    http: httpx.AsyncClient, pool: Pool, provider: FakeProviderProcess, aredis: aioredis.Redis
) -> None:
    provider.configure_deployments(DEPLOYMENTS, "fast", token_delay_ms=40)
    lags_ms = []
    for _ in range(5):
        request_id = uuid.uuid4().hex
        pubsub = await subscribed(aredis, pool.keys.stream(request_id))
        try:
            channel = asyncio.ensure_future(first_chunk_on_channel(pubsub, time.perf_counter() + 30))
            read = await read_stream(http, body(), request_id)
            first_on_channel = await channel
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        assert read.status == 200 and read.headers["content-type"] == "application/x-ndjson"
        assert read.headers["x-request-id"] == request_id and read.rest == b""
        # One JSON object per line, in the old service's bytes.
        assert read.lines == [
            *(f'{{"type": "chunk", "text": "tok{i} "}}\n'.encode() for i in range(8)),
            b'{"type": "done"}\n',
        ]
        # Flushed per chunk: the lines arrive as the provider's tokens do (40 ms apart), not at once.
        assert read.times[7] - read.times[0] >= 7 * 0.040 * 0.7, read.times
        lags_ms.append((read.times[0] - first_on_channel) * 1000)
    # Time to the first line, after the channel's first chunk (both read by this process).
    median = statistics.median(lags_ms)
    print(f"first NDJSON line after the channel's first chunk: {[round(x, 2) for x in lags_ms]} ms")
    assert median <= 5 and max(lags_ms) <= 30, lags_ms


async def test_stream_takes_tools_and_ends_with_done_carrying_the_tool_calls(http: httpx.AsyncClient) -> None:
    read = await read_stream(
        http, body(model="quality", messages=user("weather in Paris"), tools=[WEATHER_TOOL])
    )
    assert read.status == 200
    *chunks, done = read.events
    assert all(event["type"] == "chunk" for event in chunks)
    assert list(done) == ["type", "tool_calls"] and done["type"] == "done"
    [call] = done["tool_calls"]
    assert (
        call["function"]["name"] == "get_weather"
        and json.loads(call["function"]["arguments"])["city"] == "Paris"
    )


async def test_a_client_that_goes_away_cancels_its_request(
    http: httpx.AsyncClient, pool: Pool, provider: FakeProviderProcess, aredis: aioredis.Redis
) -> None:
    provider.configure_deployments(DEPLOYMENTS, "fast", token_delay_ms=100, tokens=200)
    before = sum(stats["disconnects"] for stats in provider.stats().values())
    request_id = uuid.uuid4().hex
    started = time.perf_counter()
    read = await read_stream(http, body(), request_id, stop_after=2)  # then the connection closes
    assert [event["type"] for event in read.events] == ["chunk", "chunk"]
    raw = await wait_for_key(aredis, pool.keys.reply(request_id), timeout_s=10)
    reply = decode(raw)
    assert reply["status"] == "error" and reply["error"]["code"] == "cancelled", reply
    took = time.perf_counter() - started
    assert took < 5, f"cancelled {took:.1f} s after the start of a 20 s answer"
    # The worker stopped the provider's answer: the provider saw its connection closed.
    deadline = time.monotonic() + 5
    while sum(stats["disconnects"] for stats in provider.stats().values()) == before:
        assert time.monotonic() < deadline, provider.stats()
        await asyncio.sleep(0.05)


async def test_a_stream_read_to_its_end_cancels_nothing(
    http: httpx.AsyncClient, pool: Pool, aredis: aioredis.Redis
) -> None:
    request_id = uuid.uuid4().hex
    read = await read_stream(http, body(), request_id)
    assert read.events[-1] == {"type": "done"}
    await asyncio.sleep(0.3)
    assert not await aredis.exists(pool.keys.cancel(request_id))


async def test_100_concurrent_streams(http: httpx.AsyncClient) -> None:
    started = time.perf_counter()
    reads = await asyncio.gather(*[read_stream(http, body()) for _ in range(100)])
    took = time.perf_counter() - started
    print(f"100 concurrent streams through the front door in {took:.2f} s")
    for read in reads:
        assert read.status == 200 and read.rest == b""
        *chunks, done = read.events
        assert done == {"type": "done"} and "".join(c["text"] for c in chunks) == EXPECTED_TEXT
    assert len({read.headers["x-request-id"] for read in reads}) == 100


# --- malformed bodies ---------------------------------------------------------------------------

MALFORMED: list[tuple[bytes, int, str]] = [
    (b"", 422, "the body is missing: send a JSON object with model, messages and tenant_id"),
    (b"not json", 422, "the body is not valid JSON"),
    (b'{"model": "fast",', 422, "the body is not valid JSON"),
    (b"[1, 2]", 422, "body: Input should be a valid dictionary"),
    (b"{}", 422, "model: Field required; messages: Field required; tenant_id: Field required"),
    (json.dumps(body(messages="hi")).encode(), 422, "messages: Input should be a valid list"),
    (json.dumps(body(messages=[1])).encode(), 422, "messages.0: Input should be a valid dictionary"),
    (json.dumps(body(model=5)).encode(), 422, "model: Input should be a valid string"),
    (json.dumps(body(tools="x")).encode(), 422, "tools: Input should be a valid list"),
    (json.dumps(body(messages=[])).encode(), 400, "messages: List should have at least 1 item"),
    (json.dumps(body(messages=[{"role": "robot", "content": "x"}])).encode(), 400, "messages.0.role"),
    (json.dumps(body(tools=[{"type": "nope"}])).encode(), 400, "tools.0"),
    (json.dumps(body(tenant_id="x")).encode(), 400, "tenant_id: Value error, must be a UUID"),
    (b'{"model": "fast", "messages": [{"role": "user", "content": "\xff"}]}', 400, "error parsing the body"),
]


@pytest.mark.parametrize("path", ["/complete", "/complete/stream"])
async def test_malformed_bodies_get_a_clear_4xx_never_a_500(
    http: httpx.AsyncClient, provider: FakeProviderProcess, path: str
) -> None:
    calls = provider_calls(provider)
    for raw, status, says in MALFORMED:
        response = await http.post(path, content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == status, (raw, response.status_code, response.text)
        answer = response.json()
        assert says in answer["error"], (raw, answer)
        assert "\xff" not in answer["error"] and "robot" not in answer["error"]  # no values echoed
    assert provider_calls(provider) == calls  # none of them reached a provider


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_over_the_payload_limit_is_413_before_it_is_read(
    http: httpx.AsyncClient, pool: Pool, chunked: bool
) -> None:
    limit = pool.settings.worker.max_payload_bytes
    raw = json.dumps(body(messages=[{"role": "user", "content": "x" * limit}])).encode()

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 65536):
            yield raw[start : start + 65536]

    content: bytes | AsyncIterator[bytes] = pieces() if chunked else raw
    response = await http.post("/complete", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json() == {"error": f"the body is over {limit} bytes (worker.max_payload_bytes)"}
    assert response.headers["x-request-id"]


# --- GET /health ----------------------------------------------------------------------------------


async def test_health_is_ok_while_a_worker_beats(http: httpx.AsyncClient) -> None:
    response = await http.get("/health")
    assert response.status_code == 200 and response.content == b'{"status":"ok"}'


async def test_health_is_503_with_no_worker(tmp_path: Path, provider: FakeProviderProcess) -> None:
    idle = Pool(tmp_path, provider)  # a prefix of its own, no worker
    door = start_front_door(idle, tmp_path / "front-door.log")
    try:
        async with httpx.AsyncClient(base_url=door.url) as http:
            response = await http.get("/health")
        assert response.status_code == 503
        assert response.json() == {
            "status": "unavailable",
            "detail": f"no live workers on {idle.keys.queue} (no {idle.keys.heartbeat_pattern} key)",
        }
    finally:
        stop_cleanly(door)
        cleanup(idle)
