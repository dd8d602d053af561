"""docs/schemas/*.json are the pydantic models' schemas, checked in, and they describe real values."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]  # via LiteLLM, no stubs

from llm_pool import schema_export
from llm_pool.schemas import (
    ChunkEvent,
    ErrorCode,
    ErrorInfo,
    ErrorReply,
    OkReply,
    ResetEvent,
    Usage,
    final_event,
    to_json,
)
from tests.helpers import Pool, sync_get

ROOT = Path(__file__).resolve().parents[1]


def validator(name: str) -> Draft202012Validator:
    document = json.loads((schema_export.SCHEMA_DIR / f"{name}.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(document)
    return Draft202012Validator(document)


def test_checked_in_schemas_match_the_models() -> None:
    outdated = schema_export.stale()
    assert not outdated, (
        f"{', '.join(str(p.relative_to(ROOT)) for p in outdated)} out of date with llm_pool/schemas.py: "
        f"run `{schema_export.COMMAND}` and commit docs/schemas/"
    )


def test_check_mode_fails_on_a_stale_file_and_writing_fixes_it(tmp_path: Path) -> None:
    assert schema_export.main(["--check", "--dir", str(tmp_path)]) == 1  # nothing there yet
    assert schema_export.main(["--dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.json" for n in schema_export.SCHEMAS)
    assert schema_export.main(["--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "reply.json").write_text("{}\n")
    assert schema_export.stale(tmp_path) == [tmp_path / "reply.json"]


def test_the_protocol_document_links_every_schema() -> None:
    protocol = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    for name in schema_export.SCHEMAS:
        assert f"schemas/{name}.json" in protocol


REQUEST: dict[str, Any] = {
    "model": "fast",
    "messages": [{"role": "user", "content": "hi"}],
    "tenant_id": str(uuid.uuid4()),
    "params": {"temperature": 0.5, "max_tokens": 10},
    "metadata": {"trace": "x"},
}


@pytest.mark.parametrize(
    ("change", "valid"),
    [
        ({}, True),
        ({"timeout_s": 30}, True),
        ({"surprise": 1}, False),  # unknown fields are refused at every level
        ({"params": {"temperature": 3}}, False),
        ({"messages": []}, False),
        ({"metadata": {"n": 1}}, False),
    ],
)
def test_request_schema_accepts_and_refuses_like_the_model(change: dict[str, Any], valid: bool) -> None:
    assert validator("request").is_valid({**REQUEST, **change}) is valid


def test_what_workers_write_matches_the_output_schemas() -> None:
    usage = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5, cost_usd=0.001)
    ok = OkReply(
        request_id="r1",
        content="hello",
        finish_reason="stop",
        model="fast",
        served_by="ollama_chat/llama3.2",
        fallback=False,
        usage=usage,
        attempt=1,
        latency_ms=12,
    )
    failed = ErrorReply(request_id="r2", error=ErrorInfo(code=ErrorCode.TIMEOUT, message="late"))
    replies, events = validator("reply"), validator("event")
    for reply in (ok, failed):
        assert replies.is_valid(json.loads(to_json(reply)))
        assert events.is_valid(json.loads(to_json(final_event(reply))))
    for event in (ChunkEvent(text="he", request_id="r1", seq=0), ResetEvent(request_id="r1", attempt=2)):
        assert events.is_valid(json.loads(to_json(event)))
    assert not replies.is_valid({**json.loads(to_json(ok)), "status": "maybe"})
    assert not events.is_valid({"type": "chunk", "request_id": "r1"})  # no text, no seq


@pytest.mark.e2e
def test_a_running_workers_heartbeat_matches_its_schema(pool: Pool, redis_sync: redis.Redis) -> None:
    raw = sync_get(redis_sync, pool.keys.heartbeat(pool.workers[0].worker_id))
    assert raw is not None, "the session pool's first worker has no heartbeat key"
    errors = [e.message for e in validator("heartbeat").iter_errors(json.loads(raw))]
    assert not errors, errors
