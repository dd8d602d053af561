"""The LiteLLM proxy that section 8 of the benchmark compares the pool with.

The proxy runs from a virtualenv of its own, ``.bench-venv/`` at the repository root, built on first
use (and again whenever the lock changes) from the hash-pinned ``bench/proxy-requirements.lock``:
the same LiteLLM release as the pool, with the dependencies of its ``proxy`` extra. It is started
with ``litellm --config ... --num_workers 1`` in front of the fake provider, and driven over HTTP by
an SSE client in the benchmark process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from bench.progress import bar, echo, say
from bench.timing import chunks_per_s, ttft_rounds
from llm_pool.testing.cluster import ROOT, free_port, stop_process

VENV = ROOT / ".bench-venv"
LOCK = Path(__file__).with_name("proxy-requirements.lock")
STAMP = VENV / ".installed"  # the sha256 of the lock the virtualenv was built from
MODEL = "fast"
PROMPT = [{"role": "user", "content": "hi"}]


class ProxyUnavailable(RuntimeError):
    """The proxy's virtualenv could not be built (no index reachable, for one)."""


def _run(command: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)


def _pip_install(python: Path) -> None:
    """``pip install --require-hashes`` of the lock, a bar counting the packages collected."""
    packages = len(re.findall(r"^[A-Za-z0-9][^\s]*==", LOCK.read_text(), flags=re.MULTILINE))
    pip = [str(python), "-m", "pip", "install", "--require-hashes", "--no-input", "--progress-bar", "off"]
    process = _run([*pip, "-r", str(LOCK), "-c", str(ROOT / "constraints.txt")])
    assert process.stdout is not None
    tail: deque[str] = deque(maxlen=30)
    with bar("  proxy virtualenv: packages collected", total=packages, unit="pkg") as progress:
        for line in process.stdout:
            tail.append(line.rstrip())
            if line.startswith(("Collecting ", "Processing ")):  # from an index, from a local wheel
                progress.update()
            elif line.startswith("Installing collected packages"):
                say(f"  installing {packages} packages into {VENV.name}/")
    if process.wait() != 0:
        for line in tail:
            echo(f"    pip: {line}")
        errors = [line for line in tail if line.startswith("ERROR")]
        raise ProxyUnavailable(f"pip install failed: {(errors or list(tail) or ['no output'])[0]}")


def ensure_venv() -> Path:
    """The proxy's ``litellm`` command, building its virtualenv first if the lock is not installed."""
    command = VENV / "bin" / "litellm"
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == digest:
        return command
    say(f"  building {VENV.name}/ from bench/{LOCK.name} (first use: about a minute)")
    started = time.perf_counter()
    shutil.rmtree(VENV, ignore_errors=True)
    venv = _run([sys.executable, "-m", "venv", str(VENV)])
    output, _ = venv.communicate()
    if venv.returncode != 0:
        raise ProxyUnavailable(f"python -m venv failed: {output.strip() or 'no output'}")
    _pip_install(VENV / "bin" / "python")
    STAMP.write_text(digest)
    say(f"  built {VENV.name}/ in {time.perf_counter() - started:.0f} s")
    return command


def proxy_config(model: str, api_base: str, api_key: str) -> dict[str, Any]:
    """One model group, ``fast``, on one deployment; no retries, as the pool's Router."""
    params = {"model": model, "api_base": api_base, "api_key": api_key}
    return {
        "model_list": [{"model_name": MODEL, "litellm_params": params}],
        "router_settings": {"num_retries": 0},
        "litellm_settings": {"num_retries": 0, "request_timeout": 60},
    }


class LiteLLMProxy:
    """``litellm --config`` in a child process (log in ``directory``), and an SSE client for it."""

    def __init__(self, command: Path, config: dict[str, Any], directory: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._key = f"sk-bench-{secrets.token_hex(32)}"
        config_path = directory / "litellm-proxy.yaml"
        config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.log_path = directory / "litellm-proxy.log"
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_MASTER_KEY=self._key)
        env["PYTHON_DOTENV_DISABLED"] = "1"  # the proxy would read a .env above its installation
        argv = [str(command), "--config", str(config_path), "--num_workers", "1"]
        self._started = time.perf_counter()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [*argv, "--host", "127.0.0.1", "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
            )

    async def wait_ready(self, timeout_s: float = 180.0) -> float:
        """Wait until the proxy answers its liveness probe; returns the seconds since its start."""
        async with aiohttp.ClientSession() as session:
            while time.perf_counter() - self._started < timeout_s:
                if self._process.poll() is not None:
                    raise RuntimeError(f"the LiteLLM proxy exited; its log ends:\n{self.log_tail()}")
                try:
                    async with session.get(f"{self.url}/health/liveliness") as response:
                        if response.status == 200:
                            return time.perf_counter() - self._started
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.25)
        raise TimeoutError(
            f"the LiteLLM proxy did not answer in {timeout_s:.0f} s; its log ends:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        """The end of the proxy's log (it lives in the run's temporary directory, gone after the run)."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def session(self, connections: int) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            headers={"Authorization": f"Bearer {self._key}"},
            timeout=aiohttp.ClientTimeout(total=300),
        )

    async def texts(self, session: aiohttp.ClientSession) -> AsyncIterator[str]:
        """One streamed chat completion: the text of each SSE chunk that carries text."""
        body = {
            "model": MODEL,
            "messages": PROMPT,
            "stream": True,
            "stream_options": {"include_usage": True},  # as the pool asks
        }
        async with session.post(f"{self.url}/v1/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                choices = json.loads(line[6:]).get("choices") or []
                text = choices[0].get("delta", {}).get("content") if choices else None
                if text:
                    yield text

    async def ttft(self, streams: int, rounds: int) -> list[float]:
        """Time to the first text chunk, ``rounds`` times ``streams`` concurrent streams (ms)."""
        async with self.session(streams) as session:
            return await ttft_rounds(lambda: self.texts(session), streams, rounds, "  proxy streams")

    async def chunks(self, streams: int, tokens: int) -> dict[str, float]:
        """``streams`` concurrent streams at once: the text chunks the client receives per second."""
        async with self.session(streams) as session:
            return await chunks_per_s(
                lambda: self.texts(session), streams, tokens, "  chunks through the proxy"
            )

    def stop(self) -> None:
        stop_process(self._process, timeout_s=15)
