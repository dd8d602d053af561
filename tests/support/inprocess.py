"""The fast tier's worker: the worker's own start-up (worker/lifecycle.py) run in this process,
against the shared Redis under a key prefix of its own, with LiteLLM's ``mock_response``
deployments in place of providers (no network, no subprocess).

Each group of ``MOCK_GROUPS`` behaves one way, so a test picks the outcome by the request's model.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from llm_pool.settings import Settings
from tests.helpers import ALLOWED_CHANNELS, REDIS_URL, TENANT, user
from tests.plain import Listener
from worker.execution import Execution, JobInfo
from worker.lifecycle import Services, start_services, stop_services
from worker.state import WorkerState

# LiteLLM streams a mock response in pieces of three characters.
MOCK_TEXT = "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 "
MOCK_PIECES = [MOCK_TEXT[i : i + 3] for i in range(0, len(MOCK_TEXT), 3)]
SLOW_S = 1.0  # how long the "slow" group takes to answer (paid twice at start-up: the warm-up)
PRICE_IN, PRICE_OUT = 1e-6, 2e-6

MOCK_GROUPS: dict[str, list[dict[str, Any]]] = {
    "fast": [
        {
            "model": "openai/gpt-4.1-mini",
            "mock_response": MOCK_TEXT,
            "input_cost_per_token": PRICE_IN,
            "output_cost_per_token": PRICE_OUT,
        }
    ],
    # Every deployment fails with HTTP 500; router.fallbacks sends it on to "fast".
    "quality": [{"model": "openai/gpt-4.1", "mock_response": "litellm.InternalServerError"}],
    "failing": [{"model": "openai/gpt-4.1", "mock_response": "litellm.InternalServerError"}],
    "refusing": [{"model": "openai/gpt-4.1", "mock_response": "litellm.ContextWindowExceededError"}],
    "limited": [{"model": "openai/gpt-4.1", "mock_response": "litellm.RateLimitError"}],
    "slow": [{"model": "openai/gpt-4.1", "mock_response": MOCK_TEXT, "mock_delay": SLOW_S}],
}

# A tenant allowed one request per minute (any other tenant has no limits).
RPM_TENANT = str(uuid.uuid4())
RPM_LIMIT = 1
RATE_LIMIT_RETRIES = 1


def mock_settings(prefix: str, redis_url: str = REDIS_URL) -> Settings:
    return Settings.model_validate(
        {
            "redis": {"url": redis_url, "key_prefix": prefix},
            "worker": {
                "allowed_channels": ALLOWED_CHANNELS,
                "heartbeat_interval_s": 1,
                "max_messages": 20,
                "max_tools": 2,
                "max_timeout_s": 60,
                "default_timeout_s": 30,
                "log_format": "json",
            },
            "router": {
                "num_retries": 0,
                "cooldown_time_s": 0,
                "rate_limit_retries": RATE_LIMIT_RETRIES,
                "max_retry_after_s": 0.05,
                "fallbacks": {"quality": ["fast"]},
            },
            "tenants": {"overrides": {RPM_TENANT: {"rpm": RPM_LIMIT}}},
            "groups": MOCK_GROUPS,
        }
    )


def request(model: str = "fast", **overrides: Any) -> dict[str, Any]:
    """A valid request object (contract section 1) for one of ``MOCK_GROUPS``."""
    return {"model": model, "messages": user(), "tenant_id": TENANT, **overrides}


def now_ms() -> int:
    return int(time.time() * 1000)


class InProcessWorker:
    """The state a worker process holds (``WorkerState``), built and torn down by the worker's own
    ``start_services``/``stop_services``; requests run through ``Execution`` as the runner runs them."""

    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self._services: Services | None = None

    @property
    def state(self) -> WorkerState:
        assert self._services is not None, "start() first"
        return self._services.state

    async def start(self) -> None:
        self._services = await start_services(self.settings, self.redis)

    async def stop(self) -> None:
        if self._services is not None:
            await stop_services(self._services)

    async def execute(
        self,
        *args: Any,
        stream: bool = False,
        request_id: str | None = None,
        attempt: int = 1,
        enqueued_ms: int | None = None,
        kwargs: dict[str, Any] | None = None,
        cancel_requested: bool | None = None,
    ) -> dict[str, Any]:
        """One job with these positional arguments, as ``complete``/``complete_stream`` run it
        (``cancel_requested``: what the claim read of the cancel key; None: the execution asks)."""
        job = JobInfo(
            request_id=request_id or uuid.uuid4().hex,
            attempt=attempt,
            enqueued_ms=now_ms() if enqueued_ms is None else enqueued_ms,
            cancel_requested=cancel_requested,
        )
        return await Execution(self.state, job, stream).execute(args, kwargs or {})

    async def run(
        self,
        *args: Any,
        stream: bool = False,
        channel: str | None = None,
        request_id: str | None = None,
        **job: Any,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Run one job (``execute``'s arguments) while listening to a channel: (reply returned,
        events up to the final one). ``channel`` defaults to the request's own ``P:stream:{id}``."""
        request_id = request_id or uuid.uuid4().hex
        listen_to = channel or self.state.keys.stream(request_id)
        async with Listener(self.redis, listen_to) as listener:
            reply = await self.execute(*args, stream=stream, request_id=request_id, **job)
            events = await listener.until_final(timeout_s=5)
            assert await listener.quiet_for(0.05) == [], "nothing may follow the final event"
        return reply, events
