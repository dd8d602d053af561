"""The router built from settings: deployments without keys are left out at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_pool.router import PoolRouter
from llm_pool.settings import load_settings

SETTINGS = """
[[groups.quality]]
model = "anthropic/claude-sonnet-4-5"
api_key_env = "ANTHROPIC_API_KEY"

[[groups.quality]]
model = "openai/gpt-4.1"
api_key_env = "OPENAI_API_KEY"

[[groups.fast]]
model = "ollama_chat/llama3.2"
api_base = "http://localhost:11434"
"""


def test_deployment_without_its_key_is_skipped_with_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SETTINGS)
    settings = load_settings(path, environ={})
    router = PoolRouter(settings, environ={"OPENAI_API_KEY": "sk-test-not-logged"})
    assert router.groups == ["fast", "quality"]
    assert router.skipped == ["quality[0] anthropic/claude-sonnet-4-5"]
    assert router.has_group("quality") and router.has_group("fast") and not router.has_group("x")


def test_group_with_no_usable_deployment_is_not_served(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SETTINGS)
    router = PoolRouter(load_settings(path, environ={}), environ={})
    assert router.groups == ["fast"]
    assert len(router.skipped) == 2
