"""JSON Schemas of protocol v1, generated from the pydantic models in ``llm_pool/schemas.py``.

``python -m llm_pool.schema_export`` writes ``docs/schemas/{request,reply,event,heartbeat}.json``;
``--check`` writes nothing and exits 1, naming the stale files, when a model changed and the
checked-in schemas did not. ``docs/protocol.md`` says which Redis key or channel holds each.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

from llm_pool.schemas import EVENT_ADAPTER, REPLY_ADAPTER, CompletionRequest, Heartbeat

PROTOCOL_VERSION = "v1"
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "docs" / "schemas"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
COMMAND = "python -m llm_pool.schema_export"


class _Written(GenerateJsonSchema):
    """Schemas of what workers write: ``model_dump_json`` writes every field, defaults included,
    so every property is required."""

    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        return True


# name -> (title, description, the model's schema). Requests are what callers send (validation
# mode: optional fields may be left out); replies, events and heartbeats are what workers write
# (serialization mode: every field is always present).
SCHEMAS: dict[str, tuple[str, str, Callable[[], dict[str, Any]]]] = {
    "request": (
        "CompletionRequest",
        "The single positional argument of the arq jobs `complete` and `complete_stream` "
        "(protocol section 1.2).",
        lambda: CompletionRequest.model_json_schema(mode="validation"),
    ),
    "reply": (
        "Reply",
        "The value of the reply key P:reply:{request_id}, and `r` of arq's result (section 2).",
        lambda: REPLY_ADAPTER.json_schema(mode="serialization", schema_generator=_Written),
    ),
    "event": (
        "StreamEvent",
        "One pub-sub message on a request's channel: chunk, done, error or reset (section 3).",
        lambda: EVENT_ADAPTER.json_schema(mode="serialization", schema_generator=_Written),
    ),
    "heartbeat": (
        "Heartbeat",
        "The value of P:heartbeat:{worker_id} (section 4).",
        lambda: Heartbeat.model_json_schema(mode="serialization", schema_generator=_Written),
    ),
}


def schema(name: str) -> dict[str, Any]:
    """The complete JSON Schema document named ``name``."""
    title, description, generate = SCHEMAS[name]
    body = generate()
    body.pop("title", None)
    body.pop("description", None)
    return {
        "$schema": DIALECT,
        "$id": f"llm-pool/protocol/{PROTOCOL_VERSION}/{name}.json",
        "title": f"llm-pool protocol {PROTOCOL_VERSION}: {title}",
        "description": description,
        **body,
    }


def render(name: str) -> str:
    return json.dumps(schema(name), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def stale(directory: Path = SCHEMA_DIR) -> list[Path]:
    """The schema files under ``directory`` that are missing or differ from the models."""
    return [
        directory / f"{name}.json"
        for name in SCHEMAS
        if not (directory / f"{name}.json").is_file()
        or (directory / f"{name}.json").read_text(encoding="utf-8") != render(name)
    ]


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema file; the ones that changed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = stale(directory)
    for path in changed:
        path.write_text(render(path.stem), encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description="Write the JSON Schemas of the protocol's request, reply, events and heartbeat "
        "(generated from llm_pool/schemas.py) into docs/schemas/.",
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is stale")
    parser.add_argument(
        "--dir", type=Path, default=SCHEMA_DIR, help="output directory (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.check:
        outdated = stale(args.dir)
        for path in outdated:
            print(f"stale: {path} (run `{COMMAND}`)", file=sys.stderr)
        return 1 if outdated else 0
    for path in write(args.dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
