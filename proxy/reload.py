"""What a reload (SIGHUP) changes: the rule, as a pure function over the running and the newly read settings.

Most keys take effect for new requests: the sampling, targets, DSN and the rest of ``[sentry]``, the timeouts,
``connect_ports``, ``allow_clients`` (for new connections), ``splice_tunnels``, ``shutdown_grace`` and ``[log]``.
Some cannot change in a running process: the listen addresses (their sockets are bound), the number of workers
(they are forked), ``max_connections`` (the descriptor limit was raised for it at start-up) and ``splice_bodies``
(the origin pool's pipe is made at start-up). Those keep their running values and are reported as needing a
restart, while the rest applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from proxy.config import ConfigError, LoadedConfig, Settings, describe_value, load_config

__all__ = ["RESTART_KEYS", "ConfigSource", "ReloadPlan", "plan_reload"]

RESTART_KEYS = frozenset(
    {"forward.listen", "forward.workers", "forward.max_connections", "forward.splice_bodies", "admin.listen"}
)


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """`settings`: what to run with from now on (the new settings, but for the keys that need a restart, which keep
    their running values); `applied`: the keys whose value changes; `needs_restart`: the keys that changed in the
    file or the environment but keep their running values, as ``key: running -> new`` descriptions."""

    settings: Settings
    applied: tuple[str, ...]
    needs_restart: tuple[str, ...]


def _keys(settings: Settings) -> dict[str, Any]:
    values = {}
    for section in type(settings).model_fields:
        model = getattr(settings, section)
        assert isinstance(model, BaseModel)
        for key in type(model).model_fields:
            values[f"{section}.{key}"] = getattr(model, key)
    return values


def plan_reload(running: Settings, loaded: Settings) -> ReloadPlan:
    """Merge `loaded` (the file and environment as read now) into `running` (as they were read last time) by the
    rule of this module's docstring."""
    old, new = _keys(running), _keys(loaded)
    applied: list[str] = []
    restart: list[str] = []
    kept: dict[str, dict[str, Any]] = {}
    for key, value in new.items():
        if value == old[key]:
            continue
        if key in RESTART_KEYS:
            section, _, name = key.partition(".")
            kept.setdefault(section, {})[name] = old[key]
            restart.append(f"{key}: {describe_value(key, old[key])} -> {describe_value(key, value)}")
        else:
            applied.append(key)
    merged = loaded
    if kept:
        merged = loaded.model_copy(
            update={section: getattr(loaded, section).model_copy(update=values) for section, values in kept.items()}
        )
    return ReloadPlan(merged, tuple(applied), tuple(restart))


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where the configuration is read from, as the CLI resolved it at start-up, to read it again on reload: the
    file (None: none) and the environment (the process's own, which does not change, but is read the same way);
    `log_level` is the CLI's ``--log-level``, which wins over ``[log] level`` (None: not given)."""

    path: Path | None
    environ: Mapping[str, str]
    log_level: str | None = None

    def load(self) -> LoadedConfig:
        """The configuration as it reads now; `ConfigError` listing every problem."""
        return load_config(self.path, self.environ)

    def try_load(self) -> LoadedConfig | list[str]:
        """`load`, or the problems (one ``section.key: message`` line each) that keep it from loading."""
        try:
            return self.load()
        except ConfigError as exc:
            return exc.problems
