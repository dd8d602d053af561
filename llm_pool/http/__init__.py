"""The HTTP front door: the old "LLM Backend Pool" service's API (``POST /complete``, ``POST
/complete/stream``, ``GET /health``) answered through ``LLMPool``; ``llm-pool serve-http``.

It needs the ``http`` extra (FastAPI, uvicorn); nothing else in the package imports this
subpackage's modules, so workers and ``import llm_pool`` do without it. docs/http.md documents it.

    models.py      the request and response shapes (pydantic), NDJSON lines
    errors.py      error codes and client exceptions -> HTTP status and body
    request_id.py  X-Request-Id on every response (ASGI middleware), one log line per request
    relay.py       a request's events -> NDJSON, cancelling the request when the client goes away
    app.py         the FastAPI application
    server.py      uvicorn, for ``llm-pool serve-http``
"""

from __future__ import annotations

import importlib.util

EXTRA = "http"
REQUIRED_MODULES = ("fastapi", "uvicorn")


def missing_modules() -> list[str]:
    """The modules of the ``http`` extra that are not installed (without importing any of them)."""
    return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]
