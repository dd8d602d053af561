"""Settings: the shipped file, which file is read, environment overrides, and errors that say where
the bad value came from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llm_pool.settings import (
    PACKAGED_SETTINGS_FILE,
    Settings,
    SettingsError,
    litellm_param_names,
    load_settings,
)
from llm_pool.testing.cluster import ROOT

MINIMAL = """
[[groups.quality]]
model = "openai/gpt-4.1"
api_key_env = "OPENAI_API_KEY"

[[groups.fast]]
model = "ollama_chat/llama3.2"
api_base = "http://localhost:11434"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def test_packaged_defaults_are_the_repository_settings_file() -> None:
    """One source of truth: the file the package falls back to is the repository's settings.toml."""
    assert PACKAGED_SETTINGS_FILE.read_bytes() == (ROOT / "settings.toml").read_bytes(), (
        "llm_pool/default_settings.toml and settings.toml differ: edit settings.toml, then copy it over"
    )


def test_shipped_settings_match_the_contract_defaults() -> None:
    settings = load_settings(PACKAGED_SETTINGS_FILE, environ={})
    assert settings.redis.key_prefix == "llm_pool" and settings.queue_name == "llm_pool:queue"
    assert settings.worker.max_jobs == 200 and settings.worker.heartbeat_interval_s == 5
    assert settings.worker.reply_ttl_s == 3600 and settings.worker.default_timeout_s == 120
    assert settings.router.num_retries == 2
    assert settings.router.fallbacks == {"quality": ["fast"], "fast": ["quality"]}
    providers = {d.model.split("/")[0] for ds in settings.groups.values() for d in ds}
    assert set(settings.groups) == {"quality", "fast"}
    assert providers == {"anthropic", "openai", "ollama_chat"}


def test_environment_overrides(tmp_path: Path) -> None:
    env = {
        "LLM_POOL_SETTINGS": str(write(tmp_path, MINIMAL)),
        "LLM_POOL__WORKER__MAX_JOBS": "300",
        "LLM_POOL__REDIS__KEY_PREFIX": "pool2",
        "LLM_POOL__ROUTER__COOLDOWN_TIME_S": "0.5",
        "LLM_POOL__GROUPS__QUALITY__0__TIMEOUT": "7",
        "REDIS_URL": "unix:///run/redis.sock",
        "OLLAMA_BASE_URL": "http://gpu-box:11434",
    }
    settings = load_settings(environ=env)
    assert settings.worker.max_jobs == 300
    assert settings.redis.key_prefix == "pool2" and settings.queue_name == "pool2:queue"
    assert settings.router.cooldown_time_s == 0.5
    assert settings.groups["quality"][0].timeout == 7
    assert settings.redis.url == "unix:///run/redis.sock"
    assert settings.groups["fast"][0].api_base == "http://gpu-box:11434"


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://u:p@h:6380/1", "unix:///tmp/r.sock"])
def test_redis_url_schemes(tmp_path: Path, url: str) -> None:
    assert load_settings(write(tmp_path, MINIMAL), environ={"REDIS_URL": url}).redis.url == url


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (MINIMAL + '\n[redis]\nurl = "http://x"\n', "[redis] url", "must start with redis://"),
        (MINIMAL + "\n[worker]\nmax_jobs = 0\n", "[worker] max_jobs", "greater than or equal to 1"),
        (MINIMAL + "\n[worker]\nmax_jobz = 3\n", "[worker] max_jobz", "Extra inputs are not permitted"),
        (
            MINIMAL.replace('api_key_env = "OPENAI_API_KEY"', 'api_key = "sk-oops"'),
            "[[groups.quality]] #1 api_key",
            "secrets never live",
        ),
        (
            "[router]\nfallbacks = { quality = ['fsat'] }\n" + MINIMAL,
            "[router] fallbacks.quality",
            "names group 'fsat', which has no deployments",
        ),
        (
            MINIMAL + '\n[[groups.fast]]\nmodel = "openai/gpt-4.1-mini"\napi_bse = "http://h/v1"\n',
            "[[groups.fast]] #2 api_bse",
            "unknown deployment key 'api_bse' .*did you mean 'api_base'",
        ),
        (
            MINIMAL.replace("api_key_env", "api_kye_env"),
            "[[groups.quality]] #1 api_kye_env",
            "did you mean 'api_key_env'",  # never a key that would hold a secret
        ),
        (
            MINIMAL + '\n[redis]\nsentinels = ["h:26379"]\nurl = "unix:///r.sock"\n',
            "[redis] url",
            "with sentinels, url must be",
        ),
    ],
)
def test_bad_file_values_name_the_file_and_key(tmp_path: Path, text: str, where: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as info:
        load_settings(path, environ={})
    text_of_error = str(info.value)
    assert text_of_error.startswith(f"{path}: {where}: "), text_of_error
    assert re.search(message, text_of_error), text_of_error
    assert "sk-oops" not in text_of_error


@pytest.mark.parametrize(
    ("environ", "where", "message"),
    [
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL: ", "must start with redis://"),
        (
            {"LLM_POOL__WORKER__MAX_JOBS": "0"},
            "LLM_POOL__WORKER__MAX_JOBS ([worker] max_jobs): ",
            "greater than or equal to 1",
        ),
        (
            {"LLM_POOL__WORKER__MAX_JOBZ": "3"},
            "LLM_POOL__WORKER__MAX_JOBZ ([worker] max_jobz): ",
            "Extra inputs are not permitted",
        ),
        ({"LLM_POOL__WORKERS__MAX_JOBS": "3"}, "LLM_POOL__WORKERS__MAX_JOBS: ", "no section 'workers'"),
        (
            {"LLM_POOL__ROUTER__FALLBACKS__QUALITY": '["fsat"]'},
            "LLM_POOL__ROUTER__FALLBACKS__QUALITY ([router] fallbacks.quality): ",
            "names group 'fsat'",
        ),
        (
            {"LLM_POOL__GROUPS__FAST__0__API_BSE": "http://h:11434"},
            "LLM_POOL__GROUPS__FAST__0__API_BSE ([[groups.fast]] #1 api_bse): ",
            "did you mean 'api_base'",
        ),
        (
            {"LLM_POOL__GROUPS__FAST__5__TIMEOUT": "3"},
            "LLM_POOL__GROUPS__FAST__5__TIMEOUT: ",
            "groups.fast has 1 item",
        ),
        (
            {"LLM_POOL__REDIS__SENTINELS": '["h:26379"]', "REDIS_URL": "unix:///r.sock"},
            "REDIS_URL: ",
            "with sentinels",
        ),
    ],
)
def test_bad_environment_values_name_the_variable(
    tmp_path: Path, environ: dict[str, str], where: str, message: str
) -> None:
    """A bad value from the environment is blamed on its variable, not on the file."""
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, MINIMAL), environ=environ)
    assert str(info.value).startswith(where), str(info.value)
    assert message in str(info.value)
    assert str(tmp_path) not in str(info.value)


def test_errors_never_show_the_value(tmp_path: Path) -> None:
    """A URL with a password, or a key in the wrong place, is named but never printed."""
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, MINIMAL), environ={"REDIS_URL": "http://admin:hunter2@h:6379/0"})
    assert "hunter2" not in str(info.value) and str(info.value).startswith("REDIS_URL: ")
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, MINIMAL), environ={"LLM_POOL__WORKER__MAX_JOBS": "hunter2"})
    assert "hunter2" not in str(info.value)


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[worker]\nmax_jobs = 0\n")
    with pytest.raises(SettingsError) as info:
        load_settings(path, environ={"REDIS_URL": "nope"})
    assert str(info.value).split("; ")[0].startswith("REDIS_URL: ")
    assert f"{path}: [worker] max_jobs: " in str(info.value)


def test_not_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "not = [valid")
    with pytest.raises(SettingsError, match=f"^{path}: not valid TOML"):
        load_settings(path, environ={})


def test_environment_values_are_read_as_toml_or_json(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    settings = load_settings(
        path,
        environ={
            "LLM_POOL__WORKER__ALLOWED_CHANNELS": "['ws:*', '{prefix}:stream:*']",
            "LLM_POOL__REDIS__SENTINELS": '["a:26379", "b:26379"]',
            "LLM_POOL__WORKER__RESUME_PARTIAL_STREAMS": "false",
            "LLM_POOL__WORKER__WORKER_ID": "123",
        },
    )
    assert settings.worker.allowed_channels == ["ws:*", "{prefix}:stream:*"]
    assert settings.redis.sentinel_addresses() == [("a", 26379), ("b", 26379)]
    assert settings.worker.resume_partial_streams is False and settings.worker.worker_id == "123"
    # An index changes one item of a list in the file and keeps the others (and their other keys).
    two = MINIMAL + '\n[[groups.fast]]\nmodel = "openai/gpt-4.1-mini"\napi_key_env = "OPENAI_API_KEY"\n'
    settings = load_settings(write(tmp_path, two), environ={"LLM_POOL__GROUPS__FAST__1__TIMEOUT": "9"})
    first, second = settings.groups["fast"]
    assert first.timeout is None and first.api_base == "http://localhost:11434"
    assert second.timeout == 9 and second.api_key_env == "OPENAI_API_KEY"


def test_deployment_keys_are_litellm_params() -> None:
    """The packaged list of LiteLLM's keys is the installed LiteLLM's (regenerate it after an upgrade:
    the command is in llm_pool/litellm_params.txt)."""
    from llm_pool.litellm_setup import litellm  # LiteLLM's import-time settings first

    params = litellm.types.router.LiteLLM_Params

    assert litellm_param_names() == set(params.model_fields)
    assert {"api_base", "timeout", "rpm", "input_cost_per_token", "model_info"} <= litellm_param_names()


def test_settings_file_is_chosen_and_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``LLM_POOL_SETTINGS``, else ./settings.toml, else the packaged defaults; ``source`` says which."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    packaged = load_settings(environ={})
    assert packaged.source == f"{PACKAGED_SETTINGS_FILE} (the package's defaults)"
    assert packaged.groups == load_settings(PACKAGED_SETTINGS_FILE, environ={}).groups
    local = write(elsewhere, MINIMAL + "\n[worker]\nmax_jobs = 7\n")
    assert load_settings(environ={}).worker.max_jobs == 7
    assert load_settings(environ={}).source == f"{local} (the current directory)"
    named = tmp_path / "named.toml"
    named.write_text(MINIMAL + "\n[worker]\nmax_jobs = 9\n")
    from_env = load_settings(environ={"LLM_POOL_SETTINGS": str(named)})
    assert from_env.worker.max_jobs == 9 and from_env.source == f"{named} (LLM_POOL_SETTINGS)"
    assert Settings().source == "built-in defaults (no file)"


def test_missing_named_settings_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"nope.toml does not exist \(LLM_POOL_SETTINGS\)"):
        load_settings(environ={"LLM_POOL_SETTINGS": str(tmp_path / "nope.toml")})


def test_settings_model_alone_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Settings()`` is the defaults: only ``load_settings`` reads variables and files."""
    monkeypatch.setenv("LLM_POOL__WORKER__MAX_JOBS", "5")
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:1/0")
    assert Settings().worker.max_jobs == 200 and Settings().redis.url == "redis://localhost:6379/0"


def test_tls_options_reach_every_kind_of_connection() -> None:
    from llm_pool.connections import arq_settings, sync_redis, tls_options
    from llm_pool.settings import RedisSection

    from_url = RedisSection(url="rediss://h:6380/2?ssl_ca_certs=/ca.crt&ssl_check_hostname=false")
    assert tls_options(from_url) == {"ssl_ca_certs": "/ca.crt", "ssl_check_hostname": False}
    section = from_url.model_copy(update={"ssl_ca_certs": "/other.crt", "ssl_certfile": "/c.crt"})
    arq = arq_settings(section)
    assert (arq.host, arq.port, arq.database, arq.ssl) == ("h", 6380, 2, True)
    assert (arq.ssl_ca_certs, arq.ssl_certfile, arq.ssl_check_hostname) == ("/other.crt", "/c.crt", False)
    client = sync_redis(section)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["ssl_ca_certs"] == "/other.crt" and kwargs["ssl_certfile"] == "/c.crt"
    client.close()
    assert tls_options(RedisSection(url="redis://h:6379/0", ssl_ca_certs="/ca.crt")) == {}
