"""Settings: the shipped file, environment overrides, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_pool.settings import DEFAULT_SETTINGS_FILE, SettingsError, load_settings

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


def test_shipped_settings_match_the_contract_defaults() -> None:
    settings = load_settings(DEFAULT_SETTINGS_FILE, environ={})
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
    ("text", "message"),
    [
        (MINIMAL + '\n[redis]\nurl = "http://x"\n', "redis.url"),
        (MINIMAL + "\n[worker]\nmax_jobs = 0\n", "worker.max_jobs"),
        (MINIMAL + "\n[worker]\nmax_jobz = 3\n", "worker.max_jobz"),
        (MINIMAL.replace('api_key_env = "OPENAI_API_KEY"', 'api_key = "sk-oops"'), "secrets never live"),
        ("[router]\nfallbacks = { quality = ['nowhere'] }\n" + MINIMAL, "nowhere"),
        ("not = [valid", "not valid TOML"),
    ],
)
def test_bad_settings_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as info:
        load_settings(write(tmp_path, text), environ={})
    assert "sk-oops" not in str(info.value)


def test_missing_named_settings_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(environ={"LLM_POOL_SETTINGS": str(tmp_path / "nope.toml")})


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
