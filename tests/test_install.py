"""Installed, it works: a wheel in a fresh virtualenv outside the checkout runs the demo, a worker
(``python -m worker``, the Procfile's line) and ``LLMPool.complete`` against the fake provider, and
falls back to the settings shipped inside the package."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from llm_pool.testing.cluster import ROOT, clean_environment, worker_command
from tests.helpers import EXPECTED_TEXT, REDIS_URL

pytestmark = pytest.mark.e2e

# Run by the new virtualenv's Python: the whole pool from the installed package only.
POOL_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, uuid
    from pathlib import Path

    import redis

    import llm_pool, worker
    from llm_pool.client import LLMPool
    from llm_pool.keys import Keys
    from llm_pool.settings import load_settings
    from llm_pool.testing import cluster
    from llm_pool.testing.cluster import FakeProviderProcess, WorkerProcess, settings_toml, worker_env

    redis_url, tmp = sys.argv[1], Path(sys.argv[2])
    prefix = f"inst{uuid.uuid4().hex[:8]}"
    provider = FakeProviderProcess()
    path = tmp / "pool.toml"
    path.write_text(settings_toml(provider, prefix, redis_url))
    keys = {"OPENAI_API_KEY": "sk-installed", "ANTHROPIC_API_KEY": "sk-ant-installed"}
    process = WorkerProcess("installed", worker_env(path, keys), tmp)
    try:
        process.wait_ready(redis_url, Keys(prefix).heartbeat("installed"), timeout_s=90)

        async def main():
            async with LLMPool(load_settings(path, environ={}), redis_url=redis_url) as pool:
                messages = [{"role": "user", "content": "hello there friend"}]
                return await pool.complete("fast", messages, "00000000-0000-4000-8000-000000000001")

        reply = asyncio.run(main())
    finally:
        process.stop()
        provider.stop()
        client = redis.Redis.from_url(redis_url)
        cluster.forget_keys(client, f"{prefix}:*")
        client.close()
    print(json.dumps({
        "modules": [llm_pool.__file__, worker.__file__],
        "reply": reply.model_dump(mode="json"),
        "log": process.log_path.read_text(),
    }))
    """
)


def test_procfile_worker_line_is_the_worker_command() -> None:
    """What tests, demo and image run is what the Procfile says an operator runs."""
    lines = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if ":" in line)
    argv = shlex.split(lines["worker"])
    assert [sys.executable if argv[0] == "python" else argv[0], *argv[1:]] == worker_command()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv outside the checkout with the wheel installed; the dependencies come from this
    interpreter's site-packages through a .pth file (which does not run the editable install's
    finder, so only the wheel provides ``llm_pool`` and ``worker``)."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"  # a copy, so that the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("llm_pool", "worker"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source)], cwd=tmp)
    (wheel,) = dist.glob("llm_pool-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    python = venv / "bin" / "python"
    _run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], cwd=tmp)
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp)
    (Path(site.strip()) / "llm_pool_test_dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    return venv


def _env() -> dict[str, str]:
    """No PYTHONPATH (it would put the worktree first) and no pool or provider variables."""
    return {k: v for k, v in clean_environment().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _run(argv: list[str], cwd: Path, timeout_s: float = 180) -> str:
    out = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout_s)
    assert out.returncode == 0, f"{shlex.join(argv)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.timeout(300)
def test_installed_package_uses_its_own_files(installed: Path, tmp_path: Path) -> None:
    """From another directory, with no settings file there: the packaged defaults, said so."""
    code = "import llm_pool, worker; from llm_pool.settings import load_settings; "
    code += "print(llm_pool.__file__); print(worker.__file__); print(load_settings(environ={}).source)"
    llm_pool_file, worker_file, source = _run(
        [str(installed / "bin" / "python"), "-c", code], tmp_path
    ).split("\n")[:3]
    for path in (llm_pool_file, worker_file, source):
        assert path.startswith(str(installed)), path
    assert source.endswith("llm_pool/default_settings.toml (the package's defaults)")


@pytest.mark.timeout(300)
def test_installed_demo_answers(installed: Path, tmp_path: Path) -> None:
    out = _run([str(installed / "bin" / "llm-pool"), "demo", "hello", "--redis-url", REDIS_URL], tmp_path)
    assert "> hello" in out and "tok0" in out and "tok23" in out and "OFFLINE FAKE PROVIDER" in out


@pytest.mark.timeout(300)
def test_installed_worker_serves_llmpool_complete(installed: Path, tmp_path: Path) -> None:
    script = tmp_path / "pool_script.py"
    script.write_text(POOL_SCRIPT)
    result = json.loads(
        _run([str(installed / "bin" / "python"), str(script), REDIS_URL, str(tmp_path)], tmp_path)
    )
    assert all(module.startswith(str(installed)) for module in result["modules"]), result["modules"]
    reply = result["reply"]
    assert reply["status"] == "ok", reply
    assert reply["content"] == EXPECTED_TEXT and reply["model"] == "fast"
    assert reply["usage"]["prompt_tokens"] == 3 and reply["usage"]["completion_tokens"] == 8
    assert f"{tmp_path}/pool.toml (LLM_POOL_SETTINGS)" in result["log"]  # the worker_starting line


def _pins(lock: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """``name -> (version, hashes)`` of a ``uv pip compile --generate-hashes`` lock."""
    pins: dict[str, tuple[str, frozenset[str]]] = {}
    name = ""
    for line in lock.read_text().splitlines():
        if line and not line[0].isspace() and "==" in line:
            name, _, version = line.split(" ")[0].partition("==")
            pins[name] = (version, frozenset())
        elif line.strip().startswith("--hash=") and name:
            version, hashes = pins[name]
            pins[name] = (version, hashes | {line.strip().split("=", 1)[1].rstrip(" \\")})
    return pins


def test_runtime_lock_agrees_with_the_full_lock() -> None:
    """requirements-runtime.lock (the production image's) pins every package it shares with
    requirements.lock to the same version and hashes, and holds no development tools."""
    full, runtime = _pins(ROOT / "requirements.lock"), _pins(ROOT / "requirements-runtime.lock")
    assert {"litellm", "arq", "redis", "pydantic-settings", "setuptools", "wheel"} <= set(runtime)
    assert not {"pytest", "mypy", "ruff", "hypothesis", "fakeredis"} & set(runtime)
    disagreeing = {name: (pin, full.get(name)) for name, pin in runtime.items() if full.get(name) != pin}
    assert not disagreeing, disagreeing
    assert all(hashes for _, hashes in runtime.values())
