"""Where llm-pool's settings come from (pydantic-settings sources), and where each value came from.

Highest priority first: the dedicated variables ``REDIS_URL`` and ``OLLAMA_BASE_URL``, then the
``LLM_POOL__SECTION__KEY`` variables, then the TOML file, then the models' defaults. Each source
remembers which keys it set (``origins``), so that an invalid value is reported with its origin:
``/etc/llm-pool/settings.toml: [redis] url`` or ``REDIS_URL``, never a bare key.
"""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    TomlConfigSettingsSource,
)
from pydantic_settings.sources.utils import parse_env_vars

ENV_PREFIX = "LLM_POOL__"
ENV_DELIMITER = "__"

Loc = tuple[str | int, ...]


class SettingsError(ValueError):
    """The settings file or an override is invalid; the message says where the value came from and why."""


class LocatedError(ValueError):
    """A model validator's error about one key below the model it validates (``loc`` is relative to
    that model); pydantic alone would place it at the model itself."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc


def describe_key(loc: Loc) -> str:
    """A key as an operator finds it in the TOML file: ``[redis] url``, ``[[groups.fast]] #2 api_base``."""
    if not loc:
        return "(the whole file)"
    first_index = next((i for i, part in enumerate(loc) if isinstance(part, int)), None)
    if first_index is not None and first_index > 0:
        table = ".".join(str(part) for part in loc[:first_index])
        header = f"[[{table}]] #{int(loc[first_index]) + 1}"
        rest = loc[first_index + 1 :]
    else:
        header, rest = f"[{loc[0]}]", loc[1:]
    return f"{header} {'.'.join(str(part) for part in rest)}".rstrip()


def merge_tables(low: dict[str, Any], high: Mapping[str, Any]) -> dict[str, Any]:
    """``high`` over ``low``, tables merged key by key, anything else replaced."""
    merged = dict(low)
    for key, value in high.items():
        below = merged.get(key)
        if isinstance(below, dict) and isinstance(value, dict):
            merged[key] = merge_tables(below, value)
        else:
            merged[key] = value
    return merged


def _holds(tree: dict[str, Any], loc: Loc) -> bool:
    """Whether ``tree`` has a value at ``loc``, or at least the table ``loc`` starts in."""
    return bool(loc) and loc[0] in tree


class SettingsFile(TomlConfigSettingsSource):
    """The TOML file (``path``); ``SettingsError`` naming it if it is not TOML."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        self.path = path
        try:
            super().__init__(settings_cls, toml_file=path)
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise SettingsError(f"{path}: cannot be read: {exc.strerror}") from None

    def origin(self, loc: Loc) -> str | None:
        return f"{self.path}: {describe_key(loc)}" if _holds(self.toml_data, loc) else None


class EnvironmentOverrides(EnvSettingsSource):
    """``LLM_POOL__SECTION__KEY`` variables of ``environ`` (not necessarily ``os.environ``).

    Values are read as JSON or TOML (``300`` is a number, ``true`` a boolean, ``["a", "b"]`` a
    list), else as text. A number as a key picks an item of a list in the file:
    ``LLM_POOL__GROUPS__FAST__0__TIMEOUT=20`` changes the first ``[[groups.fast]]`` table only.
    """

    def __init__(
        self, settings_cls: type[BaseSettings], environ: Mapping[str, str], below: dict[str, Any]
    ) -> None:
        self._environ = environ
        self._below = below
        super().__init__(
            settings_cls, case_sensitive=False, env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_DELIMITER
        )
        self.variables: dict[Loc, str] = {}
        for name in sorted(environ):
            if not name.upper().startswith(ENV_PREFIX):
                continue
            parts = [p.lower() for p in name[len(ENV_PREFIX) :].split(ENV_DELIMITER) if p]
            if not parts:
                raise SettingsError(f"{name}: expected LLM_POOL__SECTION__KEY")
            if parts[0] not in settings_cls.model_fields:
                raise SettingsError(
                    f"{name}: there is no section {parts[0]!r} "
                    f"(sections: {', '.join(sorted(settings_cls.model_fields))})"
                )
            self.variables[tuple(int(p) if p.isdigit() else p for p in parts)] = name

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, False, self.env_ignore_empty, self.env_parse_none_str)

    def decode_complex_value(self, field_name: str, field: FieldInfo | None, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except ValueError:
            pass
        try:
            return tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            return value  # left to validation, which then names the variable

    def __call__(self) -> dict[str, Any]:
        return self._into_lists(super().__call__(), self._below, ())

    def _into_lists(self, tree: dict[str, Any], below: Any, path: Loc) -> dict[str, Any]:
        """Items addressed by index (``{"0": {...}}``) merged into a copy of the list below them."""
        result: dict[str, Any] = {}
        for key, value in tree.items():
            under = below.get(key) if isinstance(below, dict) else None
            if isinstance(value, dict) and value and isinstance(under, list) and all(map(str.isdigit, value)):
                result[key] = self._items_by_index(value, under, (*path, key))
            elif isinstance(value, dict):
                result[key] = self._into_lists(value, under, (*path, key))
            else:
                result[key] = value
        return result

    def _items_by_index(self, changes: dict[str, Any], items: list[Any], path: Loc) -> list[Any]:
        changed = copy.deepcopy(items)
        for index, item in ((int(i), v) for i, v in changes.items()):
            if index >= len(changed):
                where = ".".join(str(part) for part in path)
                raise SettingsError(
                    f"{self._variable_under((*path, index))}: {where} has {len(changed)} item(s) in the "
                    f"file, so no index {index} (indices count from 0)"
                )
            old = changed[index]
            if isinstance(item, dict) and isinstance(old, dict):
                changed[index] = merge_tables(old, self._into_lists(item, old, (*path, index)))
            else:
                changed[index] = item
        return changed

    def _variable_under(self, loc: Loc) -> str:
        return next(name for path, name in self.variables.items() if path[: len(loc)] == loc)

    def origin(self, loc: Loc) -> str | None:
        for path, name in self.variables.items():
            if loc[: len(path)] == path:
                return f"{name} ({describe_key(loc)})"
        return None


class DedicatedVariables(PydanticBaseSettingsSource):
    """``REDIS_URL`` (``redis.url``) and ``OLLAMA_BASE_URL`` (the ``api_base`` of every Ollama
    deployment in ``below``, the file with its overrides)."""

    def __init__(
        self, settings_cls: type[BaseSettings], environ: Mapping[str, str], below: dict[str, Any]
    ) -> None:
        super().__init__(settings_cls)
        self.data: dict[str, Any] = {}
        self.variables: dict[Loc, str] = {}
        if environ.get("REDIS_URL"):
            self.data["redis"] = {"url": environ["REDIS_URL"]}
            self.variables[("redis", "url")] = "REDIS_URL"
        ollama = environ.get("OLLAMA_BASE_URL")
        groups = below.get("groups")
        if ollama and isinstance(groups, dict):
            self.data["groups"] = {name: self._ollama_at(name, d, ollama) for name, d in groups.items()}

    def _ollama_at(self, group: str, deployments: Any, base_url: str) -> Any:
        if not isinstance(deployments, list):
            return deployments
        changed = []
        for index, deployment in enumerate(deployments):
            if isinstance(deployment, dict) and str(deployment.get("model", "")).startswith("ollama"):
                deployment = {**deployment, "api_base": base_url}
                self.variables[("groups", group, index, "api_base")] = "OLLAMA_BASE_URL"
            changed.append(deployment)
        return changed

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self.data

    def origin(self, loc: Loc) -> str | None:
        for path, name in self.variables.items():
            if loc[: len(path)] == path:
                return name
        return None
