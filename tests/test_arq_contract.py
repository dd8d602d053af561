"""What the pool still takes from arq 0.28, checked so that an arq upgrade fails here, loudly.

``PoolWorker`` (worker/loop.py) is arq's ``Worker`` with its own ``main()``; it reads and sets these
attributes of arq's worker, uses arq's key prefixes, and writes results that arq's ``Job`` reads.
"""

from __future__ import annotations

import inspect
import json

import arq
from arq import constants
from arq.jobs import deserialize_result
from arq.worker import Worker

from llm_pool.serialization import json_loads

# The attributes of arq's Worker that PoolWorker relies on (set in Worker.__init__).
WORKER_ATTRIBUTES = (
    "_pool",
    "sem",
    "job_counter",
    "tasks",
    "allow_pick_jobs",
    "in_progress_timeout_s",
    "queue_read_limit",
    "poll_delay_s",
    "max_jobs",
    "queue_name",
    "ctx",
    "on_startup",
    "on_shutdown",
    "redis_settings",
    "job_serializer",
    "job_deserializer",
    "expires_extra_ms",
)
WORKER_METHODS = ("main", "run", "close", "heart_beat", "handle_sig_wait_for_completion")


def test_arq_is_the_version_the_pool_was_written_for() -> None:
    assert arq.VERSION == "0.28.0", "review worker/loop.py and worker/runner.py against the new arq"


def test_arqs_worker_still_has_what_the_pool_worker_uses() -> None:
    source = inspect.getsource(Worker.__init__)
    missing = [
        name for name in WORKER_ATTRIBUTES if f"self.{name} " not in source and f"self.{name}:" not in source
    ]
    assert missing == [], f"arq's Worker no longer sets {missing}"
    assert all(callable(getattr(Worker, name, None)) for name in WORKER_METHODS)
    assert "pool" in {name for name, _ in inspect.getmembers(Worker) if not name.startswith("__")}


def test_arqs_key_prefixes_are_the_contracts() -> None:
    assert constants.job_key_prefix == "arq:job:"
    assert constants.in_progress_key_prefix == "arq:in-progress:"
    assert constants.result_key_prefix == "arq:result:"
    assert constants.retry_key_prefix == "arq:retry:"


def test_arq_reads_the_results_the_runner_writes() -> None:
    # The shape worker/runner.py writes (JobRunner._end).
    result = {
        "t": 1,
        "f": "complete",
        "a": [],
        "k": {},
        "et": 1_700_000_000_000,
        "s": True,
        "r": {"request_id": "r1", "status": "ok"},
        "st": 1_700_000_000_010,
        "ft": 1_700_000_000_020,
        "q": "llm_pool:queue",
        "id": "r1",
    }
    info = deserialize_result(json.dumps(result).encode(), deserializer=json_loads)
    assert info.success and info.result == {"request_id": "r1", "status": "ok"}
    assert list(info.args) == [] and info.job_try == 1 and info.queue_name == "llm_pool:queue"
