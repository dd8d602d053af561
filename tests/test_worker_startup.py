"""``python -m worker`` refusing to start, as an operator sees it: one line and exit status 2."""

from __future__ import annotations

import socket

import pytest

from llm_pool.testing.cluster import WorkerProcess
from tests.helpers import Pool

pytestmark = pytest.mark.e2e


def said(output: str) -> list[str]:
    """What the worker said for a person to read: its lines that are not JSON log lines."""
    return [line for line in output.strip().splitlines() if not line.startswith("{")]


def test_a_second_worker_with_a_live_id_refuses_to_start(pool: Pool) -> None:
    alive = pool.workers[0]
    (pool.tmp / "duplicate").mkdir(exist_ok=True)
    duplicate = WorkerProcess(alive.worker_id, pool.env, pool.tmp / "duplicate")
    assert duplicate.wait(timeout_s=60) == 2
    lines = said(duplicate.log_path.read_text())
    assert len(lines) == 1 and lines[-1].startswith("llm-pool worker: another live worker has this worker id")
    assert f"pid {alive.pid}" in lines[-1]
    assert "Traceback" not in duplicate.log_path.read_text()
    assert alive.alive, "the worker that held the id carries on"


def test_an_unreachable_redis_is_one_line_and_exit_2(pool: Pool) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = pool.run_module("worker", REDIS_URL=f"redis://:s3cret@127.0.0.1:{port}/0")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "s3cret" not in done.stderr + done.stdout
    [line] = said(done.stderr)
    assert line.startswith(f"llm-pool worker: cannot reach Redis at 127.0.0.1:{port}/0"), line
