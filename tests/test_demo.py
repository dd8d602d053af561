"""``llm-pool demo``: the newcomer's first command, offline, as the README shows it; hermetic (the
shell's provider and pool variables do not reach its worker) and clear when Redis is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_pool.testing.cluster import free_port
from tests.helpers import JUNK, REDIS_URL

# What a developer's shell may hold: none of it may reach the demo's worker.


def demo(tmp_path: Path, *args: str, timeout_s: float = 220) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_pool.cli", "demo", *args],
        env={**os.environ, **JUNK},
        cwd=tmp_path,  # not the checkout: the demo reads nothing from it
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


pytestmark = pytest.mark.e2e


@pytest.mark.timeout(240)
def test_demo_streams_an_offline_answer_and_says_so(tmp_path: Path) -> None:
    out = demo(tmp_path, "What is a queue?", "--redis-url", REDIS_URL)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "> What is a queue?" in text
    assert "tok0" in text and "tok23" in text  # the tokens, as they streamed
    assert "prompt +" in text and "completion tokens" in text  # the reply's usage
    assert "OFFLINE FAKE PROVIDER" in text and "OPENAI_API_KEY" in text  # says how to go real


def test_demo_without_redis_says_where_in_one_line(tmp_path: Path) -> None:
    url = f"redis://demo:s3cret-pw@127.0.0.1:{free_port()}/0"
    out = demo(tmp_path, "hello", "--redis-url", url, timeout_s=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert url.replace("s3cret-pw", "***") in lines[0] and "--redis-url" in lines[0]
    assert "s3cret-pw" not in out.stderr + out.stdout and "Traceback" not in out.stderr
