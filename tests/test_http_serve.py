"""``llm-pool serve-http`` as operators run it: the Procfile and compose lines, the ``http`` extra
(missing: one line, exit 2; ``import llm_pool`` never needs it), an unreachable Redis, and the
statuses that need a pool of their own (429 over_budget, 504 timeout)."""

from __future__ import annotations

import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML comes with LiteLLM, without stubs

from llm_pool.cli import parser
from llm_pool.testing.cluster import DEPLOYMENTS, ROOT, FakeProviderProcess, free_port
from llm_pool.testing.front_door import serve_http_command
from tests.helpers import Pool, own_pool, same_minute, start_front_door, stop_cleanly, user

pytestmark = pytest.mark.e2e


def run_cli(pool: Pool, *args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m llm_pool.cli ARGS`` (or ``python -c CODE``) in the pool's environment."""
    argv = ["-c", code] if code else ["-m", "llm_pool.cli", *args]
    return subprocess.run(
        [sys.executable, *argv],
        env={**pool.env, "REDIS_URL": pool.redis_url},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_the_procfile_and_compose_run_serve_http_on_the_old_port_on_every_interface() -> None:
    procfile = dict(
        line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if ":" in line
    )
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["http"]
    for argv in (shlex.split(procfile["http"]), compose["command"]):
        assert argv[0] == "llm-pool"
        args = parser().parse_args(argv[1:])
        assert (args.command, args.host, args.port) == ("serve-http", "0.0.0.0", 8004)
    assert compose["environment"]["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
    # By hand, the default is this machine only, on the old port.
    args = parser().parse_args(["serve-http"])
    assert (args.host, args.port) == ("127.0.0.1", 8004)
    assert serve_http_command(5)[1:] == [
        "-m",
        "llm_pool.cli",
        "serve-http",
        "--host",
        "127.0.0.1",
        "--port",
        "5",
    ]


def test_the_package_and_its_cli_import_without_the_http_extra(
    tmp_path: Path, provider: FakeProviderProcess
) -> None:
    code = (
        "import sys; import llm_pool, llm_pool.cli, llm_pool.http; "
        "assert not {'fastapi', 'starlette', 'uvicorn'} & set(sys.modules), sorted(sys.modules)"
    )
    out = run_cli(Pool(tmp_path, provider), code=code)
    assert out.returncode == 0, out.stderr


def test_serve_http_without_the_extra_says_which_to_install(
    tmp_path: Path, provider: FakeProviderProcess
) -> None:
    code = (
        "import sys; sys.modules['fastapi'] = None; sys.modules['uvicorn'] = None; "
        "from llm_pool.cli import main; sys.exit(main(['serve-http']))"
    )
    out = run_cli(Pool(tmp_path, provider), code=code)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == (
        "llm-pool serve-http: needs the http extra (fastapi, uvicorn not installed): "
        "pip install 'llm-pool[http]'\n"
    )


def test_serve_http_with_redis_unreachable_says_so_in_one_line(
    tmp_path: Path, provider: FakeProviderProcess
) -> None:
    pool = Pool(tmp_path, provider, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    out = run_cli(pool, "serve-http", "--port", str(free_port()))
    assert out.returncode == 2, out.stderr
    [line] = out.stderr.splitlines()
    assert line.startswith("llm-pool serve-http: Redis at redis://127.0.0.1:") and "unreachable" in line
    assert "Traceback" not in out.stderr


def test_serve_http_refuses_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llm_pool.cli", "serve-http", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and out.stderr == "llm-pool serve-http: --json is not supported\n"


async def test_over_budget_is_429_and_timeout_is_504(tmp_path: Path, provider: FakeProviderProcess) -> None:
    limited = str(uuid.uuid4())
    extra = f'\n[tenants.overrides."{limited}"]\nrpm = 1\n'
    with own_pool(tmp_path, provider, worker={"default_timeout_s": 1.5}, extra=extra) as pool:
        door = start_front_door(pool, tmp_path / "front-door.log")
        try:
            async with httpx.AsyncClient(base_url=door.url, timeout=30) as http:
                payload = {"model": "fast", "messages": user(), "tenant_id": limited}
                same_minute(10)
                first = await http.post("/complete", json=payload)
                assert first.status_code == 200, first.text
                second = await http.post("/complete", json=payload)
                assert second.status_code == 429 and list(second.json()) == ["error"]
                assert second.json()["error"].startswith(
                    f"tenant {limited}: the requests per minute limit of 1"
                )
                provider.configure_deployments(DEPLOYMENTS, fault="hang")
                payload["tenant_id"] = str(uuid.uuid4())
                late = await http.post("/complete", json=payload)
                assert late.status_code == 504 and list(late.json()) == ["error"], late.text
                assert "deadline" in late.json()["error"] or "timed out" in late.json()["error"], late.text
        finally:
            stop_cleanly(door)
