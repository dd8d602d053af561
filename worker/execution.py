"""One request, from the job's raw arguments to its reply key and final event.

Read top to bottom: ``execute`` validates the untrusted arguments into a ``CompletionRequest``,
checks the group, deadline and cancellation, calls the router (streaming chunks to the channel
through the outbox when asked to), and always ends in ``_finish``, which writes the reply key, adds
to the tenant's ledger and publishes the final event. It never raises for a request's own failure:
every outcome is a reply.
"""

from __future__ import annotations

import asyncio
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from redis.exceptions import RedisError

from llm_pool.logging import get_logger
from llm_pool.router import Completion, ProviderRejected, ProvidersUnavailable, RateLimited
from llm_pool.schemas import (
    PROVIDERS_UNAVAILABLE_MESSAGE,
    ChunkEvent,
    CompletionRequest,
    ErrorCode,
    ErrorInfo,
    ErrorReply,
    OkReply,
    ResetEvent,
    describe_validation_error,
    final_event,
    limit_violation,
    to_json,
)
from llm_pool.serialization import UndecodableJob
from worker.limits import current_minute
from worker.outbox import DUPLICATE, EVENT_REFUSED, Final, LedgerEntry
from worker.state import WorkerState

log = get_logger("worker.execution")

YIELD_EVERY_CHUNKS = 8


@dataclass(frozen=True)
class JobInfo:
    """What arq tells us about the job: its id (the request id), try number and enqueue time.

    ``cancel_requested``: whether ``P:cancel:{id}`` existed when the job was claimed (the claim
    script reads it, in the same round trip); None: not read yet, the execution asks Redis."""

    request_id: str
    attempt: int
    enqueued_ms: int
    cancel_requested: bool | None = None


class RequestFailed(Exception):
    """Ends a request with an error reply."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class _Hints:
    """What can still be read from an invalid request: where to answer and what to echo."""

    channel: str | None = None
    model: str | None = None
    tenant_id: str | None = None
    metadata: dict[str, str] | None = None

    @classmethod
    def of(cls, args: tuple[Any, ...]) -> _Hints:
        raw = args[0] if len(args) == 1 and isinstance(args[0], dict) else {}
        channel = raw.get("channel")
        model = raw.get("model")
        tenant = raw.get("tenant_id")
        metadata = raw.get("metadata")
        try:
            tenant = str(uuid.UUID(tenant)) if isinstance(tenant, str) else None
        except ValueError:
            tenant = None
        valid_metadata = isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        )
        return cls(
            channel=channel if isinstance(channel, str) and 0 < len(channel) <= 512 else None,
            model=model if isinstance(model, str) and len(model) <= 128 else None,
            tenant_id=tenant,
            metadata=metadata if valid_metadata else None,
        )


def _first_line(exc: BaseException, limit: int = 200) -> str:
    return (str(exc).splitlines() or [""])[0][:limit]


def parse_request(args: tuple[Any, ...], kwargs: dict[str, Any]) -> CompletionRequest:
    """The job's single positional argument as a request, or ``RequestFailed(invalid_request)``."""
    if len(args) == 1 and isinstance(args[0], UndecodableJob):
        raise RequestFailed(ErrorCode.INVALID_REQUEST, args[0].reason)
    if kwargs or len(args) != 1:
        raise RequestFailed(
            ErrorCode.INVALID_REQUEST,
            f"expected exactly one positional argument (the request object), got {len(args)} "
            f"positional and {len(kwargs)} keyword arguments",
        )
    if not isinstance(args[0], dict):
        raise RequestFailed(ErrorCode.INVALID_REQUEST, "the request must be a JSON object")
    try:
        return CompletionRequest.model_validate(args[0])
    except ValidationError as exc:
        raise RequestFailed(ErrorCode.INVALID_REQUEST, describe_validation_error(exc)) from None


class Execution:
    """Runs one job to its final state."""

    def __init__(self, state: WorkerState, job: JobInfo, stream: bool) -> None:
        self._state = state
        self._job = job
        self._stream = stream
        self._started = time.monotonic()
        self._out = state.outbox.writer()
        self._attempt = job.attempt
        self._log = log.bind(request_id=job.request_id, worker_id=state.worker_id, attempt=job.attempt)

    async def execute(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Run the request to its end; the reply as written to the reply key.

        Raises only if the reply itself could not be written (``Outbox.finish``)."""
        self._state.counters.running += 1
        try:
            return await self._execute(tuple(args), kwargs)
        finally:
            self._state.counters.running -= 1

    async def _execute(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        hints = _Hints.of(args)
        request: CompletionRequest | None = None
        try:
            max_tries = self._state.settings.worker.max_tries
            if self._job.attempt > max_tries:
                # Every earlier run stopped before the end (killed, out of memory, Redis lost...).
                raise RequestFailed(
                    ErrorCode.INTERNAL,
                    f"the request was started {self._job.attempt - 1} times and never finished (its "
                    f"worker stopped or lost Redis each time; worker.max_tries is {max_tries}); "
                    "it is not run again",
                )
            request = parse_request(args, kwargs)
            limits = self._state.settings.worker
            too_big = limit_violation(request, limits.max_messages, limits.max_tools)
            if too_big is not None:
                raise RequestFailed(ErrorCode.INVALID_REQUEST, too_big)
            if request.channel is not None and not self._channel_allowed(request.channel):
                patterns = ", ".join(limits.allowed_channels)
                raise RequestFailed(
                    ErrorCode.INVALID_REQUEST,
                    f"channel: not an allowed channel (worker.allowed_channels: {patterns})",
                )
            self._log = self._log.bind(tenant_id=request.tenant_id, group=request.model)
            reply: OkReply | ErrorReply = await self._run(request)
        except RequestFailed as failure:
            reply = self._error_reply(failure.code, failure.message, request, hints)
        except RedisError as exc:
            # Redis refused or lost a command of ours (an ACL, a full Redis...): still an answer.
            self._log.error("request_redis_error", error=type(exc).__name__)
            message = (
                f"Redis refused a command while the request ran: {type(exc).__name__}: {_first_line(exc)}"
            )
            reply = self._error_reply(ErrorCode.INTERNAL, message, request, hints)
        except Exception as exc:
            # Where, not what: an exception's message may quote the request.
            frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            where = f"{frame.filename}:{frame.lineno}" if frame else "?"
            self._log.error("request_failed_unexpectedly", error=type(exc).__name__, where=where)
            message = f"the worker failed while running the request: {type(exc).__name__}"
            reply = self._error_reply(ErrorCode.INTERNAL, message, request, hints)
        # The request's own channel if it is allowed (a refused one gets its error event here).
        wanted = request.channel if request is not None else hints.channel
        channel = wanted if wanted is not None and self._channel_allowed(wanted) else self._default_channel()
        tenant = request.tenant_id if request else hints.tenant_id
        await self._finish(reply, channel, tenant)
        return reply.model_dump(mode="json")

    def _channel_allowed(self, channel: str) -> bool:
        return self._state.keys.channel_allowed(channel, self._state.settings.worker.allowed_channels)

    def _default_channel(self) -> str:
        return self._state.keys.stream(self._job.request_id)

    # --- the request's path -------------------------------------------------------------------

    async def _run(self, request: CompletionRequest) -> OkReply:
        group = self._check_group(request.model)
        deadline_s = self._deadline_s(request)
        remaining = deadline_s - time.time()
        if remaining <= 0:
            raise RequestFailed(ErrorCode.TIMEOUT, "the request's deadline passed while it was queued")
        if await self._cancel_requested():
            raise RequestFailed(ErrorCode.CANCELLED, "cancelled by the caller before it started")
        limits = self._state.settings.tenants.limits_for(request.tenant_id)
        refusal = await self._state.limiter.admit(request.tenant_id, limits)
        if refusal is not None:
            raise RequestFailed(ErrorCode.OVER_BUDGET, refusal.message(request.tenant_id))
        queued_ms = self._queued_ms()
        self._log.info("request_started", stream=self._stream, queued_ms=queued_ms)
        metrics = self._state.metrics
        metrics.queue_wait.observe(queued_ms / 1000)
        if self._job.attempt > 1:
            metrics.retries.labels(metrics.group(request.model), "rerun").inc()
        # The call runs in this task (no task of its own to wait for: the reply is written as soon
        # as the stream ends, before the loop turns to anything else); a cancel cancels this task.
        task = asyncio.current_task()
        assert task is not None
        self._state.cancels.watch(self._job.request_id, task)
        try:
            async with asyncio.timeout(remaining):
                completion = await self._call(group, request)
        except TimeoutError:
            raise RequestFailed(ErrorCode.TIMEOUT, "the request's deadline passed while it ran") from None
        except asyncio.CancelledError:
            if self._state.cancels.unwatch(self._job.request_id):
                task.uncancel()
                raise RequestFailed(ErrorCode.CANCELLED, "cancelled by the caller") from None
            raise
        except ProvidersUnavailable as exc:
            # The message names the deployments tried and how each failed; never a key or any text.
            self._log.warning(
                "providers_unavailable", error=exc.reason, status_code=exc.status_code, tried=exc.message
            )
            raise RequestFailed(ErrorCode.PROVIDERS_UNAVAILABLE, exc.message) from None
        except ProviderRejected as exc:
            raise RequestFailed(ErrorCode.INVALID_REQUEST, str(exc)) from None
        finally:
            self._state.cancels.unwatch(self._job.request_id)
        deployment = completion.deployment
        return OkReply(
            request_id=self._job.request_id,
            content=completion.content,
            tool_calls=completion.tool_calls,
            finish_reason=completion.finish_reason,
            model=request.model,
            served_by=deployment.model,
            fallback=deployment.group != request.model,
            usage=completion.usage,
            attempt=self._attempt,
            latency_ms=self._latency_ms(),
            metadata=request.metadata or {},
        )

    async def _cancel_requested(self) -> bool:
        if self._job.cancel_requested is not None:
            return self._job.cancel_requested
        return await self._state.cancels.is_requested(self._job.request_id)

    def _check_group(self, group: str) -> str:
        router = self._state.router
        if router.has_group(group):
            return group
        configured = self._state.settings.groups
        if group in configured:
            # Configured, but every deployment lacked its key: its fallbacks may still answer.
            for target in self._state.settings.router.fallbacks.get(group, []):
                if router.has_group(target):
                    return target
            skipped = ", ".join(sorted({d.api_key_env or d.model for d in configured[group]}))
            raise RequestFailed(
                ErrorCode.PROVIDERS_UNAVAILABLE,
                f"{PROVIDERS_UNAVAILABLE_MESSAGE}; no deployment of group {group!r} has its API key "
                f"({skipped} unset at the worker's start) and no fallback group is usable",
            )
        known = ", ".join(sorted(configured)) or "none"
        raise RequestFailed(ErrorCode.INVALID_REQUEST, f"model: unknown model group (known groups: {known})")

    def _deadline_s(self, request: CompletionRequest) -> float:
        limits = self._state.settings.worker
        timeout_s = request.timeout_s if request.timeout_s is not None else limits.default_timeout_s
        if timeout_s > limits.max_timeout_s:
            raise RequestFailed(
                ErrorCode.INVALID_REQUEST, f"timeout_s: must be at most {limits.max_timeout_s:g} seconds"
            )
        return self._job.enqueued_ms / 1000 + timeout_s

    async def _call(self, group: str, request: CompletionRequest) -> Completion:
        retries = self._state.settings.router.rate_limit_retries
        cap_s = self._state.settings.router.max_retry_after_s
        while True:
            try:
                if not self._stream:
                    return await self._state.router.complete(group, request)
                return await self._stream_to_channel(group, request)
            except RateLimited as limited:
                # Every deployment said 429: wait as long as the provider asked, then try again
                # (the request's deadline still bounds the whole thing).
                if retries <= 0:
                    raise
                retries -= 1
                wait_s = min(limited.retry_after_s, cap_s)
                metrics = self._state.metrics
                metrics.retries.labels(metrics.group(request.model), "rate_limited").inc()
                self._log.info("rate_limited_waiting", retry_after_s=wait_s)
                await asyncio.sleep(wait_s)

    async def _stream_to_channel(self, group: str, request: CompletionRequest) -> Completion:
        state = self._state
        channel = request.channel or self._default_channel()
        if self._job.attempt > 1:
            # An earlier attempt may have published chunks before its worker died.
            await self._publish(channel, ResetEvent(request_id=self._job.request_id, attempt=self._attempt))
        groups = [group, *state.settings.router.fallbacks.get(group, [])]
        resumes = 0
        while True:
            target = groups[min(resumes, len(groups) - 1)]
            call = state.router.stream(target, request)
            seq = 0
            try:
                async for piece in call:
                    if seq == 0 and resumes == 0:
                        state.metrics.ttft.labels(state.metrics.group(request.model)).observe(
                            time.monotonic() - self._started
                        )
                    await self._publish(
                        channel, ChunkEvent(text=piece.text, request_id=self._job.request_id, seq=seq)
                    )
                    seq += 1
                    if seq % YIELD_EVERY_CHUNKS == 0:
                        # A provider that sends faster than we parse never makes the iteration
                        # wait, so yield now and then: otherwise one stream could starve the others.
                        await asyncio.sleep(0)
                return call.result()
            except ProvidersUnavailable as exc:
                settings = state.settings.worker
                if seq == 0 and resumes < settings.max_stream_resumes:
                    resumes += 1  # nothing was shown yet: try again invisibly
                    continue
                if not settings.resume_partial_streams or resumes >= settings.max_stream_resumes:
                    raise
                resumes += 1
                self._attempt += 1
                self._log.warning("stream_resumed", error=exc.reason, chunks_lost=seq)
                state.metrics.retries.labels(state.metrics.group(request.model), "stream_resumed").inc()
                await self._publish(
                    channel, ResetEvent(request_id=self._job.request_id, attempt=self._attempt)
                )

    async def _publish(self, channel: str, event: ChunkEvent | ResetEvent) -> None:
        await self._out.publish(channel, to_json(event))

    # --- the end of every request ---------------------------------------------------------------

    def _error_reply(
        self, code: ErrorCode, message: str, request: CompletionRequest | None, hints: _Hints
    ) -> ErrorReply:
        return ErrorReply(
            request_id=self._job.request_id,
            error=ErrorInfo(code=code, message=message),
            model=request.model if request else hints.model,
            attempt=self._attempt,
            latency_ms=self._latency_ms(),
            metadata=(request.metadata if request else hints.metadata) or {},
        )

    async def _finish(self, reply: OkReply | ErrorReply, channel: str, tenant_id: str | None) -> None:
        state = self._state
        ledger = None
        if tenant_id is not None:
            usage = reply.usage if isinstance(reply, OkReply) else None
            counts_tokens = usage is not None and state.settings.tenants.limits_for(tenant_id).tpm > 0
            ledger = LedgerEntry(
                key=state.keys.usage(tenant_id),
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                cost_usd=usage.cost_usd if usage else 0.0,
                ttl_s=state.settings.worker.ledger_ttl_days * 86400,
                tpm_key=state.keys.rate(tenant_id, "tpm", current_minute()) if counts_tokens else None,
            )
        status = await self._out.finish(
            Final(
                reply_key=state.keys.reply(self._job.request_id),
                reply_json=to_json(reply),
                reply_ttl_s=state.settings.worker.reply_ttl_s,
                channel=channel,
                event_json=to_json(final_event(reply)),
                ledger=ledger,
            )
        )
        if status == EVENT_REFUSED:
            self._log.warning("final_event_refused", detail="the reply is written; Redis refused its PUBLISH")
        self._count(reply)
        if isinstance(reply, OkReply):
            state.counters.finished_ok()
            self._log.info(
                "request_finished",
                status="ok",
                served_by=reply.served_by,
                fallback=reply.fallback,
                prompt_tokens=reply.usage.prompt_tokens,
                completion_tokens=reply.usage.completion_tokens,
                cost_usd=reply.usage.cost_usd,
                latency_ms=reply.latency_ms,
                duplicate=status == DUPLICATE,
            )
        else:
            state.counters.finished_with(reply.error.code)
            self._log.info(
                "request_finished",
                status="error",
                code=reply.error.code.value,
                latency_ms=reply.latency_ms,
                duplicate=status == DUPLICATE,
            )

    def _count(self, reply: OkReply | ErrorReply) -> None:
        metrics = self._state.metrics
        group = metrics.group(reply.model)
        metrics.latency.labels(group).observe(reply.latency_ms / 1000)
        if isinstance(reply, ErrorReply):
            metrics.requests.labels(group, reply.error.code.value, "").inc()
            return
        metrics.requests.labels(group, "ok", reply.served_by).inc()
        metrics.tokens.labels(group, "prompt").inc(reply.usage.prompt_tokens)
        metrics.tokens.labels(group, "completion").inc(reply.usage.completion_tokens)
        metrics.cost.labels(group).inc(reply.usage.cost_usd)
        if reply.fallback:
            metrics.fallbacks.labels(group).inc()

    def _latency_ms(self) -> int:
        return int((time.monotonic() - self._started) * 1000)

    def _queued_ms(self) -> int:
        return max(0, int(time.time() * 1000) - self._job.enqueued_ms)
