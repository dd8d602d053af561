"""Every Redis key and channel name the pool uses: its own, under the prefix ``P``, and arq's.

No other module or script spells a key name: Python code calls ``Keys``; Lua scripts get their keys
in KEYS, or (for the claim script, which finds job ids and tenants as it reads) the prefixes from
here in ARGV.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase

from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix

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

    # --- arq's keys (arq.constants), shared with plain arq callers; not under the pool's prefix ---

    @staticmethod
    def job(request_id: str) -> str:
        """The job's envelope, written by the enqueuer."""
        return job_key_prefix + request_id

    @staticmethod
    def claim(request_id: str) -> str:
        """The job's claim: a worker's lease on it while it runs."""
        return in_progress_key_prefix + request_id

    @staticmethod
    def result(request_id: str) -> str:
        """arq's record of the job's end (the reply, without the request's arguments)."""
        return result_key_prefix + request_id

    @staticmethod
    def retry(request_id: str) -> str:
        """How many times a worker has started the job."""
        return retry_key_prefix + request_id

    job_prefix = job_key_prefix
    claim_prefix = in_progress_key_prefix
    retry_prefix = retry_key_prefix

    # --- the fair-share index (llm_pool/fairness.py) -------------------------------------------

    @property
    def fair_jobs(self) -> str:
        """Hash: waiting job id -> the tenant it is indexed under."""
        return f"{self.prefix}:fair:jobs"

    def fair_queue(self, tenant: str) -> str:
        """Sorted set of a tenant's waiting job ids, scored like the queue."""
        return f"{self.fair_queue_prefix}{tenant}"

    @property
    def fair_queue_prefix(self) -> str:
        return f"{self.prefix}:fair:q:"

    @property
    def fair_tenants(self) -> str:
        """Sorted set of tenants with waiting jobs, scored by their turn."""
        return f"{self.prefix}:fair:tenants"

    @property
    def fair_turn(self) -> str:
        """Counter that numbers the tenants' turns."""
        return f"{self.prefix}:fair:turn"

    def fair_running(self, tenant: str) -> str:
        """Sorted set of a capped tenant's claimed job ids."""
        return f"{self.fair_running_prefix}{tenant}"

    @property
    def fair_running_prefix(self) -> str:
        return f"{self.prefix}:fair:running:"

    @property
    def fair_sweep(self) -> str:
        """Lock: at most one sweep of the queue per period, across all workers."""
        return f"{self.prefix}:fair:sweep"

    @property
    def fair_sweep_at(self) -> str:
        """Where the next sweep starts (a rank in the queue)."""
        return f"{self.prefix}:fair:sweep-at"

    # --- the pool's own keys and channels ------------------------------------------------------

    def client_channel(self, token: str) -> str:
        """An ``LLMPool``'s private pub-sub channel (its multiplexer's keep-alive and wake-up)."""
        return f"{self.prefix}:client:{token}"

    def reply(self, request_id: str) -> str:
        return f"{self.reply_prefix}{request_id}"

    @property
    def reply_prefix(self) -> str:
        return f"{self.prefix}:reply:"

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
        return f"{self.cancel_prefix}{request_id}"

    @property
    def cancel_prefix(self) -> str:
        return f"{self.prefix}:cancel:"

    def rate(self, tenant_id: str, kind: str, minute: int) -> str:
        """Per-minute counter of a tenant's requests (``rpm``) or tokens (``tpm``)."""
        return f"{self.prefix}:limits:{tenant_id}:{kind}:{minute}"

    def usage(self, tenant_id: str, day: str | None = None) -> str:
        return f"{self.prefix}:usage:{tenant_id}:{day or utc_day()}"


def utc_day(now: datetime | None = None) -> str:
    """The UTC calendar day, ``YYYY-MM-DD``, that names a ledger hash."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%d")
