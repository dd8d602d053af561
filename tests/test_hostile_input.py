"""Every job is untrusted: size limits, and generated payloads judged by an oracle written from the
contract (section 1.2), not by ``CompletionRequest``: 1,000 it refuses at a live worker (e2e), and in
this process both ways, so a schema that accepts too much or refuses too much fails here."""

from __future__ import annotations

import asyncio
import json
import string
import time
import uuid
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_pool.client import InvalidRequestError, LLMPool
from llm_pool.settings import Settings
from tests.helpers import REDIS_URL, TENANT, Pool, run_plain, user
from tests.plain import plain_arq
from tests.support.inprocess import InProcessWorker

VALID: dict[str, Any] = {"model": "fast", "messages": user(), "tenant_id": TENANT}
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)

# --- the oracle: contract section 1.2, written out independently of llm_pool.schemas ----------------
#
# It answers "does the contract refuse this request object?" and names the rule. Where the contract
# is silent it does not refuse: an optional field (or optional key of a nested object) given as
# null counts as absent, and a message may leave out ``content`` (it may be null). Payloads it
# refuses must get ``invalid_request``; payloads it accepts must not (both run in this process).

REQUEST_FIELDS = {"model", "messages", "tenant_id", "tools", "tool_choice", "channel", "params", "timeout_s"}
REQUEST_FIELDS |= {"metadata"}
REQUIRED_FIELDS = ("model", "messages", "tenant_id")
ROLES = ("system", "user", "assistant", "tool")
TOOL_NAME_CHARS = set(string.ascii_letters + string.digits + "_-")
FIELDS = [*sorted(REQUEST_FIELDS), "temperature", "stream", "api_key", "__class__"]


@dataclass(frozen=True)
class Limits:
    """What the contract leaves to settings.toml: groups, channel patterns and sizes."""

    groups: frozenset[str]
    allowed_channels: tuple[str, ...]  # glob patterns, ``{prefix}`` already replaced
    max_messages: int
    max_tools: int
    max_timeout_s: float

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        prefix = settings.redis.key_prefix
        worker = settings.worker
        return cls(
            groups=frozenset(settings.groups),
            allowed_channels=tuple(p.replace("{prefix}", prefix) for p in worker.allowed_channels),
            max_messages=worker.max_messages,
            max_tools=worker.max_tools,
            max_timeout_s=worker.max_timeout_s,
        )


def is_number(value: Any) -> bool:
    """A JSON number (an integer counts; a boolean does not)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def unknown_keys(obj: dict[str, Any], allowed: set[str], where: str) -> str | None:
    extra = sorted(set(obj) - allowed)
    return f"{where}: unknown field {extra[0]!r}" if extra else None


def present(obj: dict[str, Any], key: str) -> bool:
    return obj.get(key) is not None


def function_call_violation(call: Any, where: str) -> str | None:
    if not isinstance(call, dict):
        return f"{where}: not an object"
    if problem := unknown_keys(call, {"id", "type", "function"}, where):
        return problem
    if not isinstance(call.get("id"), str):
        return f"{where}.id: not a string"
    if present(call, "type") and call["type"] != "function":
        return f"{where}.type: not 'function'"
    function = call.get("function")
    if not isinstance(function, dict):
        return f"{where}.function: not an object"
    if problem := unknown_keys(function, {"name", "arguments"}, f"{where}.function"):
        return problem
    if not isinstance(function.get("name"), str) or not isinstance(function.get("arguments"), str):
        return f"{where}.function: name and arguments must be strings"
    if function["name"] == "":
        return f"{where}.function.name: empty"
    return None


def message_violation(message: Any, where: str) -> str | None:
    if not isinstance(message, dict):
        return f"{where}: not an object"
    allowed = {"role", "content", "name", "tool_calls", "tool_call_id"}
    if problem := unknown_keys(message, allowed, where):
        return problem
    if message.get("role") not in ROLES or not isinstance(message.get("role"), str):
        return f"{where}.role: not one of {ROLES}"
    content = message.get("content")
    if isinstance(content, list):
        if not all(isinstance(part, dict) and isinstance(part.get("type"), str) for part in content):
            return f"{where}.content: a part without a string type"
    elif content is not None and not isinstance(content, str):
        return f"{where}.content: not a string, a list of parts or null"
    for key in ("name", "tool_call_id"):
        if present(message, key) and not isinstance(message[key], str):
            return f"{where}.{key}: not a string"
    if present(message, "tool_calls"):
        calls = message["tool_calls"]
        if not isinstance(calls, list):
            return f"{where}.tool_calls: not a list"
        for index, call in enumerate(calls):
            if problem := function_call_violation(call, f"{where}.tool_calls.{index}"):
                return problem
    return None


def tool_violation(tool: Any, where: str) -> str | None:
    if not isinstance(tool, dict):
        return f"{where}: not an object"
    if problem := unknown_keys(tool, {"type", "function"}, where):
        return problem
    if tool.get("type") != "function":
        return f"{where}.type: not 'function'"
    function = tool.get("function")
    if not isinstance(function, dict):
        return f"{where}.function: not an object"
    allowed = {"name", "description", "parameters", "strict"}
    if problem := unknown_keys(function, allowed, f"{where}.function"):
        return problem
    name = function.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not set(name) <= TOOL_NAME_CHARS:
        return f"{where}.function.name: not 1-64 characters of A-Za-z0-9_-"
    if present(function, "description") and not isinstance(function["description"], str):
        return f"{where}.function.description: not a string"
    if present(function, "parameters") and not isinstance(function["parameters"], dict):
        return f"{where}.function.parameters: not an object"
    if present(function, "strict") and not isinstance(function["strict"], bool):
        return f"{where}.function.strict: not a boolean"
    return None


def tool_choice_violation(choice: Any) -> str | None:
    if isinstance(choice, str):
        return None if choice in ("none", "auto", "required") else "tool_choice: unknown string"
    if not isinstance(choice, dict):
        return "tool_choice: not a string or an object"
    if problem := unknown_keys(choice, {"type", "function"}, "tool_choice"):
        return problem
    function = choice.get("function")
    if choice.get("type") != "function" or not isinstance(function, dict):
        return "tool_choice: not {type: function, function: {name}}"
    if problem := unknown_keys(function, {"name"}, "tool_choice.function"):
        return problem
    name = function.get("name")
    return None if isinstance(name, str) and name else "tool_choice.function.name: not a non-empty string"


def params_violation(params: Any) -> str | None:
    if not isinstance(params, dict):
        return "params: not an object"
    allowed = {"temperature", "top_p", "max_tokens", "stop", "seed", "response_format"}
    if problem := unknown_keys(params, allowed, "params"):
        return problem
    ranges = {"temperature": 2, "top_p": 1}
    for key, top in ranges.items():
        value = params.get(key)
        if value is not None and not (is_number(value) and 0 <= value <= top):
            return f"params.{key}: not a number from 0 to {top}"
    max_tokens = params.get("max_tokens")
    if max_tokens is not None and not (is_integer(max_tokens) and max_tokens >= 1):
        return "params.max_tokens: not an integer >= 1"
    stop = params.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        return "params.stop: not a string or a list of strings"
    if present(params, "seed") and not is_integer(params["seed"]):
        return "params.seed: not an integer"
    if present(params, "response_format") and not isinstance(params["response_format"], dict):
        return "params.response_format: not an object"
    return None


def contract_violation(payload: Any, limits: Limits) -> str | None:
    """The rule of contract section 1.2 that ``payload`` breaks, or None if it breaks none."""
    if not isinstance(payload, dict):
        return "the request is not an object"
    if problem := unknown_keys(payload, REQUEST_FIELDS, "request"):
        return problem
    for field in REQUIRED_FIELDS:
        if field not in payload:
            return f"{field}: missing"
    model = payload["model"]
    if not isinstance(model, str) or model not in limits.groups:
        return "model: not a configured group"
    messages = payload["messages"]
    if not isinstance(messages, list) or not 1 <= len(messages) <= limits.max_messages:
        return f"messages: not a list of 1 to {limits.max_messages} messages"
    for index, message in enumerate(messages):
        if problem := message_violation(message, f"messages.{index}"):
            return problem
    tenant = payload["tenant_id"]
    try:
        uuid.UUID(tenant)
    except (TypeError, ValueError, AttributeError):
        return "tenant_id: not a UUID"
    if present(payload, "tools"):
        tools = payload["tools"]
        if not isinstance(tools, list) or len(tools) > limits.max_tools:
            return f"tools: not a list of at most {limits.max_tools} tools"
        for index, tool in enumerate(tools):
            if problem := tool_violation(tool, f"tools.{index}"):
                return problem
    if present(payload, "tool_choice") and (problem := tool_choice_violation(payload["tool_choice"])):
        return problem
    if present(payload, "channel"):
        channel = payload["channel"]
        if not isinstance(channel, str) or not 1 <= len(channel) <= 512:
            return "channel: not a string of 1-512 characters"
        if not any(fnmatchcase(channel, pattern) for pattern in limits.allowed_channels):
            return "channel: not an allowed channel"
    if present(payload, "params") and (problem := params_violation(payload["params"])):
        return problem
    if present(payload, "timeout_s"):
        timeout = payload["timeout_s"]
        if not (is_number(timeout) and 0 < timeout <= limits.max_timeout_s):
            return f"timeout_s: not a number above 0 and at most {limits.max_timeout_s:g}"
    if present(payload, "metadata"):
        metadata = payload["metadata"]
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            return "metadata: not an object of strings"
    return None


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


def accepted(limits: Limits) -> st.SearchStrategy[dict[str, Any]]:
    """Requests within every rule of contract section 1.2, up to its limits, optional fields
    absent, null or set (drawn from the contract's own description of each field)."""
    text = st.text(max_size=20)
    names = st.text(alphabet=sorted(TOOL_NAME_CHARS), min_size=1, max_size=64)
    tool_call = st.fixed_dictionaries(
        {
            "id": text,
            "type": st.just("function"),
            "function": st.fixed_dictionaries({"name": names, "arguments": text}),
        }
    )
    part = st.fixed_dictionaries({"type": st.just("text"), "text": text})
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(ROLES), "content": st.none() | text | st.lists(part, max_size=2)},
        optional={"name": st.none() | text, "tool_calls": st.none() | st.lists(tool_call, max_size=2)},
    )
    function = st.fixed_dictionaries(
        {"name": names},
        optional={
            "description": st.none() | text,
            "parameters": st.none() | st.just({"type": "object", "properties": {}}),
            "strict": st.none() | st.booleans(),
        },
    )
    tool = st.fixed_dictionaries({"type": st.just("function"), "function": function})
    params = st.fixed_dictionaries(
        {},
        optional={
            "temperature": st.none() | st.floats(0, 2) | st.integers(0, 2),
            "top_p": st.none() | st.floats(0, 1) | st.integers(0, 1),
            "max_tokens": st.none() | st.integers(1, 100_000),
            "stop": st.none() | text | st.lists(text, max_size=3),
            "seed": st.none() | st.integers(-(2**31), 2**31),
            "response_format": st.none() | st.just({"type": "text"}),
        },
    )
    channels = [p.replace("*", "") for p in limits.allowed_channels if p.endswith("*")]
    optional: dict[str, st.SearchStrategy[Any]] = {
        "tools": st.none() | st.lists(tool, max_size=limits.max_tools),
        "tool_choice": st.none()
        | st.sampled_from(["none", "auto", "required"])
        | names.map(lambda n: {"type": "function", "function": {"name": n}}),
        "channel": st.none() | st.builds(str.__add__, st.sampled_from(channels), st.text(max_size=30)),
        "params": st.none() | params,
        "timeout_s": st.none()
        | st.floats(1, limits.max_timeout_s)
        | st.integers(1, int(limits.max_timeout_s)),
        "metadata": st.none() | st.dictionaries(text, text, max_size=3),
    }
    required = {
        "model": st.sampled_from(sorted(limits.groups & {"fast"})),
        "messages": st.lists(message, min_size=1, max_size=limits.max_messages),
        "tenant_id": st.uuids().map(str) | st.uuids().map(lambda u: u.hex.upper()),
    }
    return st.fixed_dictionaries(required, optional=optional)


def generate(count: int, strategy: st.SearchStrategy[Any]) -> list[Any]:
    """``count`` examples of ``strategy``, as hypothesis draws them."""
    found: list[Any] = []

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(payload: Any) -> None:
        found.append(payload)

    collect()
    return found


def near_misses(limits: Limits) -> st.SearchStrategy[dict[str, Any]]:
    """Valid requests with one value just outside a rule of contract section 1.2: a limit crossed
    by a little, a near-right spelling, a field one level down that does not exist."""
    over = st.floats(min_value=1e-6, max_value=10)
    below_zero = st.floats(max_value=0, exclude_max=True, allow_infinity=False, allow_nan=False)
    tool = {"type": "function", "function": {"name": "lookup"}}
    message = {"role": "user", "content": "hi"}
    name_chars = st.characters(exclude_characters="".join(TOOL_NAME_CHARS), exclude_categories=["Cs"])
    changes: list[st.SearchStrategy[dict[str, Any]]] = [
        st.builds(lambda x: {"model": "fast" + x}, st.text(min_size=1, max_size=3)),
        st.just({"model": "f" * 129}),
        st.just({"messages": []}),
        st.just({"messages": [message] * (limits.max_messages + 1)}),
        st.sampled_from(["User", "function", "developer", ""]).map(
            lambda r: {"messages": [{"role": r, "content": "hi"}]}
        ),
        st.sampled_from([["hi"], [{"text": "hi"}], [{"type": 1}]]).map(
            lambda c: {"messages": [{"role": "user", "content": c}]}
        ),
        st.just({"messages": [{**message, "weight": 1}]}),
        st.just({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}]}),
        st.just(
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "type": "function", "function": {"name": "", "arguments": ""}}
                        ],
                    }
                ]
            }
        ),
        st.just({"tool_choice": {"type": "function", "function": {"name": ""}}}),
        st.sampled_from(["acme", TENANT + "0", TENANT[:-1]]).map(lambda t: {"tenant_id": t}),
        st.just({"tools": [tool] * (limits.max_tools + 1)}),
        st.just({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}),
        name_chars.map(lambda c: {"tools": [{"type": "function", "function": {"name": f"look{c}up"}}]}),
        st.just({"tools": [{"type": "function", "function": {"name": "f", "returns": {}}}]}),
        st.just({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}),
        st.sampled_from(["any", "None", {"type": "function"}]).map(lambda c: {"tool_choice": c}),
        st.just({"channel": ""}),
        st.just({"channel": "ws:" + "x" * 510}),
        st.sampled_from(["WS:1", "other:stream:1", " ws:1"]).map(lambda c: {"channel": c}),
        over.map(lambda x: {"params": {"temperature": 2 + x}}),
        below_zero.map(lambda x: {"params": {"temperature": x}}),
        over.map(lambda x: {"params": {"top_p": 1 + x}}),
        st.sampled_from([0, -1, 1.5, True, "5"]).map(lambda v: {"params": {"max_tokens": v}}),
        st.sampled_from([1.5, "1", True]).map(lambda v: {"params": {"seed": v}}),
        st.sampled_from([[1], ["a", None], 3]).map(lambda v: {"params": {"stop": v}}),
        st.sampled_from(["json", ["json"]]).map(lambda v: {"params": {"response_format": v}}),
        st.sampled_from(["frequency_penalty", "logit_bias", "n"]).map(lambda k: {"params": {k: 1}}),
        st.sampled_from([0, "5", True]).map(lambda v: {"timeout_s": v}),
        below_zero.map(lambda v: {"timeout_s": v}),
        over.map(lambda x: {"timeout_s": limits.max_timeout_s + x}),
        st.sampled_from([{"k": 1}, {"k": ["v"]}, {"k": True}, ["k"]]).map(lambda m: {"metadata": m}),
    ]
    return st.one_of(changes).map(lambda change: {**VALID, **change})


def refused(limits: Limits) -> st.SearchStrategy[Any]:
    """Malformed payloads and near misses that the oracle refuses."""
    return (malformed() | near_misses(limits)).filter(
        lambda payload: contract_violation(payload, limits) is not None
    )


@pytest.mark.e2e
async def test_thousand_malformed_payloads_at_a_live_worker(pool: Pool) -> None:
    payloads = generate(1100, refused(Limits.of(pool.settings)))[:1000]
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


@pytest.mark.e2e
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


@pytest.mark.e2e
async def test_client_validates_before_enqueueing(client: LLMPool, pool: Pool) -> None:
    with pytest.raises(InvalidRequestError, match="tenant_id"):
        await client.submit("fast", user(), "not-a-uuid")
    with pytest.raises(InvalidRequestError, match=r"params\.logit_bias"):
        await client.submit("fast", user(), TENANT, params={"logit_bias": {}})


async def test_the_worker_refuses_what_the_contract_refuses(inproc: InProcessWorker) -> None:
    limits = Limits.of(inproc.settings)
    payloads = generate(200, refused(limits))
    assert len(payloads) >= 150, len(payloads)
    accepted_by_the_worker = []
    for index, payload in enumerate(payloads):
        reply = await inproc.execute(payload, stream=index % 2 == 1)
        if reply["status"] != "error" or reply["error"]["code"] != "invalid_request":
            accepted_by_the_worker.append((payload, contract_violation(payload, limits), reply))
    assert accepted_by_the_worker == [], f"{len(accepted_by_the_worker)}: {accepted_by_the_worker[:3]}"


async def test_the_worker_accepts_what_the_contract_accepts(inproc: InProcessWorker) -> None:
    limits = Limits.of(inproc.settings)
    payloads = generate(100, accepted(limits))
    assert len(payloads) >= 60, len(payloads)
    refused_by_the_worker = []
    for index, payload in enumerate(payloads):
        assert contract_violation(payload, limits) is None, payload
        reply = await inproc.execute(payload, stream=index % 2 == 1)
        if reply["status"] != "ok":
            refused_by_the_worker.append((payload, reply))
    assert refused_by_the_worker == [], f"{len(refused_by_the_worker)}: {refused_by_the_worker[:3]}"


def test_every_near_miss_breaks_a_rule() -> None:
    limits = Limits(
        frozenset({"fast"}), ("p:stream:*", "ws:*"), max_messages=3, max_tools=2, max_timeout_s=60
    )
    for payload in generate(200, near_misses(limits)):
        assert contract_violation(payload, limits) is not None, payload


def test_the_oracle_names_the_rule() -> None:
    limits = Limits(frozenset({"fast"}), ("p:stream:*",), max_messages=2, max_tools=1, max_timeout_s=60)
    assert contract_violation(VALID, limits) is None
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": "slow"}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": user() * 3}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, "content"),
        ({"tenant_id": "acme"}, "tenant_id"),
        ({"channel": "ws:1"}, "allowed channel"),
        ({"params": {"temperature": True}}, "temperature"),
        ({"params": {"max_tokens": 0}}, "max_tokens"),
        ({"timeout_s": 61}, "timeout_s"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "name"),
        ({"stream": True}, "unknown field"),
    ]
    for change, rule in cases:
        assert rule in (contract_violation({**VALID, **change}, limits) or ""), change
    accepted = {"channel": "p:stream:r", "timeout_s": 60, "params": {"top_p": 1}, "metadata": None}
    assert contract_violation({**VALID, **accepted}, limits) is None
