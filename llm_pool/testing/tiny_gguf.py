"""Tiny random-weight GGUF models for llama.cpp's ``llama-server``: a real server, no weights to fetch.

``python -m llm_pool.testing.tiny_gguf DIR`` writes ``DIR/tiny.gguf`` (text) and
``DIR/tiny-tools.gguf`` (the tool-calling variant), byte for byte the same on every run (fixed seeds).

Both are llama-architecture models of 64 hidden units, 2 layers, 4 query / 2 key-value heads and a
32,768-token context (about 0.5 MB, F32), with a 359-token SentencePiece-style vocabulary: special
tokens, the 256 byte tokens, the space (``▁``) and printable ASCII. Their output is gibberish; the
protocol around it (chat template, streaming, usage, tool calls, stop sequences) is llama.cpp's own.

- ``add_space_prefix`` is false: with it, llama-server fails ``tool_choice: "required"`` with
  ``Failed to initialize samplers``.
- The chat template is Qwen2.5's (``<|im_start|>`` turns, tools in ``<tools>``, calls in
  ``<tool_call>``), end of sequence ``<|im_end|>``. ``<tool_call>`` and ``</tool_call>`` are single
  tokens; ``<tool_call>`` plus a newline as one token would make every request with tools fail
  (``Grammar trigger word should be marked as preserved token``).
- The weights are random, except where a token's successor is set (below): the model then picks
  that successor whatever the sampling settings (its logit is ~20 above the others), so answers
  are deterministic and need no luck.
- The text model writes printable ASCII and spaces in a fixed cycle (a permutation of the 95
  characters, so any 3 characters of one lap occur once in it), starting anew after any other
  token, and never ends its turn by itself: an answer is as long as ``max_tokens`` (or the server's
  ``-n``), or ends at a stop sequence.
- The tool model answers ``<tool_call>`` after the newline that ends the prompt, then a newline
  (together the trigger of llama-server's tool-call grammar), and ``<|im_end|>`` after
  ``</tool_call>``; in between the grammar makes the call valid JSON for the tool's schema.

How the successors work: every token embedding is a constant first component plus a random unit
vector of the token (its feature). The output row of a token is a large multiple of its
predecessors' features, so its logit is large exactly when the current token is one of them (a
bigram model; the random layers only add noise). A large negative first component in an output
row keeps a token (byte tokens, special tokens) from being chosen at all.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
FEED_FORWARD = 128
# Long enough for streams that last seconds (a cancel, a server killed mid-stream): ~30,000 tokens.
CONTEXT = 32768
HEAD_DIM = HIDDEN // HEADS

BOS = "<s>"
EOS = "<|im_end|>"
TOOL_CALL = "<tool_call>"
# (text, type): the special tokens first, in this order (their ids are their positions).
SPECIAL_TOKENS: tuple[tuple[str, gguf.TokenType], ...] = (
    ("<unk>", gguf.TokenType.UNKNOWN),
    (BOS, gguf.TokenType.CONTROL),
    ("</s>", gguf.TokenType.CONTROL),
    ("<|endoftext|>", gguf.TokenType.CONTROL),
    ("<|im_start|>", gguf.TokenType.CONTROL),
    (EOS, gguf.TokenType.CONTROL),
    # Written into the output as text (user-defined, not control), as a real Qwen vocabulary does.
    (TOOL_CALL, gguf.TokenType.USER_DEFINED),
    ("</tool_call>", gguf.TokenType.USER_DEFINED),
)
END_OF_GENERATION = ("</s>", "<|endoftext|>", EOS)

# Qwen2.5's chat template (its default system prompt shortened).
CHAT_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n\
You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments \
within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": \
<args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or \
(message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


@dataclass(frozen=True)
class TinyModel:
    """One model: its file name, its weights' seed, and whether it is the tool-calling variant."""

    file_name: str
    seed: int
    tools: bool = False


TEXT_MODEL = TinyModel("tiny.gguf", seed=1)
TOOL_MODEL = TinyModel("tiny-tools.gguf", seed=2, tools=True)
MODELS = (TEXT_MODEL, TOOL_MODEL)
NEWLINE = "<0x0A>"
# How strongly a set successor is preferred (its logit is about 5.7 times this over the others).
SUCCESSOR_WEIGHT = 4.0
AVOIDED_BIAS = -3.0


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and types: specials, ``<0x00>``..``<0xFF>``, ``▁`` (space), printable ASCII."""
    tokens = [text for text, _ in SPECIAL_TOKENS]
    types = [int(kind) for _, kind in SPECIAL_TOKENS]
    tokens += [f"<0x{byte:02X}>" for byte in range(256)]
    types += [int(gguf.TokenType.BYTE)] * 256
    tokens += ["\u2581"] + [chr(c) for c in range(0x21, 0x7F)]
    types += [int(gguf.TokenType.NORMAL)] * (1 + 0x7F - 0x21)
    # SentencePiece merges by score; with single characters only there is nothing to merge.
    scores = [0.0 if kind != gguf.TokenType.NORMAL else -float(i) for i, kind in enumerate(types)]
    return tokens, scores, types


def successors(model: TinyModel, tokens: list[str], types: list[int]) -> dict[int, int]:
    """Token id -> the id the model always writes after it (tokens not in it: no preference)."""
    ids = {text: i for i, text in enumerate(tokens)}
    if model.tools:
        return {
            ids[NEWLINE]: ids[TOOL_CALL],
            ids[TOOL_CALL]: ids[NEWLINE],
            ids["</tool_call>"]: ids[EOS],
        }
    cycle = [i for i, kind in enumerate(types) if kind == gguf.TokenType.NORMAL]
    order = np.random.default_rng(model.seed).permutation(len(cycle))
    cycle = [cycle[i] for i in order]
    after = {token: cycle[0] for token in range(len(tokens))}  # any other token: the cycle anew
    after |= {token: cycle[(n + 1) % len(cycle)] for n, token in enumerate(cycle)}
    return after


def _weights(model: TinyModel, tokens: list[str], types: list[int]) -> dict[str, np.ndarray]:
    """Random weights (numpy shapes are GGML's dimensions reversed), with the set successors."""
    rng = np.random.default_rng(model.seed)

    def normal(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    vocab = len(tokens)
    after = successors(model, tokens, types)
    features = rng.standard_normal((vocab, HIDDEN - 1))
    if not model.tools:
        # Every token outside the cycle starts it anew: they share one feature.
        outside = [i for i, kind in enumerate(types) if kind != gguf.TokenType.NORMAL]
        features[outside] = features[outside[0]]
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    embeddings = np.empty((vocab, HIDDEN), dtype=np.float32)
    embeddings[:, 0] = 1.0
    embeddings[:, 1:] = features
    output = normal(vocab, HIDDEN, scale=0.1)
    output[:, 0] = 0.0
    targets = set(after.values())
    for token, successor in after.items():
        # The feature the tokens outside the cycle share counts once (through token 0, <unk>).
        if model.tools or token == 0 or types[token] == gguf.TokenType.NORMAL:
            output[successor, 1:] += SUCCESSOR_WEIGHT * features[token]
    for token in range(vocab):
        if token not in targets and types[token] != gguf.TokenType.NORMAL:
            output[token, 0] = AVOIDED_BIAS
    if model.tools:
        # Where the grammar allows "</tool_call>", the one token rather than its characters.
        output[tokens.index("</tool_call>"), 0] = 1.0
    else:
        output[[tokens.index(text) for text in END_OF_GENERATION], 0] = AVOIDED_BIAS
    tensors = {
        "token_embd.weight": embeddings,
        "output_norm.weight": np.ones(HIDDEN, dtype=np.float32),
        "output.weight": output,
    }
    for layer in range(LAYERS):
        block = f"blk.{layer}"
        tensors |= {
            f"{block}.attn_norm.weight": np.ones(HIDDEN, dtype=np.float32),
            f"{block}.attn_q.weight": normal(HEADS * HEAD_DIM, HIDDEN),
            f"{block}.attn_k.weight": normal(KV_HEADS * HEAD_DIM, HIDDEN),
            f"{block}.attn_v.weight": normal(KV_HEADS * HEAD_DIM, HIDDEN),
            f"{block}.attn_output.weight": normal(HIDDEN, HEADS * HEAD_DIM),
            f"{block}.ffn_norm.weight": np.ones(HIDDEN, dtype=np.float32),
            f"{block}.ffn_gate.weight": normal(FEED_FORWARD, HIDDEN),
            f"{block}.ffn_up.weight": normal(FEED_FORWARD, HIDDEN),
            f"{block}.ffn_down.weight": normal(HIDDEN, FEED_FORWARD),
        }
    return tensors


def write_model(model: TinyModel, directory: Path) -> Path:
    """Write ``model`` into ``directory`` (created if needed); returns the file's path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / model.file_name
    tokens, scores, types = vocabulary()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(path.stem)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FEED_FORWARD)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(tokens.index(BOS))
    writer.add_eos_token_id(tokens.index(EOS))
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, tensor in _weights(model, tokens, types).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_models(directory: Path) -> dict[str, Path]:
    """Both models into ``directory``: ``{"text": ..., "tools": ...}``."""
    return {"text": write_model(TEXT_MODEL, directory), "tools": write_model(TOOL_MODEL, directory)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llm_pool.testing.tiny_gguf", description=__doc__)
    parser.add_argument("directory", type=Path, help="where to write tiny.gguf and tiny-tools.gguf")
    args = parser.parse_args(argv)
    for path in write_models(args.directory).values():
        print(path)


if __name__ == "__main__":
    main()
