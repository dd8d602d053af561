"""llama.cpp's own ``llama-server`` as a provider for tests and benchmarks: a real inference server.

The binary is built once per machine by ``scripts/build-llama-server.sh`` (``make llama-server``)
into ``${XDG_CACHE_HOME:-~/.cache}/llm-pool/llama-server-<version>/``; ``LLM_POOL_LLAMA_SERVER``
names another binary. The models are the tiny ones of ``llm_pool.testing.tiny_gguf``.

``LlamaServer`` runs one server on a free loopback port (``--jinja``, ``/metrics`` and ``/slots``
on), and reads the server's own token counts back from ``/metrics``. ``ServerGroups`` maps the groups of a
settings file to servers, and gives ``settings_toml`` the api_base of each deployment: ``openai/``
at ``http://127.0.0.1:PORT/v1``, ``anthropic/`` at ``http://127.0.0.1:PORT`` (LiteLLM adds
``/v1/messages``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_pool.testing.cluster import clean_environment, free_port, stop_process

# The llama-cpp-python sdist whose vendored llama.cpp the build script compiles (keep the two equal).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
BINARY_ENV = "LLM_POOL_LLAMA_SERVER"


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the build script keeps the binary of this version."""
    env = os.environ if environ is None else environ
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "llm-pool" / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}"


def binary_path(environ: Mapping[str, str] | None = None) -> Path:
    """The ``llama-server`` binary to run; ``FileNotFoundError`` (saying how to build it) if absent."""
    env = os.environ if environ is None else environ
    path = Path(env[BINARY_ENV]) if env.get(BINARY_ENV) else cache_dir(env) / "llama-server"
    if not path.is_file():
        raise FileNotFoundError(
            f"no llama-server at {path}: build it with `make llama-server` "
            f"(scripts/build-llama-server.sh, about 10 minutes the first time), or set {BINARY_ENV}"
        )
    return path


@dataclass(frozen=True)
class TokenCounts:
    """Tokens llama-server itself counted (its ``/metrics`` counters, or a difference of two)."""

    prompt_tokens: int  # processed, plus reused from its prompt cache
    completion_tokens: int

    def __sub__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(
            self.prompt_tokens - other.prompt_tokens, self.completion_tokens - other.completion_tokens
        )


class LlamaServer:
    """One ``llama-server`` process serving ``model`` on 127.0.0.1 (log in ``log_path``)."""

    def __init__(
        self,
        model: Path,
        log_path: Path,
        *,
        slots: int = 1,
        context: int = 4096,
        threads: int = 2,
        predict: int | None = None,
        port: int | None = None,
        binary: Path | None = None,
    ) -> None:
        """``slots``: requests served at once (``-np``), sharing ``context`` tokens; ``predict``:
        the tokens of an answer whose request sets no ``max_tokens`` (``-n``; default: until the
        context is full, or the end-of-sequence token)."""
        self.model = model
        self.log_path = log_path
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._argv = [
            str(binary or binary_path()),
            *("-m", str(model), "--jinja", "-c", str(context), "-np", str(slots), "-t", str(threads)),
            *("--host", "127.0.0.1", "--port", str(self.port), "--metrics", "--slots", "--no-webui"),
            *(("-n", str(predict)) if predict is not None else ()),
        ]
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> LlamaServer:
        """Start (or restart, on the same port) and wait until ``/health`` says the model is loaded."""
        if self.alive:
            return self
        env = {k: v for k, v in clean_environment().items() if not k.startswith("LLAMA_ARG_")}
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(self._argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"llama-server exited at start; see {self.log_path}")
            try:
                if self.get("/health").get("status") == "ok":
                    return self
            except (OSError, ValueError):
                pass  # not listening yet, or loading (HTTP 503)
            time.sleep(0.05)
        raise TimeoutError(f"llama-server not healthy in {timeout_s:g} s; see {self.log_path}")

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def api_base(self, provider: str) -> str:
        """The api_base LiteLLM needs: ``/v1`` for ``openai/``, the root for ``anthropic/``."""
        if provider == "openai":
            return f"{self.url}/v1"
        if provider == "anthropic":
            return self.url
        raise ValueError(f"llama-server speaks the openai and anthropic protocols, not {provider!r}")

    def get(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path)  # noqa: S310 (http://127.0.0.1 only)
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read())

    def post(self, path: str, body: dict[str, Any], timeout_s: float = 60.0) -> Any:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        request = urllib.request.Request(self.url + path, data=data, headers=headers)  # noqa: S310
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return json.loads(response.read())

    def slots(self) -> list[dict[str, Any]]:
        slots: list[dict[str, Any]] = self.get("/slots")
        return slots

    def busy(self) -> bool:
        """Whether any slot is processing a request."""
        return any(slot["is_processing"] for slot in self.slots())

    def token_counts(self) -> TokenCounts:
        """The server's counters so far (``/slots`` forgets a request's counts once it ends)."""
        metrics = self.metrics()
        prompt = metrics["prompt_tokens_total"] + metrics["prompt_tokens_cached_total"]
        return TokenCounts(int(prompt), int(metrics["tokens_predicted_total"]))

    def counted_since(self, before: TokenCounts, timeout_s: float = 5.0) -> TokenCounts:
        """What the server counted since ``before``, once every slot is idle (it counts a request
        as it releases the slot, just after sending the response)."""
        wait_for_idle_slots(self, timeout_s)
        return self.token_counts() - before

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as ``{name: value}`` (names without the ``llamacpp:`` prefix)."""
        request = urllib.request.Request(self.url + "/metrics")  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            text = response.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name.removeprefix("llamacpp:")] = float(value)
        return values

    def kill(self) -> None:
        """SIGKILL: connections drop mid-response, as when a server crashes."""
        if self._process is not None and self.alive:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=10)

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process, timeout_s=5)


def wait_for_idle_slots(server: LlamaServer, timeout_s: float) -> float:
    """Seconds until no slot of ``server`` is processing; ``TimeoutError`` after ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if not server.busy():
            return time.monotonic() - started
        time.sleep(0.02)
    raise TimeoutError(f"a slot of llama-server {server.url} was still processing after {timeout_s:g} s")


class ServerGroups:
    """Which server each group of a settings file uses; ``settings_toml`` asks it for api_bases.

    Deployment names are ``cluster.deployment_name(group, provider)``, i.e. ``GROUP-PROVIDER``.
    """

    def __init__(self, servers: Mapping[str, LlamaServer]) -> None:
        self.servers = dict(servers)

    def api_base(self, name: str, provider: str) -> str:
        group = name.removesuffix(f"-{provider}")
        return self.servers[group].api_base(provider)


__all__ = [
    "BINARY_ENV",
    "LLAMA_CPP_PYTHON_VERSION",
    "LlamaServer",
    "ServerGroups",
    "TokenCounts",
    "binary_path",
    "cache_dir",
    "wait_for_idle_slots",
]
