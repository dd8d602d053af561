"""Request validation (contract section 1) and the job envelope decoder."""

from __future__ import annotations

import json
import pickle
import sys
import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from llm_pool.keys import Keys
from llm_pool.schemas import (
    CompletionRequest,
    ErrorCode,
    ErrorInfo,
    ErrorReply,
    describe_validation_error,
    to_json,
)
from llm_pool.serialization import UndecodableJob, decode_job, json_dumps

TENANT = str(uuid.uuid4())


def valid(**extra: Any) -> dict[str, Any]:
    return {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "tenant_id": TENANT, **extra}


def test_full_request_is_accepted_and_passed_to_the_provider() -> None:
    request = CompletionRequest.model_validate(
        valid(
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            tool_choice={"type": "function", "function": {"name": "f"}},
            channel="ws:1",
            params={"temperature": 0.2, "max_tokens": 5, "stop": ["\n"], "seed": 1},
            timeout_s=3,
            metadata={"conversation_id": "c"},
        )
    )
    kwargs = request.provider_kwargs()
    assert kwargs["temperature"] == 0.2 and kwargs["max_tokens"] == 5 and kwargs["seed"] == 1
    assert kwargs["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert kwargs["messages"] == [{"role": "user", "content": "hi"}]
    assert "metadata" not in kwargs and "channel" not in kwargs and "tenant_id" not in kwargs


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        (valid(extra=1), "extra"),
        (valid(params={"logit_bias": {}}), "params.logit_bias"),
        (valid(messages=[]), "messages"),
        (valid(tenant_id="acme"), "tenant_id"),
        (valid(timeout_s="5"), "timeout_s"),
        (valid(metadata={"a": 1}), "metadata.a"),
        (valid(messages=[{"role": "user", "content": "hi", "secret": "x"}]), "messages.0.secret"),
    ],
)
def test_invalid_requests_name_the_field(payload: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as info:
        CompletionRequest.model_validate(payload)
    assert where in describe_validation_error(info.value)


def test_validation_messages_never_echo_values() -> None:
    prompt = "my-private-prompt"
    with pytest.raises(ValidationError) as info:
        CompletionRequest.model_validate(valid(messages=[{"role": "wizard", "content": prompt}]))
    assert prompt not in describe_validation_error(info.value)


def test_decode_job_accepts_plain_arq_json() -> None:
    envelope = {"f": "complete_stream", "a": [valid()], "k": {}, "t": 7, "et": 123}
    decoded = decode_job(json.dumps(envelope).encode())
    assert decoded == {"f": "complete_stream", "a": [valid()], "k": {}, "t": None, "et": 123}


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xfe",
        pickle.dumps({"f": "complete", "a": [], "k": {}, "t": 1, "et": 1}),
        b'"just a string"',
        json.dumps({"f": "os.system", "a": [], "k": {}}).encode(),
        json.dumps({"f": "complete", "a": {}, "k": {}}).encode(),
    ],
)
def test_decode_job_turns_garbage_into_an_invalid_call(data: bytes) -> None:
    decoded = decode_job(data)
    assert decoded["f"] == "complete"
    assert isinstance(decoded["a"][0], UndecodableJob)
    # and the result that arq stores for it is still JSON
    assert json.loads(json_dumps({"a": decoded["a"]}))["a"][0]["undecodable_job"]


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("request_overrides", "reason"),
    [
        ({"metadata": {"deep": nested(1000)}}, "nested"),
        ({"params": {"response_format": nested(10_000)}}, "nested"),
        ({"params": {"response_format": {"type": "json_schema", "schema": nested(70)}}}, "nested"),
        ({"metadata": {"conversation_id": "\ud800"}}, "surrogate"),
        ({"model": "\udfff-unknown"}, "surrogate"),
    ],
)
def test_decode_job_refuses_what_it_could_not_answer(request_overrides: dict[str, Any], reason: str) -> None:
    envelope = {"f": "complete", "a": [valid(**request_overrides)], "k": {}, "t": 1, "et": 1}
    sys.setrecursionlimit(20_000)  # so that json.dumps can write the deepest case
    try:
        data = json.dumps(envelope).encode()
    finally:
        sys.setrecursionlimit(1000)
    [argument] = decode_job(data)["a"]
    assert isinstance(argument, UndecodableJob) and reason in argument.reason


def test_decode_job_accepts_escaped_backslashes_and_real_pairs() -> None:
    text = "a literal \\ud800 and an emoji \U0001f600"
    envelope = {"f": "complete", "a": [valid(messages=[{"role": "user", "content": text}])], "k": {}, "et": 1}
    assert decode_job(json.dumps(envelope).encode())["a"][0]["messages"][0]["content"] == text


def test_to_json_never_fails_on_a_lone_surrogate() -> None:
    reply = ErrorReply(
        request_id="r", error=ErrorInfo(code=ErrorCode.INTERNAL, message="m"), metadata={"k": "a\ud800b"}
    )
    assert json.loads(to_json(reply))["metadata"] == {"k": "a?b"}


def test_channels_must_match_an_allowed_pattern() -> None:
    keys = Keys("pool1")
    default = ["{prefix}:stream:*"]
    assert keys.channel_allowed("pool1:stream:abc", default)
    assert not keys.channel_allowed("other_pool:stream:victim", default)
    assert not keys.channel_allowed("pool1:wake", default)
    assert keys.channel_allowed("ws:42", [*default, "ws:*"])


async def test_the_client_refuses_what_the_worker_would() -> None:
    from llm_pool.client import InvalidRequestError, LLMPool
    from llm_pool.settings import Settings

    pool = LLMPool(Settings(), redis_url="redis://127.0.0.1:1/0")  # never connects: nothing is sent
    try:
        messages = [{"role": "user", "content": "hi"}]
        tenant = str(uuid.uuid4())
        cases: list[tuple[dict[str, Any], str]] = [
            ({"request_id": "r" * 129}, "request_id"),
            ({"channel": "other_pool:stream:x"}, "channel"),
            ({"metadata": {"k": "\ud800"}}, "surrogate"),
            ({"params": {"response_format": nested(100)}}, "nested"),
        ]
        for options, reason in cases:
            with pytest.raises(InvalidRequestError, match=reason):
                pool._build_request("fast", messages, tenant, **options)
        request_id, _ = pool._build_request("fast", messages, tenant, request_id="r" * 128)
        assert request_id == "r" * 128
    finally:
        await pool.close()
