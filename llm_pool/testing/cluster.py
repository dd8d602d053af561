"""A pool on this machine for tests, benchmarks and demos: fake provider, settings, worker processes.

Everything here runs the real thing: the fake provider is an HTTP server in its own process, and
workers are started with the Procfile's ``worker:`` command (``python -m worker``), exactly as an
operator would. Nothing here reads the source checkout, so it works from an installed package too;
each process gets an environment built explicitly (``clean_environment``), so variables of the shell
that runs the tests (``REDIS_URL``, ``OLLAMA_BASE_URL``, ``OPENAI_*``, ``LLM_POOL__*``) cannot point
a worker somewhere its settings file does not say.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, TextIO

import redis
import redis.asyncio as aioredis

# The source checkout, for tests and benchmarks run from it; nothing that runs a pool reads it.
ROOT = Path(__file__).resolve().parents[2]
PROVIDERS = ("anthropic", "openai", "ollama")

# The deployments of the test pool: (group, provider, LiteLLM model).
DEPLOYMENTS: tuple[tuple[str, str, str], ...] = (
    ("quality", "anthropic", "anthropic/claude-sonnet-4-5"),
    ("quality", "openai", "openai/gpt-4.1"),
    ("quality", "ollama", "ollama_chat/llama3.1:70b"),
    ("fast", "ollama", "ollama_chat/llama3.2"),
    ("fast", "openai", "openai/gpt-4.1-mini"),
    ("fast", "anthropic", "anthropic/claude-haiku-4-5"),
)
API_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}


def free_port() -> int:
    """A TCP port nobody listens on right now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def worker_command() -> list[str]:
    """The Procfile's ``worker:`` line, ``python -m worker``, run by this interpreter."""
    return [sys.executable, "-m", "worker"]


# Variables that choose a Redis, a provider or settings: a pool process started here gets none of
# the caller's (its settings file says everything), only the ones it is given.
POOL_VARIABLES = frozenset({"REDIS_URL"})
POOL_VARIABLE_PREFIXES = ("LLM_POOL", "OLLAMA_", "OPENAI_", "ANTHROPIC_")


def clean_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: this process's) without any variable that configures a pool or a
    provider (``POOL_VARIABLES``, ``POOL_VARIABLE_PREFIXES``)."""
    source = os.environ if environ is None else environ
    return {
        name: value
        for name, value in source.items()
        if name not in POOL_VARIABLES and not name.upper().startswith(POOL_VARIABLE_PREFIXES)
    }


class FakeProviderProcess:
    """``python -m llm_pool.testing.fake_provider`` in a child process, with its control API."""

    def __init__(self, log: TextIO | None = None) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "llm_pool.testing.fake_provider", "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=log or subprocess.DEVNULL,
            text=True,
            env=clean_environment(),
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if not line.startswith("FAKE_PROVIDER_PORT="):
            self._process.kill()
            raise RuntimeError(f"fake provider did not start (said {line!r})")
        self.port = int(line.split("=", 1)[1])
        self.base_url = f"http://127.0.0.1:{self.port}"

    def configure_deployments(
        self, deployments: tuple[tuple[str, str, str], ...], group: str | None = None, **config: Any
    ) -> None:
        """Give every deployment of a settings file (or of one ``group`` in it) the same behaviour."""
        for name, kind, _ in deployments:
            if group is None or name == group:
                self.configure(deployment_name(name, kind), **config)

    def api_base(self, name: str, provider: str) -> str:
        prefix = f"{self.base_url}/d/{name}"
        return f"{prefix}/v1" if provider == "openai" else prefix

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        url = self.base_url + path  # always http://127.0.0.1:PORT, our own server
        headers = {"Content-Type": "application/json"}
        request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read() or b"null")

    def configure(self, name: str, **config: Any) -> None:
        """Set one deployment's behaviour: fault, tokens, token_delay_ms, drop_after, ..."""
        self._call("POST", f"/_control/deployments/{name}", config)

    def reset(self) -> None:
        self._call("POST", "/_control/reset", {})

    def stats(self) -> dict[str, dict[str, int]]:
        stats: dict[str, dict[str, int]] = self._call("GET", "/_control/stats")["deployments"]
        return stats

    def stop(self) -> None:
        stop_process(self._process, timeout_s=5)


def stop_process(process: subprocess.Popen[Any], timeout_s: float) -> int:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


def deployment_name(group: str, kind: str) -> str:
    """The fake provider's name for a group's deployment of one wire protocol, e.g. ``fast-openai``."""
    return f"{group}-{kind}"


class ApiBases(Protocol):
    """What ``settings_toml`` needs of a provider: the api_base of each deployment (the fake
    provider, or ``llama_server.ServerGroups``)."""

    def api_base(self, name: str, provider: str) -> str: ...


def settings_toml(
    provider: ApiBases,
    key_prefix: str,
    redis_url: str = "redis://127.0.0.1:6379/0",
    worker: dict[str, Any] | None = None,
    router: dict[str, Any] | None = None,
    deployments: tuple[tuple[str, str, str], ...] = DEPLOYMENTS,
    extra: str = "",
    redis_options: dict[str, Any] | None = None,
) -> str:
    """A settings file for a pool whose every deployment is on ``provider`` (the fake provider, or
    llama-servers); ``redis_options``: more ``[redis]`` keys, e.g. ``sentinels``."""
    worker_section = {
        "poll_delay_s": 0.05,
        "heartbeat_interval_s": 1,
        "default_timeout_s": 30,
        "log_format": "json",
        **(worker or {}),
    }
    router_section = {"num_retries": 0, "cooldown_time_s": 0, "timeout_s": 3, "stream_timeout_s": 3}
    router_section.update(router or {})

    def table(values: dict[str, Any]) -> str:
        return "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())

    lines = [
        f'[redis]\nurl = "{redis_url}"\nkey_prefix = "{key_prefix}"\n{table(redis_options or {})}'.rstrip(),
        f"[worker]\n{table(worker_section)}",
        f'[router]\n{table(router_section)}\nfallbacks = {{ quality = ["fast"], fast = ["quality"] }}',
    ]
    for group, kind, model in deployments:
        entry = {"model": model, "api_base": provider.api_base(deployment_name(group, kind), kind)}
        if kind in API_KEY_ENV:
            entry["api_key_env"] = API_KEY_ENV[kind]
        lines.append(f"[[groups.{group}]]\n{table(entry)}")
    return "\n\n".join(lines) + "\n" + extra


class WorkerProcess:
    """One worker started with the Procfile's command in the environment ``env`` (see ``worker_env``)
    and nothing else; its log goes to a file."""

    def __init__(self, worker_id: str, env: dict[str, str], log_dir: Path) -> None:
        self.worker_id = worker_id
        self.log_path = log_dir / f"worker-{worker_id}.log"
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            worker_command(),
            env={**env, "LLM_POOL__WORKER__WORKER_ID": worker_id},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self._process.pid

    def wait_ready(self, redis_url: str, heartbeat_key: str, timeout_s: float = 60.0) -> None:
        """Block until the worker's first heartbeat (LiteLLM's import takes seconds)."""
        client = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if client.exists(heartbeat_key):
                    return
                if self._process.poll() is not None:
                    raise RuntimeError(f"worker {self.worker_id} exited; see {self.log_path}")
                time.sleep(0.05)
        finally:
            client.close()
        raise TimeoutError(f"worker {self.worker_id} sent no heartbeat in {timeout_s}s")

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        self._process.send_signal(signal.SIGKILL)
        self._process.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM: the worker drains (finishes or hands back its jobs) and exits."""
        self._process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int:
        return self._process.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = 15.0) -> int:
        code = stop_process(self._process, timeout_s)
        if not self._log.closed:
            self._log.close()
        return code


def worker_env(settings_path: Path, secrets: dict[str, str]) -> dict[str, str]:
    """The environment of a worker: this one without pool or provider variables
    (``clean_environment``), plus the settings file and the (fake) API keys."""
    return {
        **clean_environment(),
        **secrets,
        "LLM_POOL_SETTINGS": str(settings_path),
        "PYTHONUNBUFFERED": "1",
    }


def forget_keys(client: redis.Redis, *patterns: str) -> None:
    """Delete every key matching one of ``patterns`` (globs, e.g. ``"P:*"``): what a pool under a
    prefix of its own left in a shared Redis."""
    for pattern in patterns:
        for key in client.scan_iter(match=pattern, count=1000):
            client.delete(key)


async def aforget_keys(client: aioredis.Redis, *patterns: str) -> None:
    """``forget_keys`` for an asyncio client."""
    for pattern in patterns:
        keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
        if keys:
            await client.delete(*keys)


class RedisServer:
    """A ``redis-server`` of our own (daemonized), to restart or stop without harming anyone else.

    With ``directory`` it can be restarted keeping its data (``stop(save=True)`` writes an RDB that
    the next ``start`` loads); without, it keeps nothing.
    """

    def __init__(
        self,
        port: int | None = None,
        directory: Path | None = None,
        config: dict[str, str] | None = None,
        tls_ca: Path | None = None,
    ) -> None:
        """``config``: extra ``redis-server`` options, e.g. ``{"maxmemory": "20mb"}``. With ``tls_ca``
        the server speaks only TLS on ``port`` (``config`` names its certificate and key), and
        ``url`` is ``rediss://`` with the CA as a query parameter."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/ensure-redis.sh installs it)")
        self._binary = binary
        self._dir = directory
        self._config = dict(config or {})
        self.port = port if port is not None else 20000 + random.randrange(20000)
        self._tls_ca = tls_ca
        self.url = f"redis://127.0.0.1:{self.port}/0"
        if tls_ca is not None:
            self.url = f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={tls_ca}"
        self._pidfile = Path(tempfile.gettempdir()) / f"llm-pool-redis-{self.port}.pid"

    def start(self) -> None:
        argv = [self._binary, "--bind", "127.0.0.1", "--daemonize", "yes"]
        argv += ["--port", "0", "--tls-port", str(self.port)] if self._tls_ca else ["--port", str(self.port)]
        argv += ["--pidfile", str(self._pidfile)]
        argv += ["--save", "", "--appendonly", "no"]
        if self._dir is not None:
            argv += ["--dir", str(self._dir), "--dbfilename", "dump.rdb"]
            argv += ["--logfile", str(self._dir / "redis.log")]
        for option, value in self._config.items():
            argv += [f"--{option}", *value.split()]
        subprocess.run(argv, check=True)
        wait_until_answers(self.client(), f"redis-server did not answer on port {self.port}")

    def client(self) -> redis.Redis:
        """A redis-py client of this server (TLS verified with its CA)."""
        if self._tls_ca is None:
            return redis.Redis.from_url(self.url)
        return redis.Redis(host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=str(self._tls_ca))

    def kill(self) -> None:
        """SIGKILL: the server writes nothing more, as in a crash (an AOF keeps what it had fsynced)."""
        self._signal(signal.SIGKILL)

    def stop(self, save: bool = False) -> None:
        """Stop the server: ``SHUTDOWN SAVE`` with ``save``, else SIGTERM to its PID (it keeps nothing)."""
        if save:
            # The server closes the connection as it goes.
            with contextlib.suppress(redis.ConnectionError):
                self.client().shutdown(save=True)
            return
        self._signal(signal.SIGTERM)

    def _signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the server and wait until it has exited (SIGKILL after 10 s)."""
        signal_pidfile(self._pidfile, signum)


class SentinelServer:
    """``redis-server --sentinel`` of our own, watching one primary (daemonized, like ``RedisServer``).

    Its configuration file is written into ``directory``: a Sentinel rewrites it as it learns about
    replicas, other Sentinels and failovers.
    """

    def __init__(
        self,
        directory: Path,
        master_name: str,
        master_port: int,
        port: int | None = None,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 10000,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/ensure-redis.sh installs it)")
        self._binary = binary
        self.port = port if port is not None else free_port()
        self.master_name = master_name
        self._dir = directory
        self._conf = directory / f"sentinel-{self.port}.conf"
        self._pidfile = directory / f"sentinel-{self.port}.pid"
        self.log_path = directory / f"sentinel-{self.port}.log"
        self._monitor = (
            f"sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
            f"sentinel failover-timeout {master_name} {failover_timeout_ms}\n"
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndaemonize yes\npidfile {self._pidfile}\n"
            f"logfile {self.log_path}\ndir {self._dir}\n" + self._monitor
        )
        subprocess.run([self._binary, str(self._conf), "--sentinel"], check=True)
        wait_until_answers(self.client(), f"sentinel did not answer on port {self.port}; see {self.log_path}")

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def master(self) -> dict[str, Any]:
        """``SENTINEL MASTER name``: the primary as this Sentinel sees it (``ip``, ``port``,
        ``num-slaves``, ``num-other-sentinels``, ``flags``, ...)."""
        client = self.client()
        try:
            state: dict[str, Any] = client.sentinel_master(self.master_name)  # type: ignore[no-untyped-call]
            return state
        finally:
            client.close()

    def master_port(self) -> int | None:
        """The port of the primary this Sentinel reports now (None if it does not answer)."""
        client = self.client()
        try:
            name = self.master_name
            address = client.sentinel_get_master_addr_by_name(name)  # type: ignore[no-untyped-call]
            return int(address[1]) if address else None
        except redis.RedisError:
            return None
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM to its PID, and wait until it has exited (SIGKILL after 10 s)."""
        signal_pidfile(self._pidfile, signal.SIGTERM)


def signal_pidfile(pidfile: Path, signum: signal.Signals) -> None:
    """Send ``signum`` to the process named in ``pidfile`` and wait until it has exited (SIGKILL
    after 10 s); nothing if it never started or is gone. Once it is gone the file goes too, so that
    a later stop cannot signal another process that was given the same PID."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signum)
        for _ in range(200):
            os.kill(pid, 0)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)


def wait_until_answers(client: redis.Redis, failure: str, timeout_s: float = 10.0) -> None:
    """Block until ``client`` answers PING (a server starting, or loading its data); then close it."""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                if client.ping():
                    return
            time.sleep(0.05)
    finally:
        client.close()
    raise RuntimeError(failure)
