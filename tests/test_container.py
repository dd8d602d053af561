"""The production image and docker-compose.yml: pinned images, runtime lock only, durable Redis.

There is no container engine here to build with; ``docker-compose config -q`` (or ``docker compose
config -q``) validates the compose file when either tool is installed, and the rest is read
statically (YAML, Dockerfile lines).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML comes with LiteLLM, without stubs

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
RUNTIME_LOCK = "requirements-runtime.lock"
DEV_TOOLS = ("pytest", "mypy", "ruff", "hypothesis", "fakeredis")
EXACT_TAG = re.compile(r"^[a-z0-9./-]+:\d+\.\d+\.\d+(-[a-z0-9.]+)?$")


def compose_command() -> list[str] | None:
    """``docker-compose`` (Debian's package), else ``docker compose`` if that plugin answers."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def redis_command(service: dict[str, Any]) -> str:
    command = service["command"]
    return " ".join(command) if isinstance(command, list) else str(command)


def from_images() -> list[str]:
    """The images of the Dockerfile's FROM lines, with ``ARG`` defaults substituted."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    images = re.findall(r"^FROM (\S+)", text, re.M)
    return [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image) for image in images]


def test_compose_config_validates_with_the_compose_tool() -> None:
    command = compose_command()
    if command is None:
        pytest.skip("neither docker-compose nor docker compose is installed (the static tests still run)")
    env = {**os.environ, "REDIS_PASSWORD": "not-a-real-password"}
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    del env["REDIS_PASSWORD"]
    refused = subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, env=env, timeout=60
    )
    assert refused.returncode != 0 and "REDIS_PASSWORD" in refused.stderr, "the password must be required"


def test_every_compose_image_is_pinned_to_an_exact_version() -> None:
    services = compose()["services"]
    for name, service in services.items():
        image = service.get("image")
        assert image is not None or "build" in service, f"service {name} has neither image nor build"
        if image is not None:
            assert EXACT_TAG.match(image), f"service {name}: image {image!r} is not pinned to x.y.z"


def test_compose_redis_is_durable_never_evicts_and_is_not_published() -> None:
    redis = compose()["services"]["redis"]
    command = redis_command(redis)
    for option in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert option in command, f"redis-server lacks {option}"
    assert '--requirepass "$$REDIS_PASSWORD"' in command
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?"), "no default password"
    assert "ports" not in redis, "Redis must not be published on the host by default"
    worker = compose()["services"]["worker"]
    assert worker["environment"]["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")


def test_dockerfile_base_images_are_pinned_to_exact_releases() -> None:
    images = from_images()
    assert images, "no FROM line"
    for image in images:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", image), image


def test_dockerfile_installs_the_runtime_lock_and_a_built_package_without_dev_tools() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    final_stage = text[text.rindex("\nFROM ") :]
    assert f"--require-hashes -r {RUNTIME_LOCK}" in final_stage
    assert "requirements.lock" not in final_stage, "the final image must not install the dev lock"
    assert not re.search(r"pip install[^\n]*\s-e\s", text), "the package must not be installed editable"
    assert "--no-deps --no-index /wheels/" in final_stage
    for tool in DEV_TOOLS:
        assert tool not in text, f"the Dockerfile mentions {tool}"
    lock = ROOT / RUNTIME_LOCK
    if lock.exists():
        pinned = re.findall(r"^([A-Za-z0-9_.-]+)==", lock.read_text(encoding="utf-8"), re.M)
        assert pinned, f"{RUNTIME_LOCK} pins nothing"
        assert not {name.lower() for name in pinned} & set(DEV_TOOLS), f"{RUNTIME_LOCK} has dev tools"


def test_dockerignore_keeps_environments_history_and_tests_out_of_the_build_context() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for entry in (".venv", ".bench-venv", ".git", "tests", "bench", ".mypy_cache", ".pytest_cache"):
        assert entry in ignored, f".dockerignore lacks {entry}"
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    for sources in copied:
        for source in sources.split():
            assert source not in ignored, f"the Dockerfile copies {source}, which .dockerignore excludes"
