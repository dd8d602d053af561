"""Request validation (contract section 1) and the job envelope decoder."""

from __future__ import annotations

import json
import pickle
import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from llm_pool.schemas import CompletionRequest, describe_validation_error
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
