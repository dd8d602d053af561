"""``python -m llm_pool.testing.fake_provider --help`` documents the layout and every control."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest

from llm_pool.testing.cluster import ROOT
from llm_pool.testing.fake_provider import FAULTS, DeploymentConfig, DeploymentStats

pytestmark = pytest.mark.e2e


def test_help_explains_the_api_base_layout_and_each_control() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llm_pool.testing.fake_provider", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    # The path of each wire protocol and the api_base LiteLLM needs for it.
    for endpoint in ("/d/NAME/v1/chat/completions", "/d/NAME/v1/messages", "/d/NAME/api/chat"):
        assert endpoint in text
    for wire, api_base in (
        ("OpenAI", "http://HOST:PORT/d/NAME/v1"),
        ("Anthropic", "http://HOST:PORT/d/NAME"),
        ("Ollama", "http://HOST:PORT/d/NAME"),
    ):
        line = next(line for line in text.splitlines() if line.strip().startswith(wire))
        assert line.rstrip().endswith(api_base), line
    # Every control endpoint, every behaviour field, every fault and every counter.
    for path in (
        "POST /_control/deployments/NAME",
        "GET  /_control/deployments/NAME",
        "POST /_control/reset",
        "GET  /_control/stats",
        "GET  /_control/health",
    ):
        assert path in text
    for field in fields(DeploymentConfig):
        assert f"\n      {field.name} " in text, field.name
    for fault in FAULTS:
        assert f'"{fault}"' in text, fault
    for counter in fields(DeploymentStats):
        assert counter.name in text, counter.name
    assert "FAKE_PROVIDER_PORT=" in text and "--port" in text
