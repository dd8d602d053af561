"""LiteLLM is imported in one place, after ``LITELLM_LOCAL_MODEL_COST_MAP`` is set: imported first
anywhere else, it tries to download its price map from the internet at every start."""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1]
THE_ONE_PLACE = SOURCE / "llm_pool" / "litellm_setup.py"


def test_only_litellm_setup_imports_litellm() -> None:
    offenders = []
    for package in ("llm_pool", "worker", "bench"):
        for path in sorted((SOURCE / package).rglob("*.py")):
            if path == THE_ONE_PLACE:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                if any(name == "litellm" or name.startswith("litellm.") for name in names):
                    offenders.append(f"{path.relative_to(SOURCE)}:{getattr(node, 'lineno', 0)}")
    assert offenders == [], f"import LiteLLM's names from llm_pool.litellm_setup instead: {offenders}"
