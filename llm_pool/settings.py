"""Settings: ``settings.toml`` (or the file named by ``LLM_POOL_SETTINGS``) plus environment overrides.

Precedence, lowest first: the model defaults below, the TOML file, ``LLM_POOL__SECTION__KEY``
variables, then the dedicated variables ``REDIS_URL`` and ``OLLAMA_BASE_URL``. Secrets never live in
the file: a deployment names the variable that holds its key (``api_key_env``) and the key is read
from the environment when the router is built.
"""

from __future__ import annotations

import os
import tomllib
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_SETTINGS_FILE = "LLM_POOL_SETTINGS"
ENV_PREFIX = "LLM_POOL__"
DEFAULT_SETTINGS_FILE = Path(__file__).resolve().parent.parent / "settings.toml"
DEFAULT_OLLAMA_BASE_URL = "http://localhost:11434"


class SettingsError(ValueError):
    """The settings file or an override is invalid; the message says which key and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisSection(_Section):
    url: str = "redis://localhost:6379/0"
    key_prefix: str = Field(default="llm_pool", pattern=r"^[A-Za-z0-9_.\-]+$")
    # TLS, for a rediss:// URL (llm_pool/connections.py): CA file, client certificate and key,
    # whether the server's certificate is required, and whether its name must match the URL's host.
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: Literal["required", "optional", "none"] | None = None
    ssl_check_hostname: bool | None = None
    # Redis Sentinel (llm_pool/connections.py): "host:port" of each Sentinel; when set, every
    # connection asks them for the primary of ``sentinel_master`` and follows a failover. ``url``
    # then gives only the db, username, password and TLS (its host and port are not used).
    sentinels: list[str] = Field(default_factory=list)
    sentinel_master: str = Field(default="llm-pool", min_length=1)
    # The environment variable holding the Sentinels' own password (``requirepass`` of the
    # Sentinels), if they need one; the primary's password comes from ``url``.
    sentinel_password_env: str | None = Field(default=None, min_length=1)
    # Durability against a failover: when > 0, ``LLMPool``'s enqueue and the worker's final write
    # return only after ``WAIT min_replicas_ack replica_ack_timeout_ms``; fewer acknowledgements
    # are logged (and counted by the worker), not an error.
    min_replicas_ack: int = Field(default=0, ge=0)
    replica_ack_timeout_ms: int = Field(default=1000, ge=1)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("sentinels")
    @classmethod
    def _host_port_pairs(cls, value: list[str]) -> list[str]:
        for entry in value:
            sentinel_address(entry)
        return value

    @model_validator(mode="after")
    def _sentinels_over_tcp(self) -> RedisSection:
        if self.sentinels and self.url.startswith("unix://"):
            raise ValueError("with sentinels, url must be redis:// or rediss:// (for db and credentials)")
        return self

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``sentinels`` as (host, port) pairs."""
        return [sentinel_address(entry) for entry in self.sentinels]


def sentinel_address(entry: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) as a pair; ValueError naming the entry if it is not one."""
    host, _, port = entry.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{entry!r} is not host:port")
    return host, int(port)


class WorkerSection(_Section):
    max_jobs: int = Field(default=200, ge=1)
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    reply_ttl_s: int = Field(default=3600, ge=1)
    default_timeout_s: float = Field(default=120.0, gt=0)
    poll_delay_s: float = Field(default=0.5, gt=0)
    pickup_batch: int = Field(default=20, ge=1)
    job_lease_s: float = Field(default=15.0, gt=0)
    max_tries: int = Field(default=3, ge=1)
    drain_grace_s: float = Field(default=30.0, ge=0)
    max_loop_lag_ms: float = Field(default=50.0, gt=0)
    ledger_ttl_days: int = Field(default=400, ge=1)
    max_timeout_s: float = Field(default=600.0, gt=0)
    max_payload_bytes: int = Field(default=2_000_000, ge=1024)
    max_messages: int = Field(default=2000, ge=1)
    max_tools: int = Field(default=128, ge=0)
    # How far ahead of Redis's clock a caller's enqueue time (arq's ``et``) may be and still be
    # trusted; further ahead, the job is due when a worker first sees it (RELIABILITY.md, clocks).
    max_clock_skew_s: float = Field(default=2.0, ge=0)
    # Glob patterns a request's ``channel`` must match ({prefix} is redis.key_prefix).
    allowed_channels: list[str] = Field(default_factory=lambda: ["{prefix}:stream:*"], min_length=1)
    # Jobs enqueued by plain arq wake a worker through the queue's keyspace notifications: "use" them
    # when the server has them on, "enable" them (CONFIG SET), or "off" (poll only).
    queue_notifications: Literal["off", "use", "enable"] = "use"
    resume_partial_streams: bool = True
    max_stream_resumes: int = Field(default=1, ge=0)
    worker_id: str = ""
    log_format: Literal["json", "console"] = "json"
    log_level: str = "INFO"


class RouterSection(_Section):
    num_retries: int = Field(default=2, ge=0)
    fallbacks: dict[str, list[str]] = Field(
        default_factory=lambda: {"quality": ["fast"], "fast": ["quality"]}
    )
    timeout_s: float = Field(default=60.0, gt=0)
    stream_timeout_s: float = Field(default=30.0, gt=0)
    allowed_fails: int = Field(default=3, ge=0)
    cooldown_time_s: float = Field(default=30.0, ge=0)
    retry_after_s: float = Field(default=0.0, ge=0)
    rate_limit_retries: int = Field(default=2, ge=0)
    max_retry_after_s: float = Field(default=30.0, ge=0)


class MetricsSection(_Section):
    """The worker's Prometheus endpoint; off when ``port`` is 0 (give each process its own port)."""

    port: int = Field(default=0, ge=0, le=65535)
    host: str = "0.0.0.0"


class TenantLimits(_Section):
    """Per-tenant limits, enforced across all workers; 0 means unlimited."""

    rpm: int = Field(default=0, ge=0)
    tpm: int = Field(default=0, ge=0)
    daily_budget_usd: float = Field(default=0.0, ge=0)
    # Jobs of the tenant running at once across the pool; 0 means no cap. Waiting jobs stay queued.
    max_concurrent: int = Field(default=0, ge=0)


class TenantsSection(_Section):
    default: TenantLimits = TenantLimits()
    overrides: dict[str, TenantLimits] = Field(default_factory=dict)

    @field_validator("overrides")
    @classmethod
    def _tenant_ids_are_uuids(cls, value: dict[str, TenantLimits]) -> dict[str, TenantLimits]:
        canonical = {}
        for tenant, limits in value.items():
            try:
                canonical[str(uuid.UUID(tenant))] = limits
            except ValueError:
                raise ValueError(f"{tenant!r} is not a tenant id (a UUID)") from None
        return canonical

    def limits_for(self, tenant_id: str) -> TenantLimits:
        return self.overrides.get(tenant_id, self.default)


class Deployment(BaseModel):
    """One ``[[groups.NAME]]`` table: LiteLLM ``litellm_params`` plus ``api_key_env``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    model: str = Field(min_length=1)
    api_key_env: str | None = None
    api_base: str | None = None
    timeout: float | None = Field(default=None, gt=0)
    stream_timeout: float | None = Field(default=None, gt=0)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    input_cost_per_token: float | None = Field(default=None, ge=0)
    output_cost_per_token: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _no_secrets(self) -> Deployment:
        extra = self.model_extra or {}
        secret_like = sorted(k for k in extra if any(w in k.lower() for w in ("key", "secret", "password")))
        if secret_like:
            raise ValueError(
                f"secrets never live in the settings file ({', '.join(secret_like)}); "
                "name an environment variable with api_key_env instead"
            )
        return self

    @property
    def is_ollama(self) -> bool:
        return self.model.startswith(("ollama/", "ollama_chat/"))

    def litellm_params(self) -> dict[str, Any]:
        """The keys LiteLLM receives, without ``api_key_env`` (the caller adds the key itself)."""
        return self.model_dump(exclude_none=True, exclude={"api_key_env"})


class Settings(_Section):
    redis: RedisSection = RedisSection()
    worker: WorkerSection = WorkerSection()
    router: RouterSection = RouterSection()
    tenants: TenantsSection = TenantsSection()
    metrics: MetricsSection = MetricsSection()
    groups: dict[str, list[Deployment]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _fallbacks_name_groups(self) -> Settings:
        if "fallbacks" not in self.router.model_fields_set:
            return self  # the defaults apply to whichever of quality/fast exist
        for group, targets in self.router.fallbacks.items():
            for name in (group, *targets):
                if self.groups and name not in self.groups:
                    raise ValueError(f"router.fallbacks names group {name!r}, which has no deployments")
        return self

    @property
    def queue_name(self) -> str:
        return f"{self.redis.key_prefix}:queue"


def _parse_scalar(raw: str) -> Any:
    """An environment value as TOML would read it (``300`` -> int, ``true`` -> bool), else the string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_override(tree: dict[str, Any], path: list[str], value: Any, var: str) -> None:
    node: Any = tree
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise SettingsError(f"{var}: {part!r} is not an index of that list")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise SettingsError(f"{var}: cannot set a key inside a scalar")
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {})


def apply_env_overrides(tree: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Apply ``LLM_POOL__SECTION__KEY``, ``REDIS_URL`` and ``OLLAMA_BASE_URL`` to a raw settings tree."""
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in var[len(ENV_PREFIX) :].split("__") if p]
        if len(path) < 2:
            raise SettingsError(f"{var}: expected LLM_POOL__SECTION__KEY")
        _apply_override(tree, path, _parse_scalar(environ[var]), var)
    if environ.get("REDIS_URL"):
        tree.setdefault("redis", {})["url"] = environ["REDIS_URL"]
    ollama = environ.get("OLLAMA_BASE_URL")
    if ollama:
        for deployments in tree.get("groups", {}).values():
            for deployment in deployments if isinstance(deployments, list) else []:
                if isinstance(deployment, dict) and str(deployment.get("model", "")).startswith("ollama"):
                    deployment["api_base"] = ollama
    return tree


def settings_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env[ENV_SETTINGS_FILE]) if env.get(ENV_SETTINGS_FILE) else DEFAULT_SETTINGS_FILE


def load_settings(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings file, apply environment overrides and validate the result."""
    env = os.environ if environ is None else environ
    file = Path(path) if path is not None else settings_path(env)
    tree: dict[str, Any] = {}
    if file.exists():
        try:
            tree = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{file}: not valid TOML: {exc}") from exc
    elif path is not None or env.get(ENV_SETTINGS_FILE):
        raise SettingsError(f"settings file {file} does not exist")
    tree = apply_env_overrides(tree, env)
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_input=False)
        )
        raise SettingsError(f"{file}: {problems}") from None
