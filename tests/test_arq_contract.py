"""What the pool still takes from arq 0.28, checked so that an arq upgrade fails here, loudly.

The worker runs its own loop (worker/loop.py) and its own job runner (worker/runner.py); no arq
``Worker`` is involved. What remains shared with arq is the data on Redis: arq's key prefixes, the
job envelope that ``ArqRedis.enqueue_job`` writes, and the result and status that arq's ``Job``
reads. Each is checked here against arq itself.
"""

from __future__ import annotations

import ast
import json
import uuid
from pathlib import Path

import arq
import redis.asyncio as aioredis
from arq import constants
from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus, deserialize_result

from llm_pool.keys import Keys
from llm_pool.serialization import decode_job, json_dumps, json_loads

# What the pool imports from arq, and nothing else (the data path is ours).
ALLOWED_ARQ_IMPORTS = {"arq.constants", "arq.connections"}
SOURCE = Path(__file__).resolve().parents[1]


def test_arq_is_the_version_the_pool_was_written_for() -> None:
    assert arq.VERSION == "0.28.0", "review llm_pool/keys.py, worker/runner.py and this file against it"


def test_the_pool_uses_no_arq_worker_internals() -> None:
    imported: set[str] = set()
    for package in ("llm_pool", "worker"):
        for path in (SOURCE / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("arq"):
                    imported.add(str(node.module))
                elif isinstance(node, ast.Import):
                    imported |= {alias.name for alias in node.names if alias.name.startswith("arq")}
    assert imported <= ALLOWED_ARQ_IMPORTS, f"new arq imports: {sorted(imported - ALLOWED_ARQ_IMPORTS)}"


def test_arqs_key_prefixes_are_the_pools() -> None:
    assert constants.job_key_prefix == "arq:job:"
    assert constants.in_progress_key_prefix == "arq:in-progress:"
    assert constants.result_key_prefix == "arq:result:"
    assert constants.retry_key_prefix == "arq:retry:"
    keys = Keys("p")
    assert (keys.job("x"), keys.claim("x"), keys.result("x"), keys.retry("x")) == (
        "arq:job:x",
        "arq:in-progress:x",
        "arq:result:x",
        "arq:retry:x",
    )


async def test_the_runner_reads_what_arq_enqueues(aredis: aioredis.Redis) -> None:
    queue = f"t{uuid.uuid4().hex[:8]}:queue"
    arq_redis = ArqRedis(connection_pool=aredis.connection_pool, job_serializer=json_dumps)
    job_id = uuid.uuid4().hex
    request = {"request_id": job_id, "tenant_id": str(uuid.uuid4()), "messages": []}
    try:
        job = await arq_redis.enqueue_job("complete_stream", request, _job_id=job_id, _queue_name=queue)
        assert job is not None
        envelope = decode_job(await aredis.get(Keys.job(job_id)) or b"")
        assert (envelope["f"], envelope["a"], envelope["k"]) == ("complete_stream", [request], {})
        assert isinstance(envelope["et"], int)
        assert await aredis.zscore(queue, job_id) is not None
    finally:
        await aredis.delete(Keys.job(job_id), queue)


async def test_arq_reads_the_results_and_status_the_runner_writes(aredis: aioredis.Redis) -> None:
    queue = f"t{uuid.uuid4().hex[:8]}:queue"
    job_id = uuid.uuid4().hex
    # The shape worker/runner.py writes (JobRunner._end).
    result = {
        "t": 1,
        "f": "complete",
        "a": [],
        "k": {},
        "et": 1_700_000_000_000,
        "s": True,
        "r": {"request_id": job_id, "status": "ok"},
        "st": 1_700_000_000_010,
        "ft": 1_700_000_000_020,
        "q": queue,
        "id": job_id,
    }
    info = deserialize_result(json.dumps(result).encode(), deserializer=json_loads)
    assert info.success and info.result == {"request_id": job_id, "status": "ok"}
    assert list(info.args) == [] and info.job_try == 1 and info.queue_name == queue

    job = Job(job_id, aredis, _queue_name=queue, _deserializer=json_loads)
    try:
        assert await job.status() == JobStatus.not_found
        await aredis.zadd(queue, {job_id: 1})
        assert await job.status() == JobStatus.queued
        await aredis.set(Keys.claim(job_id), "1", px=10_000)  # the claim script's lease
        assert await job.status() == JobStatus.in_progress
        await aredis.set(Keys.result(job_id), json.dumps(result), px=10_000)
        assert await job.status() == JobStatus.complete
        assert await job.result(timeout=1) == {"request_id": job_id, "status": "ok"}
    finally:
        await aredis.delete(queue, Keys.claim(job_id), Keys.result(job_id))
