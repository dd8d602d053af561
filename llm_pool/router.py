"""The LiteLLM Router built from the settings, and the two calls the worker makes through it.

``PoolRouter`` owns the ``litellm.Router``: it knows which deployment belongs to which group, so a
response can say who served it and whether a fallback group answered, and it turns LiteLLM's
responses and stream chunks into the pool's own plain types (``Completion``, ``StreamPiece``).

When every deployment fails, ``ProvidersUnavailable.message`` says which deployments were tried
(model and api_base host) and how each failed (connection refused, timeout, auth, HTTP status),
never a key or any request text: each failed attempt is recorded by a LiteLLM failure callback
into a list that only the request's own task sees (a context variable).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from llm_pool.litellm_setup import CustomLogger, RetryPolicy, litellm
from llm_pool.logging import get_logger
from llm_pool.schemas import PROVIDERS_UNAVAILABLE_MESSAGE, CompletionRequest, FunctionCall, ToolCall, Usage
from llm_pool.settings import Deployment, Settings

log = get_logger(__name__)


@dataclass(frozen=True)
class Attempt:
    """One failed call to one deployment: where it went and how it failed (no key, no text)."""

    deployment: DeploymentInfo | None
    failure: str

    def where(self) -> str:
        if self.deployment is None:
            return "no deployment (the router refused before calling one)"
        return f"[{self.deployment.group}] {self.deployment.model} at {self.deployment.host}"


def describe_attempts(attempts: list[Attempt]) -> str:
    """``All providers unavailable; tried: [fast] M at HOST: connection refused x3; ...``, in the
    order the deployments were first tried; repeated failures of one kind are counted."""
    counts: dict[tuple[str, str], int] = {}
    for attempt in attempts:
        key = (attempt.where(), attempt.failure)
        counts[key] = counts.get(key, 0) + 1
    if not counts:
        return PROVIDERS_UNAVAILABLE_MESSAGE
    tried = "; ".join(
        f"{where}: {failure}" + (f" x{n}" if n > 1 else "") for (where, failure), n in counts.items()
    )
    return f"{PROVIDERS_UNAVAILABLE_MESSAGE}; tried: {tried}"


class ProvidersUnavailable(Exception):
    """Every deployment of the group and of its fallbacks failed.

    ``reason`` (the exception type) is for logs; ``message`` is what the reply says: the
    deployments tried and how each failed."""

    def __init__(
        self, reason: str, status_code: int | None = None, attempts: list[Attempt] | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code
        self.attempts = list(attempts or [])

    @property
    def message(self) -> str:
        return describe_attempts(self.attempts)


class RateLimited(ProvidersUnavailable):
    """Every deployment answered 429; ``retry_after_s`` is what the provider asked us to wait."""

    def __init__(self, reason: str, retry_after_s: float, attempts: list[Attempt] | None = None) -> None:
        super().__init__(reason, 429, attempts)
        self.retry_after_s = retry_after_s


def _retry_after_s(exc: BaseException, default: float = 1.0) -> float:
    headers: Any = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    if headers is None:
        return default
    try:
        if headers.get("retry-after-ms") is not None:
            return float(headers["retry-after-ms"]) / 1000
        if headers.get("retry-after") is not None:
            return float(headers["retry-after"])
    except (TypeError, ValueError):
        pass  # an HTTP date or garbage: use the default
    return default


class ProviderRejected(Exception):
    """A provider refused the request itself (HTTP 400/422): retrying elsewhere would not help."""


@dataclass(frozen=True)
class DeploymentInfo:
    id: str
    group: str
    model: str
    input_cost_per_token: float | None = None
    output_cost_per_token: float | None = None
    # Host (and port) of the deployment's api_base, without any credentials or path.
    host: str = "the provider's default api_base"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        if self.input_cost_per_token is None and self.output_cost_per_token is None:
            return None
        return prompt_tokens * (self.input_cost_per_token or 0.0) + completion_tokens * (
            self.output_cost_per_token or 0.0
        )


@dataclass
class Completion:
    """A finished answer, whichever way it was obtained."""

    content: str
    tool_calls: list[ToolCall]
    finish_reason: str | None
    deployment: DeploymentInfo
    usage: Usage


@dataclass
class StreamPiece:
    """One provider chunk reduced to what the pool uses: a text delta, or nothing visible."""

    text: str = ""


@dataclass
class _ToolCallBuilder:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


def _error_status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what it was raised from, outermost first (LiteLLM wraps httpx/aiohttp)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def failure_kind(exc: BaseException | None) -> str:
    """How a call to a deployment failed, in a few words and without the exception's text (which
    may quote the request or echo a key): connection refused, timeout, auth, HTTP status..."""
    if exc is None:
        return "failed"
    chain = list(_causes(exc))
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "connection refused"
    if any(isinstance(e, (litellm.Timeout, asyncio.TimeoutError, TimeoutError)) for e in chain):
        return "timeout"
    status = _error_status(exc)
    if status in (401, 403) or isinstance(exc, (litellm.AuthenticationError, litellm.PermissionDeniedError)):
        return f"auth refused (HTTP {status})" if status else "auth refused"
    if any(isinstance(e, ConnectionResetError) for e in chain):
        return "connection reset"
    if isinstance(exc, litellm.APIConnectionError):
        return "connection failed"
    if status is not None:
        return f"HTTP {status}"
    return type(exc).__name__


# Failures that trying the same deployment again would not cure: refused or reset connections
# (LiteLLM's default class), timeouts, rejected keys, unknown models. Retrying them in place cost
# seconds of backoff when a group's only deployment was down (no Ollama running, say).
NOT_RETRIED_IN_PLACE = RetryPolicy(
    DefaultRetries=0, AuthenticationErrorRetries=0, TimeoutErrorRetries=0, NotFoundErrorRetries=0
)

# The failed attempts of the request running in this task (None outside PoolRouter's calls).
_ATTEMPTS: ContextVar[list[tuple[str, str]] | None] = ContextVar("llm_pool_attempts", default=None)


class _AttemptRecorder(CustomLogger):  # type: ignore[misc]  # LiteLLM's types are skipped (Any)
    """LiteLLM calls this once per failed deployment call, retries and fallbacks included, in the
    task that made the call, before the Router moves on: it notes the deployment id and how it
    failed in that task's list."""

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        attempts = _ATTEMPTS.get()
        if attempts is None:
            return
        params = kwargs.get("litellm_params") or {}
        model_info = params.get("model_info") or {}
        attempts.append((str(model_info.get("id")), failure_kind(kwargs.get("exception"))))


_RECORDER = _AttemptRecorder()
litellm.logging_callback_manager.add_litellm_async_failure_callback(_RECORDER)


@contextlib.contextmanager
def _recording() -> Iterator[list[tuple[str, str]]]:
    """Collect the failed attempts of the calls made inside the block (in this task only)."""
    attempts: list[tuple[str, str]] = []
    token = _ATTEMPTS.set(attempts)
    try:
        yield attempts
    finally:
        _ATTEMPTS.reset(token)


def _host(api_base: str | None) -> str | None:
    """``host[:port]`` of an api_base URL; never its user name, password, path or query."""
    if not api_base:
        return None
    try:
        parts = urlsplit(api_base)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host:
        return None
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host


def _prices(deployment: Deployment) -> tuple[float | None, float | None]:
    """Per-token prices: the settings' own, else LiteLLM's price list once at start-up, else 0
    for a local Ollama model; (None, None) when LiteLLM does not know the model either."""
    if deployment.input_cost_per_token is not None or deployment.output_cost_per_token is not None:
        return deployment.input_cost_per_token or 0.0, deployment.output_cost_per_token or 0.0
    if deployment.is_ollama:
        return 0.0, 0.0
    try:
        info = litellm.get_model_info(model=deployment.model)
    except Exception:  # LiteLLM raises a plain Exception for a model it has no price for
        return None, None
    return info.get("input_cost_per_token"), info.get("output_cost_per_token")


class PoolRouter:
    """A ``litellm.Router`` over the configured groups, with fallbacks, retries and timeouts."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._deployments: dict[str, DeploymentInfo] = {}
        model_list: list[dict[str, Any]] = []
        self.skipped: list[str] = []
        for group, deployments in settings.groups.items():
            for index, deployment in enumerate(deployments):
                entry = self._model_entry(group, index, deployment, env)
                if entry is not None:
                    model_list.append(entry)
        self.groups: list[str] = sorted({d.group for d in self._deployments.values()})
        fallbacks = [
            {group: [t for t in targets if t in self.groups]}
            for group, targets in settings.router.fallbacks.items()
            if group in self.groups and any(t in self.groups for t in targets)
        ]
        self._fallbacks = {k: v for entry in fallbacks for k, v in entry.items()}
        self._router = litellm.Router(
            model_list=model_list,
            fallbacks=fallbacks,
            num_retries=settings.router.num_retries,
            # With retries on, a failed deployment makes the Router try the group's other
            # deployments, each once, before the fallback groups (weighted failover); 429s and
            # 5xx answers follow LiteLLM's own retry rules within router.num_retries.
            enable_weighted_failover=settings.router.num_retries > 0,
            retry_policy=NOT_RETRIED_IN_PLACE,
            timeout=settings.router.timeout_s,
            stream_timeout=settings.router.stream_timeout_s,
            allowed_fails=settings.router.allowed_fails,
            cooldown_time=settings.router.cooldown_time_s,
            disable_cooldowns=settings.router.cooldown_time_s == 0,
            retry_after=int(settings.router.retry_after_s),
        )

    def _classify(self, exc: Exception, attempts: list[tuple[str, str]]) -> Exception:
        """Map an exception from the Router to the pool's two provider outcomes."""
        status = _error_status(exc)
        if isinstance(exc, litellm.ContextWindowExceededError):
            return ProviderRejected("the messages do not fit the model's context window")
        if status in (400, 422) and not isinstance(exc, litellm.exceptions.NotFoundError):
            return ProviderRejected(f"the provider rejected the request (HTTP {status})")
        tried = [
            Attempt(self._deployments.get(deployment_id), failure) for deployment_id, failure in attempts
        ]
        if not tried:  # refused before any deployment was called (all cooling down, say)
            tried = [Attempt(None, failure_kind(exc))]
        if status == 429:
            return RateLimited(type(exc).__name__, _retry_after_s(exc), tried)
        return ProvidersUnavailable(type(exc).__name__, status, tried)

    def _model_entry(
        self, group: str, index: int, deployment: Deployment, env: Mapping[str, str]
    ) -> dict[str, Any] | None:
        params = deployment.litellm_params()
        if deployment.api_key_env:
            key = env.get(deployment.api_key_env)
            if not key:
                self.skipped.append(f"{group}[{index}] {deployment.model}")
                log.warning(
                    "deployment_skipped",
                    group=group,
                    deployment=deployment.model,
                    reason=f"environment variable {deployment.api_key_env} is not set",
                )
                return None
            params["api_key"] = key
        deployment_id = f"{group}-{index}"
        input_cost, output_cost = _prices(deployment)
        if input_cost is not None and output_cost is not None:
            # Explicit prices spare LiteLLM a model-info lookup on every call and every stream
            # (a third of its per-request CPU here), and keep cost the same as LiteLLM's pricing.
            params["input_cost_per_token"] = input_cost
            params["output_cost_per_token"] = output_cost
        self._deployments[deployment_id] = DeploymentInfo(
            id=deployment_id,
            group=group,
            model=deployment.model,
            input_cost_per_token=input_cost,
            output_cost_per_token=output_cost,
            host=_host(deployment.api_base) or DeploymentInfo.host,
        )
        return {"model_name": group, "litellm_params": params, "model_info": {"id": deployment_id}}

    async def warm_up(self) -> None:
        """Run LiteLLM's code paths once without the network (``mock_response``).

        LiteLLM imports and builds much of itself lazily on the first call: a cold worker's first
        stream took 0.8 s here instead of 30 ms. Warming up before the first heartbeat means a
        worker that announces itself is ready to serve at full speed.
        """
        messages = [{"role": "user", "content": "warm-up"}]
        for group in self.groups:
            for stream in (False, True):
                extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if stream else {}
                try:
                    response = await self._router.acompletion(
                        model=group, messages=messages, mock_response="ok", stream=stream, **extra
                    )
                    if stream:
                        async for _ in response:
                            pass
                except Exception as exc:  # a warm-up failure only costs speed, never start-up
                    log.warning("warm_up_failed", group=group, error=type(exc).__name__)

    def has_group(self, group: str) -> bool:
        return group in self.groups

    def deployment(self, hidden_params: Mapping[str, Any] | None) -> DeploymentInfo:
        model_id = (hidden_params or {}).get("model_id")
        info = self._deployments.get(str(model_id))
        if info is None:
            raise ProvidersUnavailable(f"response came from an unknown deployment {model_id!r}")
        return info

    def usage_of(self, deployment: DeploymentInfo, raw: Any, reported_cost: Any) -> Usage:
        prompt = int(getattr(raw, "prompt_tokens", 0) or 0)
        completion = int(getattr(raw, "completion_tokens", 0) or 0)
        cost = deployment.cost(prompt, completion)
        if cost is None:
            cost = float(reported_cost) if isinstance(reported_cost, (int, float)) else 0.0
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=int(getattr(raw, "total_tokens", 0) or prompt + completion),
            cost_usd=cost,
        )

    async def complete(self, group: str, request: CompletionRequest) -> Completion:
        """One non-streamed completion; raises ``ProvidersUnavailable`` or ``ProviderRejected``."""
        with _recording() as attempts:
            try:
                response = await self._router.acompletion(model=group, **request.provider_kwargs())
            except Exception as exc:  # LiteLLM raises many types; classify them all
                raise self._classify(exc, attempts) from exc
        hidden = getattr(response, "_hidden_params", {}) or {}
        deployment = self.deployment(hidden)
        choice = response.choices[0]
        message = choice.message
        tool_calls = [
            ToolCall(
                id=str(tc.id or f"call_{i}"),
                function=FunctionCall(name=str(tc.function.name), arguments=str(tc.function.arguments or "")),
            )
            for i, tc in enumerate(getattr(message, "tool_calls", None) or [])
        ]
        return Completion(
            content=str(message.content or ""),
            tool_calls=tool_calls,
            finish_reason=choice.finish_reason,
            deployment=deployment,
            usage=self.usage_of(deployment, getattr(response, "usage", None), hidden.get("response_cost")),
        )

    def stream(self, group: str, request: CompletionRequest) -> StreamCall:
        """A streamed completion: iterate it for text pieces, then read ``result``."""
        return StreamCall(self, group, request)

    async def open_stream(self, group: str, request: CompletionRequest) -> Any:
        with _recording() as attempts:
            try:
                return await self._router.acompletion(
                    model=group,
                    stream=True,
                    stream_options={"include_usage": True},
                    **request.provider_kwargs(),
                )
            except Exception as exc:
                raise self._classify(exc, attempts) from exc

    def classify_stream_failure(self, exc: Exception, deployment: DeploymentInfo) -> Exception:
        """A failure of an open stream: the deployment that was streaming, and how it broke."""
        return self._classify(exc, [(deployment.id, failure_kind(exc))])


class StreamCall:
    """One streamed call through the Router: yields text deltas, assembles tool calls and usage.

    The Router retries and falls back only until the stream is open; once it is, a failure is
    raised from the iteration as ``ProvidersUnavailable`` and ``pieces_seen`` tells the caller
    whether anything was already delivered.
    """

    def __init__(self, router: PoolRouter, group: str, request: CompletionRequest) -> None:
        self._router = router
        self._group = group
        self._request = request
        self._content: list[str] = []
        self._tools: dict[int, _ToolCallBuilder] = {}
        self._finish_reason: str | None = None
        self._raw_usage: Any = None
        self._reported_cost: Any = None
        self._deployment: DeploymentInfo | None = None

    async def __aiter__(self) -> AsyncIterator[StreamPiece]:
        wrapper = await self._router.open_stream(self._group, self._request)
        deployment = self._deployment = self._router.deployment(getattr(wrapper, "_hidden_params", None))
        try:
            async for chunk in wrapper:
                piece = self._absorb(chunk)
                if piece is not None:
                    yield piece
        except Exception as exc:
            raise self._router.classify_stream_failure(exc, deployment) from exc
        finally:
            close = getattr(wrapper, "aclose", None)
            if close is not None:
                # Closing a broken stream may fail again; the first error is the one that counts.
                with contextlib.suppress(Exception):
                    await close()

    def _absorb(self, chunk: Any) -> StreamPiece | None:
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self._raw_usage = usage
            hidden = getattr(chunk, "_hidden_params", None) or {}
            self._reported_cost = getattr(usage, "cost", None) or hidden.get("response_cost")
        choices = getattr(chunk, "choices", None) or []
        if not choices:
            return None
        choice = choices[0]
        if choice.finish_reason:
            self._finish_reason = choice.finish_reason
        delta = choice.delta
        for tc in getattr(delta, "tool_calls", None) or []:
            index = int(getattr(tc, "index", 0) or 0)
            builder = self._tools.setdefault(index, _ToolCallBuilder())
            builder.id = builder.id or str(tc.id or "")
            function = getattr(tc, "function", None)
            if function is not None:
                builder.name = builder.name or str(function.name or "")
                if function.arguments:
                    builder.arguments.append(str(function.arguments))
        text = getattr(delta, "content", None)
        if text:
            self._content.append(text)
            return StreamPiece(text=text)
        return None

    def result(self) -> Completion:
        if self._deployment is None:
            raise RuntimeError("the stream was never opened")
        tool_calls = [
            ToolCall(
                id=b.id or f"call_{i}",
                function=FunctionCall(name=b.name, arguments="".join(b.arguments)),
            )
            for i, b in sorted(self._tools.items())
        ]
        return Completion(
            content="".join(self._content),
            tool_calls=tool_calls,
            finish_reason=self._finish_reason,
            deployment=self._deployment,
            usage=self._router.usage_of(self._deployment, self._raw_usage, self._reported_cost),
        )
