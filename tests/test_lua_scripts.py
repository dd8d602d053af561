"""Every Lua script of the package: in its own file, with its KEYS and ARGV written at the top,
unpacked into named locals, spelling no key name of its own, and accepted by a real Redis
(``SCRIPT LOAD`` compiles it). Each also runs in the tests of its module."""

from __future__ import annotations

import re
from importlib.resources import files

import pytest
import redis

from llm_pool.fairness import FAIR_ADD_LUA

SCRIPTS = sorted(
    (package, entry.name)
    for package in ("llm_pool", "worker")
    for entry in files(package).iterdir()
    if entry.name.endswith(".lua")
)


def test_the_package_has_its_scripts() -> None:
    names = {name for _, name in SCRIPTS}
    assert {"enqueue.lua", "fair_add.lua", "claim.lua", "dead_letter.lua", "finalize.lua"} <= names
    assert {"admit.lua", "relay_lease.lua"} <= names


@pytest.mark.parametrize(("package", "name"), SCRIPTS)
def test_script_is_documented_and_compiles(redis_sync: redis.Redis, package: str, name: str) -> None:
    text = (files(package) / name).read_text(encoding="utf-8")
    header = text.split("\n\n", 1)[0]
    assert header.startswith("-- "), f"{name}: no header comment"
    if name != "fair_add.lua":  # a function prepended to other scripts, not a script
        body = text.split("\n\n", 1)[1]
        for kind in ("KEYS", "ARGV"):
            used = {int(n) for n in re.findall(rf"{kind}\[(\d+)\]", body)}
            documented = {int(n) for n in re.findall(rf"-- {kind}\[(\d+)\]", header)}
            assert used <= documented, f"{name}: {kind} {sorted(used - documented)} used but not documented"
    source = FAIR_ADD_LUA + text if "fair_add(" in text and name != "fair_add.lua" else text
    assert redis_sync.script_load(source)


@pytest.mark.parametrize(("package", "name"), SCRIPTS)
def test_script_names_its_arguments_and_spells_no_key(package: str, name: str) -> None:
    text = (files(package) / name).read_text(encoding="utf-8")
    code = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    for line in code:
        if re.search(r"(KEYS|ARGV)\[", line):
            assert line.startswith("local "), f"{name}: KEYS/ARGV used outside a named local: {line!r}"
    literals = re.findall(r"'([^']*)'", "\n".join(code))
    spelled = [s for s in literals if ":" in s or s.startswith(("arq", "llm_pool"))]
    assert spelled == [], f"{name}: key names spelled in the script: {spelled}"
