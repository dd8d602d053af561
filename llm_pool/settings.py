"""Settings: a TOML file plus environment overrides, read with pydantic-settings.

The file is the one ``LLM_POOL_SETTINGS`` names, else ``./settings.toml`` (the current directory),
else the defaults shipped in the package (``llm_pool/default_settings.toml``, identical to the
repository's ``settings.toml``). Precedence, lowest first: the model defaults below, the file,
``LLM_POOL__SECTION__KEY`` variables, then the dedicated variables ``REDIS_URL`` and
``OLLAMA_BASE_URL`` (``llm_pool/settings_sources.py``). Secrets never live in the file: a deployment
names the variable that holds its key (``api_key_env``) and the key is read from the environment
when the router is built.
"""

from __future__ import annotations

import difflib
import functools
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from llm_pool.settings_sources import (
    ENV_DELIMITER,
    ENV_PREFIX,
    DedicatedVariables,
    EnvironmentOverrides,
    Loc,
    LocatedError,
    SettingsFile,
    describe_key,
    merge_tables,
)
from llm_pool.settings_sources import SettingsError as SettingsError

ENV_SETTINGS_FILE = "LLM_POOL_SETTINGS"
LOCAL_SETTINGS_FILE = "settings.toml"
PACKAGED_SETTINGS_FILE = Path(__file__).resolve().parent / "default_settings.toml"
LITELLM_PARAMS_FILE = Path(__file__).resolve().parent / "litellm_params.txt"
DEFAULT_OLLAMA_BASE_URL = "http://localhost:11434"
# Keys of a [[groups.NAME]] table that are the pool's own, not LiteLLM's.
POOL_DEPLOYMENT_KEYS = frozenset({"api_key_env"})
# Keys the Router hands on to LiteLLM's completion call that LiteLLM_Params does not list.
COMPLETION_DEPLOYMENT_KEYS = frozenset({"mock_delay"})


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
            raise LocatedError(
                ("url",), "with sentinels, url must be redis:// or rediss:// (for db and credentials)"
            )
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


@functools.cache
def litellm_param_names() -> frozenset[str]:
    """LiteLLM's ``litellm_params`` keys (``LiteLLM_Params.model_fields`` of the pinned release), from
    ``llm_pool/litellm_params.txt``: reading them from LiteLLM itself would import it (seconds) in
    every process that reads settings. A test compares the file with the installed LiteLLM."""
    lines = LITELLM_PARAMS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def _secret_like(key: str) -> bool:
    return any(word in key.lower() for word in ("key", "secret", "password"))


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
    def _known_keys_and_no_secrets(self) -> Deployment:
        extra = self.model_extra or {}
        known = litellm_param_names() | POOL_DEPLOYMENT_KEYS | COMPLETION_DEPLOYMENT_KEYS
        for key in sorted(extra):
            if key not in known:
                allowed = sorted(k for k in known if not _secret_like(k)) + sorted(POOL_DEPLOYMENT_KEYS)
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise LocatedError(
                    (key,), f"unknown deployment key {key!r} (not a LiteLLM litellm_params key){hint}"
                )
        secret_like = sorted(filter(_secret_like, extra))
        if secret_like:
            raise LocatedError(
                (secret_like[0],),
                f"secrets never live in the settings file ({', '.join(secret_like)}); "
                "name an environment variable with api_key_env instead",
            )
        return self

    @property
    def is_ollama(self) -> bool:
        return self.model.startswith(("ollama/", "ollama_chat/"))

    def litellm_params(self) -> dict[str, Any]:
        """The keys LiteLLM receives, without ``api_key_env`` (the caller adds the key itself)."""
        return self.model_dump(exclude_none=True, exclude={"api_key_env"})


class Settings(BaseSettings):
    """All settings. ``Settings()`` is the model defaults (plus keyword arguments) and reads nothing;
    ``load_settings`` reads the file and the environment."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        case_sensitive=False,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
    )

    redis: RedisSection = RedisSection()
    worker: WorkerSection = WorkerSection()
    router: RouterSection = RouterSection()
    tenants: TenantsSection = TenantsSection()
    metrics: MetricsSection = MetricsSection()
    groups: dict[str, list[Deployment]] = Field(default_factory=dict)

    _source: str = PrivateAttr(default="built-in defaults (no file)")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    @model_validator(mode="after")
    def _fallbacks_name_groups(self) -> Settings:
        if "fallbacks" not in self.router.model_fields_set:
            return self  # the defaults apply to whichever of quality/fast exist
        for group, targets in self.router.fallbacks.items():
            for name in (group, *targets):
                if self.groups and name not in self.groups:
                    raise LocatedError(
                        ("router", "fallbacks", group),
                        f"router.fallbacks names group {name!r}, which has no deployments "
                        f"(groups: {', '.join(sorted(self.groups))})",
                    )
        return self

    @property
    def queue_name(self) -> str:
        return f"{self.redis.key_prefix}:queue"

    @property
    def source(self) -> str:
        """Which file these settings came from, and why that one (for the start-up log line)."""
        return self._source


def settings_path(environ: Mapping[str, str] | None = None) -> Path:
    """The settings file ``load_settings()`` reads: ``LLM_POOL_SETTINGS``, else ``./settings.toml``,
    else the packaged defaults."""
    return _settings_file(os.environ if environ is None else environ)[0]


def _settings_file(env: Mapping[str, str]) -> tuple[Path, str]:
    """``settings_path`` and why that file."""
    if env.get(ENV_SETTINGS_FILE):
        return Path(env[ENV_SETTINGS_FILE]), ENV_SETTINGS_FILE
    local = Path.cwd() / LOCAL_SETTINGS_FILE
    if local.is_file():
        return local, "the current directory"
    return PACKAGED_SETTINGS_FILE, "the package's defaults"


def load_settings(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings file (``path``, else see ``settings_path``), apply the environment's
    overrides and validate the result; ``SettingsError`` naming the origin of each bad value."""
    env = os.environ if environ is None else environ
    file, why = (Path(path), "given") if path is not None else _settings_file(env)
    if not file.is_file():
        raise SettingsError(f"settings file {file} does not exist ({why})")
    toml = SettingsFile(Settings, file)
    overrides = EnvironmentOverrides(Settings, env, below=toml.toml_data)
    dedicated = DedicatedVariables(Settings, env, below=merge_tables(toml.toml_data, overrides()))
    try:
        # pydantic-settings' own way to hand over sources built per call (mypy sees only the fields).
        settings = Settings(_build_sources=((dedicated, overrides, toml), {}))  # type: ignore[call-arg]
    except ValidationError as exc:
        origins = (dedicated.origin, overrides.origin, toml.origin)
        problems = "; ".join(_problem(error, origins) for error in exc.errors(include_input=False))
        raise SettingsError(problems) from None
    settings._source = f"{file.resolve()} ({why})"
    return settings


def _problem(error: ErrorDetails, origins: tuple[Any, ...]) -> str:
    """One validation error as ``ORIGIN: message``; the value itself is never shown."""
    loc: Loc = tuple(error["loc"])
    message = error["msg"]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, LocatedError):
        loc = (*loc, *cause.loc)
    if isinstance(cause, ValueError):
        message = str(cause)
    where = next((o for o in (origin(loc) for origin in origins) if o), f"default {describe_key(loc)}")
    return f"{where}: {message}"
