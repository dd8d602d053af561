"""The worker's Prometheus endpoint, scraped over HTTP after real requests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from llm_pool.client import LLMPool
from llm_pool.schemas import ErrorReply, OkReply
from llm_pool.testing.cluster import DEPLOYMENTS, FakeProviderProcess, WorkerProcess, free_port
from tests.helpers import REDIS_URL, Pool, scrape, user, value

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def mpool(
    tmp_path_factory: pytest.TempPathFactory, provider: FakeProviderProcess
) -> Iterator[tuple[Pool, str]]:
    """A pool whose worker serves metrics, and the URL to scrape."""
    port = free_port()
    pool = Pool(
        tmp_path_factory.mktemp("metrics"), provider, extra=f"[metrics]\nport = {port}\nhost = '127.0.0.1'\n"
    )
    pool.wait_ready(pool.start_worker())
    yield pool, f"http://127.0.0.1:{port}/metrics"
    pool.stop()


async def test_metrics_count_requests_tokens_fallbacks_and_ttft(
    mpool: tuple[Pool, str], provider: FakeProviderProcess
) -> None:
    pool, url = mpool
    tenant = str(uuid.uuid4())
    async with LLMPool(pool.settings, redis_url=REDIS_URL) as client:
        ok = await client.complete("fast", user(), tenant)
        streamed = [e async for e in client.stream("fast", user(), tenant)]
        bad = await client.complete("no-such-group", user(), tenant)
        provider.configure_deployments(DEPLOYMENTS, "quality", fault="500")
        fell_back = await client.complete("quality", user(), tenant)
    assert isinstance(ok, OkReply) and streamed and isinstance(bad, ErrorReply)
    assert isinstance(fell_back, OkReply) and fell_back.fallback
    samples = scrape(url)
    served = value(samples, "llm_pool_requests_total", group="fast", status="ok", deployment=ok.served_by)
    assert served >= 1
    assert (
        value(samples, "llm_pool_requests_total", group="other", status="invalid_request", deployment="") == 1
    )
    assert (
        value(
            samples, "llm_pool_requests_total", group="quality", status="ok", deployment=fell_back.served_by
        )
        == 1
    )
    assert value(samples, "llm_pool_fallbacks_total", group="quality") == 1
    completion = ok.usage.completion_tokens + fell_back.usage.completion_tokens
    assert (
        value(samples, "llm_pool_tokens_total", group="fast", kind="completion") >= ok.usage.completion_tokens
    )
    assert value(samples, "llm_pool_tokens_total", group="quality", kind="completion") == (
        completion - ok.usage.completion_tokens
    )
    assert value(samples, "llm_pool_cost_usd_total", group="quality") == pytest.approx(
        fell_back.usage.cost_usd
    )
    assert value(samples, "llm_pool_time_to_first_token_seconds_count", group="fast") == 1
    assert value(samples, "llm_pool_request_latency_seconds_count", group="fast") == 2
    assert value(samples, "llm_pool_queue_wait_seconds_count") == 3  # the bad one never started
    assert ("llm_pool_queue_depth", frozenset()) in samples
    assert value(samples, "llm_pool_jobs_running") == 0


def test_a_taken_metrics_port_stops_the_worker_and_says_why(mpool: tuple[Pool, str]) -> None:
    pool, url = mpool
    taken = url.split(":")[2].split("/")[0]
    clash = WorkerProcess("clash", {**pool.env, "LLM_POOL__METRICS__PORT": taken}, pool.tmp)
    try:
        assert clash.wait(120) == 2
    finally:
        clash.stop()
    log = clash.log_path.read_text(errors="replace")
    assert f"llm-pool worker: metrics.port {taken}" in log and "LLM_POOL__METRICS__PORT" in log
    assert "Traceback" not in log
