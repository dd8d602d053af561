"""The arq job functions of contract section 1. Each takes whatever the envelope held.

``python -m worker`` runs jobs with ``worker/runner.py``; these functions are what arq itself
calls when it runs a job (``arq worker.settings.WorkerSettings``), and name the job functions.
"""

from __future__ import annotations

from typing import Any

from worker.execution import Execution, JobInfo
from worker.state import WorkerState


def _job(ctx: dict[str, Any]) -> JobInfo:
    enqueue_time = ctx.get("enqueue_time")
    enqueued_ms = int(enqueue_time.timestamp() * 1000) if enqueue_time is not None else 0
    return JobInfo(
        request_id=str(ctx["job_id"]), attempt=int(ctx.get("job_try") or 1), enqueued_ms=enqueued_ms
    )


async def _run(
    ctx: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any], stream: bool
) -> dict[str, Any]:
    state: WorkerState = ctx["state"]
    return await Execution(state, _job(ctx), stream).execute(args, kwargs)


async def complete(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """One completion; the reply may hold tool calls. Publishes only the final event."""
    return await _run(ctx, args, kwargs, stream=False)


async def complete_stream(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The same, publishing every token to the request's channel as it is generated."""
    return await _run(ctx, args, kwargs, stream=True)
