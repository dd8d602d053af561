"""The suite is hermetic: variables of the shell that runs it (``REDIS_URL``, ``OLLAMA_BASE_URL``,
``OPENAI_API_BASE``, ``LLM_POOL__*``, ...) reach neither the test pools' workers nor the CLI runs,
because every process gets an environment built explicitly (``llm_pool.testing.cluster``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llm_pool.testing.cluster import ROOT
from tests.helpers import JUNK

pytestmark = pytest.mark.e2e

# A complete, a stream and a CLI run against a pool of workers: the paths that junk would break.
KEY_TESTS = (
    "tests/test_pool_e2e.py::test_complete_returns_text_and_real_usage",
    "tests/test_pool_e2e.py::test_stream_delivers_chunks_in_order_then_one_done",
    "tests/test_cli.py::test_workers_table_and_json",
)


@pytest.mark.timeout(300)
def test_key_end_to_end_tests_pass_with_junk_in_the_environment() -> None:
    junk = {**JUNK, "LLM_POOL__WORKER__POLL_DELAY_S": "-1", "LLM_POOL_SETTINGS": "/nonexistent/settings.toml"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *KEY_TESTS],
        env={**os.environ, **junk},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:]
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert f"{len(KEY_TESTS)} passed" in summary, summary
