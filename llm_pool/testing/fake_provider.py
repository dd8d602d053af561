"""A fake LLM provider: a real aiohttp HTTP server speaking the OpenAI, Anthropic
and Ollama chat wire protocols, with per-deployment fault injection.

Every deployment lives under its own path prefix ``/d/{name}``:

* OpenAI:    ``POST /d/{name}/v1/chat/completions``  (api_base ``{base}/d/{name}/v1``)
* Anthropic: ``POST /d/{name}/v1/messages``          (api_base ``{base}/d/{name}``)
* Ollama:    ``POST /d/{name}/api/chat`` (+ ``/api/show``, ``/api/tags``) (api_base ``{base}/d/{name}``)

Answers are deterministic: ``tokens`` (default 8) tokens ``"tok{i} "``, or one tool
call to the first tool when ``tools`` are given.  Faults and pacing are set per
deployment through ``POST /_control/deployments/{name}``; counters are served by
``GET /_control/stats``.  Message text and credentials are never logged.

Run as ``python -m llm_pool.testing.fake_provider --host 127.0.0.1 --port 0``; it
prints ``FAKE_PROVIDER_PORT=<port>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, fields
from types import TracebackType
from typing import Any, ClassVar, Final

from aiohttp import web

JSON = dict[str, Any]

FAULTS: Final = frozenset({"500", "429", "hang", "drop"})
PROVIDERS: Final = ("openai", "anthropic", "ollama")
TOOL_ARGUMENTS: Final[JSON] = {"city": "Paris", "n": 1}
# The streamed pieces of json.dumps(TOOL_ARGUMENTS); their count is the tool call's token count.
TOOL_ARGUMENT_PIECES: Final = ('{"city": ', '"Paris", ', '"n": 1}')
_SLOT: Final = "\u0000SLOT\u0000"


@dataclass(frozen=True)
class DeploymentConfig:
    """Behaviour of one deployment; replaced whole by the control API."""

    fault: str | None = None
    tokens: int = 8
    token_delay_ms: float = 0.0
    drop_after: int = 2
    retry_after_s: float = 1.0
    first_token_delay_ms: float = 0.0
    # Streams only: after this many tokens, hold the stream open without sending more (0: never).
    hold_after: int = 0

    @classmethod
    def from_json(cls, body: object) -> DeploymentConfig:
        """Validate a control-API body; raises ValueError/TypeError on bad input."""
        if not isinstance(body, dict):
            raise TypeError("body must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = set(body) - known
        if unknown:
            raise ValueError(f"unknown keys: {sorted(unknown)}")
        fault = body.get("fault")
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"fault must be null or one of {sorted(FAULTS)}")
        kwargs: JSON = {"fault": fault}
        for f in fields(cls)[1:]:  # the numeric fields
            kind = int if f.type == "int" else float
            value = body.get(f.name, 0)
            valid = (int, float) if kind is float else int
            if not isinstance(value, valid) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{f.name} must be a non-negative {kind.__name__}")
            if f.name in body:
                kwargs[f.name] = kind(value)
        return cls(**kwargs)


@dataclass
class DeploymentStats:
    requests: int = 0
    streams: int = 0
    completed: int = 0
    disconnects: int = 0
    faults: int = 0


@dataclass(frozen=True)
class Plan:
    """What to answer, independent of the wire format."""

    model: str
    stream: bool
    include_usage: bool
    prompt_tokens: int
    tool_name: str | None  # answer with a tool call to this tool instead of text
    texts: tuple[str, ...]  # text tokens (empty for a tool call)
    truncated: bool  # stopped by the request's token limit

    @property
    def completion_tokens(self) -> int:
        return len(TOOL_ARGUMENT_PIECES) if self.tool_name is not None else len(self.texts)

    @property
    def text(self) -> str:
        return "".join(self.texts)


def count_words(content: object) -> int:
    """Whitespace-separated words in a message content (string or content blocks)."""
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):
        return sum(count_words(part) for part in content)
    if isinstance(content, dict):
        return count_words(content.get("text")) + count_words(content.get("content"))
    return 0


def make_plan(body: JSON, config: DeploymentConfig, *, limit: object, include_usage: bool) -> Plan:
    """Plan the answer to a chat request body (OpenAI, Anthropic and Ollama bodies look alike)."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    words = count_words(body.get("system")) + sum(count_words(m.get("content")) for m in messages)
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    choice = body.get("tool_choice")
    tool_name = None
    if tools and choice != "none" and not (isinstance(choice, dict) and choice.get("type") == "none"):
        tool_name = str(tools[0].get("function", tools[0]).get("name", "tool"))  # OpenAI / Anthropic
    n, truncated = config.tokens, False
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < n:
        n, truncated = limit, True
    return Plan(
        model=str(body.get("model") or "fake-model"),
        stream=bool(body.get("stream")),
        include_usage=include_usage,
        prompt_tokens=max(1, words),
        tool_name=tool_name,
        texts=() if tool_name is not None else tuple(f"tok{i} " for i in range(n)),
        truncated=truncated,
    )


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _template(obj: JSON, before: bytes = b"", after: bytes = b"") -> tuple[bytes, bytes]:
    """Split the serialisation of ``obj`` around its single ``_SLOT`` string value,
    so a per-token chunk costs one ``json.dumps`` of the token only."""
    prefix, suffix = json.dumps(obj, separators=(",", ":")).split(json.dumps(_SLOT))
    return before + prefix.encode(), suffix.encode() + after


class Wire(ABC):
    """One provider's wire format for a planned answer."""

    stream_content_type: ClassVar[str] = "text/event-stream"

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    @staticmethod
    @abstractmethod
    def parse(body: JSON, config: DeploymentConfig) -> Plan: ...

    @abstractmethod
    def body(self) -> JSON: ...

    @abstractmethod
    def error(self, status: int) -> JSON: ...

    @abstractmethod
    def head(self) -> bytes:
        """Stream bytes sent before the first token."""

    @abstractmethod
    def steps(self) -> Iterator[bytes]:
        """Stream bytes, one item per token (paced, and counted by ``drop_after``)."""

    @abstractmethod
    def tail(self) -> bytes:
        """Stream bytes that terminate the stream."""


class OpenAIWire(Wire):
    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        self.id = f"chatcmpl-fake-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    @staticmethod
    def parse(body: JSON, config: DeploymentConfig) -> Plan:
        options = body.get("stream_options") or {}
        limit = body.get("max_tokens", body.get("max_completion_tokens"))
        return make_plan(body, config, limit=limit, include_usage=bool(options.get("include_usage")))

    def finish_reason(self) -> str:
        if self.plan.tool_name is not None:
            return "tool_calls"
        return "length" if self.plan.truncated else "stop"

    def usage(self) -> JSON:
        # As llama-server's (and OpenAI's): the prompt tokens served from a cache are a detail of
        # prompt_tokens (none here: every prompt counts in full).
        p, c = self.plan.prompt_tokens, self.plan.completion_tokens
        return {
            "prompt_tokens": p,
            "completion_tokens": c,
            "total_tokens": p + c,
            "prompt_tokens_details": {"cached_tokens": 0},
        }

    def tool_call(self, arguments: str) -> JSON:
        function = {"name": self.plan.tool_name, "arguments": arguments}
        return {"id": "call_fake_0", "type": "function", "function": function}

    def body(self) -> JSON:
        message: JSON = {"role": "assistant", "content": self.plan.text}
        if self.plan.tool_name is not None:
            message["content"] = None
            message["tool_calls"] = [self.tool_call(json.dumps(TOOL_ARGUMENTS))]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.plan.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason()}
            ],
            "usage": self.usage(),
        }

    def error(self, status: int) -> JSON:
        error: JSON
        if status == 429:
            error = {
                "message": "Rate limit reached (fake)",
                "type": "requests",
                "code": "rate_limit_exceeded",
            }
        else:
            error = {"message": "Internal server error (fake)", "type": "server_error", "code": None}
        return {"error": {**error, "param": None}}

    def chunk(self, delta: JSON, finish_reason: str | None = None) -> JSON:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.plan.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    def head(self) -> bytes:
        delta: JSON = {"role": "assistant", "content": ""}
        if self.plan.tool_name is not None:
            delta = {"role": "assistant", "content": None, "tool_calls": [{"index": 0, **self.tool_call("")}]}
        return b"data: " + _dumps(self.chunk(delta)) + b"\n\n"

    def steps(self) -> Iterator[bytes]:
        if self.plan.tool_name is not None:
            delta: JSON = {"tool_calls": [{"index": 0, "function": {"arguments": _SLOT}}]}
            pieces: tuple[str, ...] = TOOL_ARGUMENT_PIECES
        else:
            delta, pieces = {"content": _SLOT}, self.plan.texts
        prefix, suffix = _template(self.chunk(delta), b"data: ", b"\n\n")
        for piece in pieces:
            yield prefix + json.dumps(piece).encode() + suffix

    def tail(self) -> bytes:
        out = b"data: " + _dumps(self.chunk({}, self.finish_reason())) + b"\n\n"
        if self.plan.include_usage:
            final = self.chunk({})
            final["choices"], final["usage"] = [], self.usage()
            out += b"data: " + _dumps(final) + b"\n\n"
        return out + b"data: [DONE]\n\n"


class AnthropicWire(Wire):
    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        self.id = f"msg_fake_{uuid.uuid4().hex[:24]}"

    @staticmethod
    def parse(body: JSON, config: DeploymentConfig) -> Plan:
        return make_plan(body, config, limit=body.get("max_tokens"), include_usage=True)

    def stop_reason(self) -> str:
        if self.plan.tool_name is not None:
            return "tool_use"
        return "max_tokens" if self.plan.truncated else "end_turn"

    def block(self) -> JSON:
        if self.plan.tool_name is not None:
            return {"type": "tool_use", "id": "toolu_fake_0", "name": self.plan.tool_name, "input": {}}
        return {"type": "text", "text": ""}

    def message(self, content: list[JSON], stop_reason: str | None, output_tokens: int) -> JSON:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.plan.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            # As llama-server's (and Anthropic's): input_tokens leaves out the prompt tokens read
            # from a cache, which come apart; the prompt is their sum (none cached here).
            "usage": {
                "input_tokens": self.plan.prompt_tokens,
                "cache_read_input_tokens": 0,
                "output_tokens": output_tokens,
            },
        }

    def body(self) -> JSON:
        block = self.block()
        if self.plan.tool_name is not None:
            block["input"] = dict(TOOL_ARGUMENTS)
        else:
            block["text"] = self.plan.text
        return self.message([block], self.stop_reason(), self.plan.completion_tokens)

    def error(self, status: int) -> JSON:
        kind = "rate_limit_error" if status == 429 else "api_error"
        return {"type": "error", "error": {"type": kind, "message": f"{kind} (fake)"}}

    @staticmethod
    def event(name: str, data: JSON) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + _dumps(data) + b"\n\n"

    def head(self) -> bytes:
        start = {"type": "message_start", "message": self.message([], None, 0)}
        block = {"type": "content_block_start", "index": 0, "content_block": self.block()}
        return self.event("message_start", start) + self.event("content_block_start", block)

    def steps(self) -> Iterator[bytes]:
        if self.plan.tool_name is not None:
            delta = {"type": "input_json_delta", "partial_json": _SLOT}
            pieces: tuple[str, ...] = TOOL_ARGUMENT_PIECES
        else:
            delta, pieces = {"type": "text_delta", "text": _SLOT}, self.plan.texts
        data = {"type": "content_block_delta", "index": 0, "delta": delta}
        prefix, suffix = _template(data, b"event: content_block_delta\ndata: ", b"\n\n")
        for piece in pieces:
            yield prefix + json.dumps(piece).encode() + suffix

    def tail(self) -> bytes:
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason(), "stop_sequence": None},
            "usage": {"output_tokens": self.plan.completion_tokens},
        }
        return (
            self.event("content_block_stop", {"type": "content_block_stop", "index": 0})
            + self.event("message_delta", delta)
            + self.event("message_stop", {"type": "message_stop"})
        )


class OllamaWire(Wire):
    stream_content_type = "application/x-ndjson"

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        self.created_at = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())

    @staticmethod
    def parse(body: JSON, config: DeploymentConfig) -> Plan:
        options = body.get("options") or {}
        return make_plan(body, config, limit=options.get("num_predict"), include_usage=True)

    def line(self, message: JSON, done: bool) -> JSON:
        return {"model": self.plan.model, "created_at": self.created_at, "message": message, "done": done}

    def final(self, message: JSON) -> JSON:
        out = self.line(message, True)
        out.update(
            {
                "done_reason": "length" if self.plan.truncated else "stop",
                "total_duration": 0,
                "load_duration": 0,
                "prompt_eval_count": self.plan.prompt_tokens,
                "prompt_eval_duration": 0,
                "eval_count": self.plan.completion_tokens,
                "eval_duration": 0,
            }
        )
        return out

    def tool_message(self) -> JSON:
        call = {
            "id": "call_fake_0",
            "function": {"index": 0, "name": self.plan.tool_name, "arguments": dict(TOOL_ARGUMENTS)},
        }
        return {"role": "assistant", "content": "", "tool_calls": [call]}

    def body(self) -> JSON:
        if self.plan.tool_name is not None:
            return self.final(self.tool_message())
        return self.final({"role": "assistant", "content": self.plan.text})

    def error(self, status: int) -> JSON:
        return {"error": "rate limit exceeded (fake)" if status == 429 else "internal server error (fake)"}

    def head(self) -> bytes:
        return b""

    def steps(self) -> Iterator[bytes]:
        if self.plan.tool_name is not None:
            yield _dumps(self.line(self.tool_message(), False)) + b"\n"
            return
        prefix, suffix = _template(self.line({"role": "assistant", "content": _SLOT}, False), b"", b"\n")
        for piece in self.plan.texts:
            yield prefix + json.dumps(piece).encode() + suffix

    def tail(self) -> bytes:
        return _dumps(self.final({"role": "assistant", "content": ""})) + b"\n"


def _abort(request: web.Request) -> None:
    """Kill the connection without any terminating bytes."""
    if request.transport is not None:
        request.transport.abort()


class FakeProvider:
    """The server: configs, counters, routes and the running site."""

    def __init__(self) -> None:
        self.configs: dict[str, DeploymentConfig] = {}
        self.stats: dict[str, DeploymentStats] = {}
        self.other_requests: dict[str, int] = {}  # "METHOD /path" -> count: /api/show, unknown routes...
        self.port = 0
        self.host = "127.0.0.1"
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_post("/d/{name}/v1/chat/completions", self._provider_handler(OpenAIWire))
        self.app.router.add_post("/d/{name}/chat/completions", self._provider_handler(OpenAIWire))
        self.app.router.add_post("/d/{name}/v1/messages", self._provider_handler(AnthropicWire))
        self.app.router.add_post("/d/{name}/api/chat", self._provider_handler(OllamaWire))
        self.app.router.add_post("/d/{name}/api/show", self._ollama_show)
        self.app.router.add_get("/d/{name}/api/tags", self._ollama_tags)
        self.app.router.add_post("/_control/deployments/{name}", self._set_deployment)
        self.app.router.add_get("/_control/deployments/{name}", self._get_deployment)
        self.app.router.add_post("/_control/reset", self._reset)
        self.app.router.add_get("/_control/stats", self._stats)
        self.app.router.add_get("/_control/health", self._health)
        self.app.router.add_route("*", "/{tail:.*}", self._unhandled)

    # -- lifecycle ---------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def api_base(self, name: str, provider: str) -> str:
        """The exact ``api_base`` LiteLLM needs for deployment ``name``."""
        if provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {PROVIDERS}")
        suffix = "/v1" if provider == "openai" else ""
        return f"{self.base_url}/d/{name}{suffix}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=4096)
        self.host, self.port = host, int(sock.getsockname()[1])
        self._runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        await web.SockSite(self._runner, sock, backlog=4096).start()

    async def close(self) -> None:
        self._closing.set()  # releases "hang" requests
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- state -------------------------------------------------------------------

    def set_deployment(self, name: str, config: DeploymentConfig) -> None:
        self.configs[name] = config

    def reset(self) -> None:
        self.configs.clear()
        self.stats.clear()
        self.other_requests.clear()

    def stats_json(self) -> JSON:
        return {
            "deployments": {name: asdict(s) for name, s in self.stats.items()},
            "other_requests": dict(self.other_requests),
        }

    def _stats_for(self, name: str) -> DeploymentStats:
        stats = self.stats.get(name)
        if stats is None:
            stats = self.stats[name] = DeploymentStats()
        return stats

    # -- provider endpoints ------------------------------------------------------

    def _provider_handler(
        self, wire_cls: type[Wire]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._answer(request, wire_cls)

        return handler

    async def _answer(self, request: web.Request, wire_cls: type[Wire]) -> web.StreamResponse:
        name = request.match_info["name"]
        config = self.configs.get(name) or DeploymentConfig()
        stats = self._stats_for(name)
        stats.requests += 1
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise TypeError
            plan = wire_cls.parse(body, config)
        except (ValueError, AttributeError, TypeError):
            error = {"message": "bad request body", "type": "invalid_request_error"}
            return web.json_response({"error": error}, status=400)
        wire = wire_cls(plan)
        if plan.stream:
            stats.streams += 1
        if config.fault is not None:
            stats.faults += 1
        if config.fault == "500":
            return web.json_response(wire.error(500), status=500)
        if config.fault == "429":
            retry = config.retry_after_s
            headers = {"retry-after": f"{retry:g}", "retry-after-ms": str(int(retry * 1000))}
            return web.json_response(wire.error(429), status=429, headers=headers)
        try:
            if config.fault == "hang":
                await self._closing.wait()  # the client disconnecting cancels this handler
                _abort(request)
                return web.Response()
            if plan.stream:
                return await self._stream(request, wire, config, stats)
            if config.fault == "drop":
                _abort(request)
                return web.Response()
            delay_ms = config.first_token_delay_ms + config.token_delay_ms * plan.completion_tokens
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000)
            response = web.Response(body=_dumps(wire.body()), content_type="application/json")
            stats.completed += 1
            return response
        except (asyncio.CancelledError, ConnectionError):
            stats.disconnects += 1
            raise

    async def _stream(
        self, request: web.Request, wire: Wire, config: DeploymentConfig, stats: DeploymentStats
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": wire.stream_content_type, "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        drop_after = config.drop_after if config.fault == "drop" else -1
        await response.write(wire.head())
        for i, data in enumerate(wire.steps()):
            if i == drop_after:
                _abort(request)
                return response
            if i == config.hold_after > 0:
                await asyncio.Event().wait()  # until the client goes away
            delay_ms = config.first_token_delay_ms if i == 0 else config.token_delay_ms
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000)
            await response.write(data)
        if drop_after >= 0:  # fewer tokens than drop_after: still never terminate the stream
            _abort(request)
            return response
        await response.write(wire.tail())
        await response.write_eof()
        stats.completed += 1
        return response

    def _count_other(self, request: web.Request) -> str:
        key = f"{request.method} {request.path}"
        self.other_requests[key] = self.other_requests.get(key, 0) + 1
        return key

    async def _ollama_show(self, request: web.Request) -> web.Response:
        self._count_other(request)
        # Minimal /api/show: LiteLLM reads "template" (tool support) and "*context_length*".
        info = {"general.architecture": "fake", "fake.context_length": 32768}
        template = "{{ if .Tools }}tools{{ end }}{{ .Prompt }}"
        show = {"template": template, "model_info": info, "capabilities": ["completion", "tools"]}
        return web.json_response({**show, "modelfile": "", "parameters": "", "details": {"family": "fake"}})

    async def _ollama_tags(self, request: web.Request) -> web.Response:
        self._count_other(request)
        return web.json_response({"models": [{"name": "fake", "model": "fake", "size": 0}]})

    async def _unhandled(self, request: web.Request) -> web.Response:
        key = self._count_other(request)
        return web.json_response({"error": {"message": f"no route for {key}"}}, status=404)

    # -- control API -------------------------------------------------------------

    async def _set_deployment(self, request: web.Request) -> web.Response:
        try:
            raw = await request.read()
            config = DeploymentConfig.from_json(json.loads(raw) if raw.strip() else {})
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.set_deployment(request.match_info["name"], config)
        return web.json_response(asdict(config))

    async def _get_deployment(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(self.configs.get(request.match_info["name"]) or DeploymentConfig()))

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats_json())

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})


async def start_fake_provider(host: str = "127.0.0.1", port: int = 0) -> FakeProvider:
    """Start a fake provider on the running loop; ``await provider.close()`` to stop it."""
    provider = FakeProvider()
    await provider.start(host, port)
    return provider


class FakeProviderThread:
    """Context manager running a FakeProvider on its own event loop in a daemon thread.

    Use it when the client under test may block its event loop: e.g. LiteLLM's
    success logging does a *synchronous* ``POST {api_base}/api/show`` for Ollama
    models missing from its cost map, which deadlocks a same-loop server.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-provider", daemon=True)
        self.provider: FakeProvider | None = None

    def __enter__(self) -> FakeProvider:
        self._thread.start()
        coro = start_fake_provider(self._host, self._port)
        self.provider = asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)
        return self.provider

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.provider is not None:
            asyncio.run_coroutine_threadsafe(self.provider.close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


async def _serve(host: str, port: int) -> None:
    provider = await start_fake_provider(host, port)
    print(f"FAKE_PROVIDER_PORT={provider.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await provider.close()


HELP_EPILOG: Final = """\
Deployments (any NAME; one per deployment of your settings file) and their api_base:

  wire protocol   endpoint                                  api_base for LiteLLM
  OpenAI          POST /d/NAME/v1/chat/completions (SSE)    http://HOST:PORT/d/NAME/v1
  Anthropic       POST /d/NAME/v1/messages (SSE events)     http://HOST:PORT/d/NAME
  Ollama          POST /d/NAME/api/chat (NDJSON)            http://HOST:PORT/d/NAME
                  (+ POST /d/NAME/api/show, GET /d/NAME/api/tags)

  e.g. in settings.toml:  model = "openai/gpt-4.1-mini"
                          api_base = "http://127.0.0.1:PORT/d/fast-openai/v1"
                          api_key_env = "OPENAI_API_KEY"   (any non-empty value works)

Answers are deterministic: `tokens` tokens "tok0 tok1 ...", or one tool call to the first tool
when the request has tools. Message text and keys are never logged.

Control API (JSON):
  POST /_control/deployments/NAME   set NAME's behaviour; the body replaces it whole:
      fault                 null (answer) | "500" (HTTP 500) | "429" (HTTP 429 with retry-after)
                            | "hang" (never answer) | "drop" (cut the connection; streams after
                            drop_after tokens)
      tokens                tokens per answer (default 8)
      token_delay_ms        pause between tokens (default 0)
      first_token_delay_ms  pause before the first token (default 0)
      drop_after            tokens sent before a "drop" cuts a stream (default 2)
      retry_after_s         the retry-after of a "429" (default 1)
      hold_after            streams: hold the stream open after this many tokens (0: never)
  GET  /_control/deployments/NAME   NAME's behaviour
  POST /_control/reset              forget every behaviour and counter
  GET  /_control/stats              per deployment: requests, streams, completed, disconnects,
                                    faults; and other requests by "METHOD /path"
  GET  /_control/health             {"ok": true}

  e.g. curl -X POST localhost:PORT/_control/deployments/fast-openai -d '{"fault": "500"}'

Once listening it prints FAKE_PROVIDER_PORT=<port> on stdout; SIGTERM or Ctrl-C stops it.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m llm_pool.testing.fake_provider",
        description="A fake LLM provider for tests and offline runs: one HTTP server speaking the "
        "OpenAI, Anthropic and Ollama chat wire protocols, with per-deployment faults and pacing.",
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default: %(default)s)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()


__all__ = ["DeploymentConfig", "DeploymentStats", "FakeProvider", "FakeProviderThread", "start_fake_provider"]
