"""The chaos run's short form: workers SIGKILLed and Redis restarted while requests flow."""

from __future__ import annotations

import shutil

import pytest

from bench.chaos import run_chaos

pytestmark = pytest.mark.e2e


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
@pytest.mark.timeout(300)
async def test_chaos_short_form(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_POOL_PROGRESS_INTERVAL_S", "1")
    outcome = await run_chaos(requests=80, workers=2, kill_every_s=2.0)
    print(outcome.summary())
    # Progress, not silence: in a log (no terminal) the bar prints a line at most every interval.
    progress = capfd.readouterr().err
    assert "answered:" in progress and "/80" in progress and "kills=" in progress, progress[-1000:]
    assert outcome.kills >= 1 and outcome.redis_restarts == 1
    assert outcome.missing == [], "every request has a reply"
    assert outcome.double_finals == [], "no request ended twice"
    assert outcome.stream_mismatches == [], "every stream's text after its last reset is its reply"
    assert outcome.streams_checked > 0
