"""``llm-pool serve-http`` in a child process on a free port, for tests and benchmarks."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from llm_pool.testing.cluster import free_port, stop_process


def serve_http_command(port: int, host: str = "127.0.0.1") -> list[str]:
    """``llm-pool serve-http`` (the Procfile's ``http:`` line) run by this interpreter."""
    return [sys.executable, "-m", "llm_pool.cli", "serve-http", "--host", host, "--port", str(port)]


class FrontDoorProcess:
    """The front door of the pool that ``env`` configures (``LLM_POOL_SETTINGS``, ``REDIS_URL``);
    its log (JSON lines) goes to ``log_path``."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with log_path.open("ab") as log:
            self._process = subprocess.Popen(
                serve_http_command(self.port), env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.pid = self._process.pid

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until ``GET /health`` answers at all (200 or 503)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the front door exited ({self._process.returncode}); see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):  # noqa: S310 (our own loopback server)
                    return
            except urllib.error.HTTPError:
                return  # 503: it answers
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"the front door did not answer in {timeout_s:g} s; see {self.log_path}")

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def stop(self, timeout_s: float = 15.0) -> int:
        return stop_process(self._process, timeout_s)
