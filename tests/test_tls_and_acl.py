"""TLS and least privilege: the worker, arq and ``LLMPool`` over TLS, and under the README's ACLs.

Each test runs its own redis-server: one that speaks only TLS with a self-signed CA made here, and
one whose default user is off, with the worker and caller users that README documents.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
import redis

from llm_pool.client import LLMPool
from llm_pool.schemas import OkReply
from llm_pool.settings import load_settings
from llm_pool.testing.cluster import FakeProviderProcess, RedisServer, free_port
from tests.helpers import TENANT, Pool, user

pytestmark = pytest.mark.e2e


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA, and a certificate it signed for 127.0.0.1: (ca.crt, server.crt, server.key)."""
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName = IP:127.0.0.1\n")
    commands = [
        f"req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout {ca_key} -out {ca_crt}",
        f"req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout {key} -out {csr}",
        f"x509 -req -days 2 -CAcreateserial -in {csr} -CA {ca_crt} -CAkey {ca_key} -extfile {ext} -out {crt}",
    ]
    for command in commands:  # the paths are pytest's temporary folders: no spaces
        subprocess.run(["openssl", *command.split()], check=True, capture_output=True)
    return ca_crt, crt, key


async def test_worker_arq_and_client_over_tls(tmp_path: Path, provider: FakeProviderProcess) -> None:
    ca, crt, key = make_ca_and_server_cert(tmp_path)
    tls = {"tls-cert-file": str(crt), "tls-key-file": str(key), "tls-ca-cert-file": str(ca)}
    server = RedisServer(port=free_port(), config={**tls, "tls-auth-clients": "no"}, tls_ca=ca)
    server.start()
    plain_url = f"rediss://127.0.0.1:{server.port}/0"
    pool = Pool(tmp_path, provider, redis_url=server.url)  # the CA as the URL's query parameter
    # The worker gets its CA from the setting instead, as an operator would set it.
    pool.env.update({"REDIS_URL": plain_url, "LLM_POOL__REDIS__SSL_CA_CERTS": str(ca)})
    try:
        pool.wait_ready(pool.start_worker())
        settings = load_settings(pool.settings_path, environ={"REDIS_URL": plain_url})
        settings = settings.model_copy(
            update={"redis": settings.redis.model_copy(update={"ssl_ca_certs": str(ca)})}
        )
        async with LLMPool(settings) as caller:
            reply = await caller.complete("fast", user(), TENANT)
        assert isinstance(reply, OkReply), reply
        async with LLMPool(pool.settings) as caller:  # the CA in the URL's query
            events = [e async for e in caller.stream("fast", user(), TENANT)]
        assert events[-1].type == "done", events
        health = pool.run_module("llm_pool.health", REDIS_URL=plain_url)
        assert health.returncode == 0, health.stdout + health.stderr
        without_ca = pool.run_module("llm_pool.health", REDIS_URL=plain_url, LLM_POOL__REDIS__SSL_CA_CERTS="")
        assert without_ca.returncode != 0, "a server certificate signed by an unknown CA was accepted"
    finally:
        pool.stop()
        server.stop()


# The users README documents (section "Redis ACL"), for the default prefix; {P} is the prefix.
WORKER_ACL = (
    "~{P}:* ~arq:* &{P}:* &__keyspace@0__:{P}:queue "
    "-@all +ping +info +time +config|get +client|setname +evalsha +script|load +script|exists +exists "
    "+multi +exec +watch +unwatch +get +set +psetex +mget +del +expire +pexpire +strlen +incr +incrby +decr "
    "+hget +hset +hdel +hexists +hgetall +hincrby +hincrbyfloat +zadd +zrange +zrevrange +zrem "
    "+zremrangebyrank +zscore +zcard +zrank +scan +publish +subscribe +unsubscribe +blpop +rpush +ltrim"
)
CALLER_ACL = (
    "~{P}:* ~arq:* &{P}:stream:* &{P}:client:* "
    "-@all +ping +time +client|setname +evalsha +script|load +script|exists +exists +get +set +psetex +mget "
    "+hset +zadd +zincrby +zscore +incr +rpush +ltrim +watch +unwatch +multi +exec +subscribe +unsubscribe"
)


def acl_rules(template: str, prefix: str) -> list[str]:
    """The rules of a documented ACL for ``prefix``."""
    return template.replace("{P}", prefix).split()


async def test_worker_and_caller_under_least_privilege(tmp_path: Path, provider: FakeProviderProcess) -> None:
    server = RedisServer(port=free_port())
    server.start()
    passwords = {"worker": uuid.uuid4().hex, "caller": uuid.uuid4().hex}
    worker_url = f"redis://worker:{passwords['worker']}@127.0.0.1:{server.port}/0"
    caller_url = f"redis://caller:{passwords['caller']}@127.0.0.1:{server.port}/0"
    pool = Pool(tmp_path, provider, redis_url=worker_url)
    admin = server.client()
    try:
        for name, template in (("worker", WORKER_ACL), ("caller", CALLER_ACL)):
            rules = acl_rules(template, pool.prefix)
            admin.execute_command("ACL", "SETUSER", name, "reset", "on", f">{passwords[name]}", *rules)  # type: ignore[no-untyped-call]
        admin.execute_command("ACL", "LOG", "RESET")  # type: ignore[no-untyped-call]
        pool.wait_ready(pool.start_worker())
        async with LLMPool(pool.settings, redis_url=caller_url) as caller:
            reply = await caller.complete("fast", user(), TENANT, timeout_s=5)
            assert isinstance(reply, OkReply), reply
            events = [e async for e in caller.stream("fast", user(), TENANT)]
            assert events[-1].type == "done", events
            # The caller may listen to streams, not publish into them.
            with pytest.raises(redis.exceptions.NoPermissionError):
                await caller._redis.publish(pool.keys.stream("someone"), json.dumps({"type": "done"}))
        health = pool.run_module("llm_pool.health", REDIS_URL=worker_url)
        assert health.returncode == 0, health.stdout + health.stderr
        refusals = admin.execute_command("ACL", "LOG")  # type: ignore[no-untyped-call]
        # The only refusal: the caller's PUBLISH above (the caller may publish nothing at all).
        unexpected = [entry for entry in refusals if b"cmd=publish user=caller" not in repr(entry).encode()]
        assert unexpected == [], f"ACL refusals: {unexpected}"
        assert "redis_config_unreadable" not in pool.logs()
    finally:
        pool.stop()
        admin.close()
        server.stop()
