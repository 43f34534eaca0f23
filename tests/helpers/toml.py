"""A tiny TOML writer for the proxy's configuration files (tables of scalars and lists, nothing more)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

Config = dict[str, dict[str, Any]]


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dumps(config: Mapping[str, Mapping[str, Any]]) -> str:
    """`{"forward": {"listen": "..."}}` as TOML text; a value of `None` leaves the key out."""
    lines: list[str] = []
    for table, keys in config.items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {_value(value)}" for key, value in keys.items() if value is not None)
        lines.append("")
    return "\n".join(lines)


def merge(base: Mapping[str, Mapping[str, Any]], overrides: Mapping[str, Mapping[str, Any]] | None) -> Config:
    """A copy of `base` with the keys of `overrides` replaced table by table (`None` removes a key)."""
    merged: Config = {table: dict(keys) for table, keys in base.items()}
    for table, keys in (overrides or {}).items():
        merged.setdefault(table, {}).update(keys)
    return merged
