"""JSON for arq's job envelopes and results (contract section 1): nothing is ever unpickled.

Callers use ``json_dumps``/``json.loads``. Workers use ``decode_job``, which never raises: an
envelope it cannot read becomes a call of ``complete`` with an ``UndecodableJob`` argument, so the
job function can answer ``invalid_request`` under the job id instead of arq failing it silently.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

JOB_FUNCTIONS = ("complete", "complete_stream")

# JSON nested deeper than this is refused (Python's own parser gives up near 1,000 levels, and
# deep structures make every later step recursive).
MAX_JSON_DEPTH = 64
# A JSON escape of a UTF-16 surrogate: the only way a lone surrogate, which is not valid Unicode
# and cannot be written back as UTF-8, gets into a decoded envelope.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class UndecodableJob:
    """Stands in for the arguments of a job whose envelope could not be decoded."""

    reason: str


def _default(obj: object) -> Any:
    if isinstance(obj, UndecodableJob):
        return {"undecodable_job": obj.reason}
    if isinstance(obj, BaseException):
        return {"exception": type(obj).__name__}
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def json_dumps(obj: Any) -> bytes:
    """arq ``job_serializer``: UTF-8 JSON."""
    return json.dumps(obj, separators=(",", ":"), default=_default).encode()


def json_loads(data: bytes | str) -> Any:
    """arq ``job_deserializer`` for callers reading results."""
    return json.loads(data)


def _invalid(reason: str) -> dict[str, Any]:
    return {"f": "complete", "a": [UndecodableJob(reason)], "k": {}, "t": None, "et": int(time.time() * 1000)}


def json_problem(value: Any, check_surrogates: bool = True) -> str | None:
    """Why decoded JSON cannot be handled (nested too deep, a lone surrogate), or None."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if check_surrogates and not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return "the job contains a lone UTF-16 surrogate (\\ud800-\\udfff), which is not Unicode"
            continue
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        if children and depth >= MAX_JSON_DEPTH:
            return f"the job is nested more than {MAX_JSON_DEPTH} levels deep"
        stack.extend((child, depth + 1) for child in children)
        if isinstance(item, dict):
            stack.extend((key, depth + 1) for key in item)
    return None


def decode_job(data: bytes) -> dict[str, Any]:
    """arq ``job_deserializer`` for workers: a well-formed envelope, or one that reports why not."""
    try:
        envelope = json.loads(data)
    except RecursionError:
        return _invalid(f"the job is nested more than {MAX_JSON_DEPTH} levels deep")
    except (ValueError, UnicodeDecodeError):
        return _invalid(
            "the job envelope is not UTF-8 JSON (is the caller using arq's default pickle serializer?)"
        )
    problem = json_problem(envelope, check_surrogates=_SURROGATE_ESCAPE.search(data) is not None)
    if problem is not None:
        return _invalid(problem)
    if not isinstance(envelope, dict):
        return _invalid("the job envelope is not a JSON object")
    function = envelope.get("f")
    if function not in JOB_FUNCTIONS:
        return _invalid(f"unknown job function; expected one of {', '.join(JOB_FUNCTIONS)}")
    args, kwargs = envelope.get("a"), envelope.get("k")
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return _invalid("the job envelope's arguments are malformed")
    enqueued = envelope.get("et")
    return {
        "f": function,
        "a": args,
        "k": kwargs,
        # A caller-set try count could push arq past max_tries, failing the job with no reply.
        "t": None,
        "et": enqueued
        if isinstance(enqueued, int) and not isinstance(enqueued, bool)
        else int(time.time() * 1000),
    }
