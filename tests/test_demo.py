"""``llm-pool demo``: the newcomer's first command, offline, as the README shows it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llm_pool.testing.cluster import ROOT

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(240)
def test_demo_streams_an_offline_answer_and_says_so() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("LLM_POOL")}
    out = subprocess.run(
        [sys.executable, "-m", "llm_pool.cli", "demo", "What is a queue?"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "> What is a queue?" in text
    assert "tok0" in text and "tok23" in text  # the tokens, as they streamed
    assert "prompt +" in text and "completion tokens" in text  # the reply's usage
    assert "OFFLINE FAKE PROVIDER" in text and "OPENAI_API_KEY" in text  # says how to go real
