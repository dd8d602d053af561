"""Per-tenant budgets and rate limits (requests and tokens per minute, USD per UTC day).

The counters live in Redis and are checked and counted in one Lua script, so every worker sees the
same numbers and two workers cannot both admit the request that crosses a limit. Tokens are counted
when a request finishes (the outbox's final script adds them to the minute's counter), cost comes
from the tenant's ledger hash (contract section 6).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.resources import files

from redis.asyncio import Redis

from llm_pool.keys import Keys, utc_day
from llm_pool.settings import TenantLimits

ADMIT_LUA = (files("worker") / "admit.lua").read_text(encoding="utf-8")

LABELS = {
    "rpm": "requests per minute",
    "tpm": "tokens per minute",
    "daily_budget_usd": "daily cost budget (USD)",
}


@dataclass(frozen=True)
class Refusal:
    limit: str
    allowed: float
    current: float
    resets_at: datetime

    def message(self, tenant_id: str) -> str:
        return (
            f"tenant {tenant_id}: the {LABELS[self.limit]} limit of {self.allowed:g} is reached "
            f"(now {self.current:g}); it resets at {self.resets_at.isoformat(timespec='seconds')}"
        )


def current_minute() -> int:
    return int(time.time() // 60)


class Limiter:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._keys = keys
        self._admit = redis.register_script(ADMIT_LUA)

    async def admit(self, tenant_id: str, limits: TenantLimits) -> Refusal | None:
        """Count the request against the tenant's limits; a ``Refusal`` if one is reached."""
        if not (limits.rpm or limits.tpm or limits.daily_budget_usd):
            return None
        minute = current_minute()
        result = await self._admit(
            keys=[
                self._keys.rate(tenant_id, "rpm", minute),
                self._keys.rate(tenant_id, "tpm", minute),
                self._keys.usage(tenant_id, utc_day()),
            ],
            args=[limits.rpm, limits.tpm, limits.daily_budget_usd],
        )
        if not result:
            return None
        limit = result[0].decode() if isinstance(result[0], bytes) else str(result[0])
        current = float(result[1])
        if limit == "daily_budget_usd":
            tomorrow = datetime.now(UTC).date() + timedelta(days=1)
            resets = datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=UTC)
            allowed = limits.daily_budget_usd
        else:
            resets = datetime.fromtimestamp((minute + 1) * 60, UTC)
            allowed = float(limits.rpm if limit == "rpm" else limits.tpm)
        return Refusal(limit=limit, allowed=allowed, current=current, resets_at=resets)
