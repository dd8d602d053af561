"""The tiny GGUF models of the real-server tier, and the pinned llama-server build (no server needed)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import gguf

from llm_pool.testing.cluster import ROOT
from llm_pool.testing.llama_server import LLAMA_CPP_PYTHON_VERSION, cache_dir
from llm_pool.testing.tiny_gguf import (
    EOS,
    TEXT_MODEL,
    TOOL_CALL,
    TOOL_MODEL,
    successors,
    vocabulary,
    write_models,
)


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_models_are_the_same_bytes_on_every_run(tmp_path: Path) -> None:
    first, second = write_models(tmp_path / "a"), write_models(tmp_path / "b")
    assert [p.name for p in first.values()] == ["tiny.gguf", "tiny-tools.gguf"]
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    assert all(100_000 < p.stat().st_size < 1_000_000 for p in second.values())


def test_model_metadata_is_what_llama_server_needs(tmp_path: Path) -> None:
    reader = gguf.GGUFReader(write_models(tmp_path)["tools"])
    fields = {name: field.contents() for name, field in reader.fields.items()}
    tokens = fields["tokenizer.ggml.tokens"]
    assert fields["general.architecture"] == "llama"
    assert fields["tokenizer.ggml.add_space_prefix"] is False
    assert tokens[fields["tokenizer.ggml.eos_token_id"]] == EOS
    assert TOOL_CALL in tokens and f"{TOOL_CALL}\n" not in tokens
    assert "<tool_call>" in fields["tokenizer.chat_template"]


def test_text_model_cycles_through_every_printable_character_once_per_lap() -> None:
    tokens, _, types = vocabulary()
    after = successors(TEXT_MODEL, tokens, types)
    token, lap = after[0], []
    while token not in lap:
        lap.append(token)
        token = after[token]
    assert sorted(tokens[t] for t in lap) == sorted(["\u2581", *(chr(c) for c in range(0x21, 0x7F))])


def test_tool_model_writes_the_tool_call_trigger_after_the_prompt() -> None:
    tokens, _, types = vocabulary()
    after = {tokens[a]: tokens[b] for a, b in successors(TOOL_MODEL, tokens, types).items()}
    assert after == {"<0x0A>": TOOL_CALL, TOOL_CALL: "<0x0A>", "</tool_call>": EOS}


def test_build_script_pins_the_version_the_tests_look_for() -> None:
    script = (ROOT / "scripts" / "build-llama-server.sh").read_text()
    assert re.search(rf'^version="{re.escape(LLAMA_CPP_PYTHON_VERSION)}"$', script, re.MULTILINE)
    assert re.search(r'^sha256="[0-9a-f]{64}"$', script, re.MULTILINE)
    assert cache_dir({"XDG_CACHE_HOME": "/c"}) == Path(f"/c/llm-pool/llama-server-{LLAMA_CPP_PYTHON_VERSION}")
