"""The fast tier stays in-process: a test not marked ``e2e`` cannot start the pool's processes
(conftest.py's guard), so ``make test-fast`` cannot silently grow into the end-to-end suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llm_pool.testing.cluster import FakeProviderProcess, RedisServer, free_port, worker_command, worker_env

REFUSED = "is not marked e2e"


def test_worker_and_provider_processes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=REFUSED):  # what WorkerProcess starts
        subprocess.Popen(worker_command(), env=worker_env(tmp_path / "settings.toml", {}))
    with pytest.raises(RuntimeError, match=REFUSED):
        FakeProviderProcess()
    with pytest.raises(RuntimeError, match=REFUSED):
        subprocess.run([sys.executable, "-c", "pass"], check=True)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_private_redis_servers_are_refused() -> None:
    with pytest.raises(RuntimeError, match=REFUSED):
        RedisServer(port=free_port()).start()


def test_other_programs_still_run() -> None:
    assert subprocess.run(["true"], check=False).returncode == 0


@pytest.mark.e2e
def test_an_e2e_test_may_start_them() -> None:
    done = subprocess.run([sys.executable, "-c", "print('ok')"], capture_output=True, text=True, check=True)
    assert done.stdout == "ok\n"
