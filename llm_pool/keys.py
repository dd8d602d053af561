"""Redis key and channel names of contract v1, all under the pool's prefix ``P``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase

# A request id (= arq job id) names keys and channels: longer ones are refused.
MAX_REQUEST_ID_CHARS = 128


@dataclass(frozen=True)
class Keys:
    """Names of the pool's keys for one prefix (``redis.key_prefix``)."""

    prefix: str = "llm_pool"

    @property
    def queue(self) -> str:
        return f"{self.prefix}:queue"

    @property
    def wakeups(self) -> str:
        """List of wake-up tokens, one per new job: each wakes one idle worker (``BLPOP``)."""
        return f"{self.prefix}:wakeups"

    @property
    def wake_relay(self) -> str:
        """Lease of the one worker that turns the queue's keyspace notifications into wake-ups."""
        return f"{self.prefix}:wake-relay"

    def reply(self, request_id: str) -> str:
        return f"{self.prefix}:reply:{request_id}"

    def stream(self, request_id: str) -> str:
        return f"{self.prefix}:stream:{request_id}"

    def channel_allowed(self, channel: str, patterns: Sequence[str]) -> bool:
        """Whether a request's own ``channel`` matches one of ``worker.allowed_channels``."""
        return any(fnmatchcase(channel, p.replace("{prefix}", self.prefix)) for p in patterns)

    def due(self, request_id: str) -> str:
        """When the job is due, in Redis's clock (ms): its deadline counts from here."""
        return f"{self.prefix}:due:{request_id}"

    @property
    def due_prefix(self) -> str:
        return f"{self.prefix}:due:"

    @property
    def dead_letter(self) -> str:
        """Sorted set of queue entries that could not be used as a request id, by Redis time (ms)."""
        return f"{self.prefix}:dead-letter"

    def heartbeat(self, worker_id: str) -> str:
        return f"{self.prefix}:heartbeat:{worker_id}"

    @property
    def heartbeat_pattern(self) -> str:
        return f"{self.prefix}:heartbeat:*"

    def cancel(self, request_id: str) -> str:
        return f"{self.prefix}:cancel:{request_id}"

    def rate(self, tenant_id: str, kind: str, minute: int) -> str:
        """Per-minute counter of a tenant's requests (``rpm``) or tokens (``tpm``)."""
        return f"{self.prefix}:limits:{tenant_id}:{kind}:{minute}"

    def usage(self, tenant_id: str, day: str | None = None) -> str:
        return f"{self.prefix}:usage:{tenant_id}:{day or utc_day()}"


def utc_day(now: datetime | None = None) -> str:
    """The UTC calendar day, ``YYYY-MM-DD``, that names a ledger hash."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%d")
