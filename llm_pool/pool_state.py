"""What Redis says about the pool: which workers are alive, and where a request is.

``live_workers`` reads the heartbeat keys (contract section 4), for ``llm-pool workers``, the health
check and ``ReplyTimeout``'s message. ``look_up`` finds a request finished (its reply key),
running, queued, or unknown, for ``LLMPool.cancel``, ``llm-pool request`` and ``llm-pool cancel``.
The reads of ``look_up`` are one
pipeline, in the order a job moves through them: the queue (a job stays in ``P:queue`` until it
ends), its claim (``arq:in-progress:{id}``), then its reply key (written before the job leaves the
queue). A job that moves on between the reads is therefore never taken for unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError
from redis.asyncio import Redis

from llm_pool.keys import Keys
from llm_pool.schemas import Heartbeat

State = Literal["finished", "running", "queued", "unknown"]
CANCEL_TTL_S = 600  # contract section 5


async def live_workers(redis: Redis, keys: Keys) -> list[Heartbeat]:
    """Every worker whose heartbeat key exists (a value that is not a heartbeat is skipped)."""
    names = [name async for name in redis.scan_iter(match=keys.heartbeat_pattern, count=500)]
    values = await redis.mget(names) if names else []
    beats = []
    for value in values:
        if value is None:
            continue  # expired between SCAN and MGET
        try:
            beats.append(Heartbeat.model_validate_json(value))
        except ValidationError:
            continue
    return beats


@dataclass(frozen=True)
class RequestState:
    request_id: str
    state: State
    reply: bytes | None = None  # the reply key's value when finished
    queued_at_ms: float | None = None  # its score in the queue (when it may run), while not finished


async def look_up(redis: Redis, keys: Keys, request_id: str) -> RequestState:
    """The request's state (Redis commands: ZSCORE, EXISTS, GET)."""
    pipe = redis.pipeline(transaction=False)
    pipe.zscore(keys.queue, request_id)
    pipe.exists(keys.claim(request_id))
    pipe.get(keys.reply(request_id))
    score, claimed, reply = await pipe.execute()
    if reply is not None:
        return RequestState(request_id, "finished", reply=reply)
    if score is None:
        return RequestState(request_id, "unknown")
    return RequestState(request_id, "running" if claimed else "queued", queued_at_ms=score)


async def cancel(redis: Redis, keys: Keys, request_id: str) -> RequestState:
    """Set the cancel key (contract section 5) if the request is queued or running; the state found.

    Nothing is written for an unknown or finished request. A request that finishes between the
    look-up and the ``SET`` is not affected by the key, which expires by itself."""
    found = await look_up(redis, keys, request_id)
    if found.state in ("queued", "running"):
        await redis.set(keys.cancel(request_id), b"1", ex=CANCEL_TTL_S)
    return found
