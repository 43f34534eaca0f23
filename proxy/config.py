"""Configuration: a TOML file plus environment overrides, validated once into frozen objects.

Where each value comes from, first match wins:

1. ``TRACE_PROXY_<SECTION>__<KEY>`` environment variables, e.g. ``TRACE_PROXY_FORWARD__LISTEN=0.0.0.0:3128``
   (lists as JSON: ``TRACE_PROXY_FORWARD__CONNECT_PORTS='[443, 8443]'``);
2. for ``[sentry]`` only, the Sentry SDK's own variables ``SENTRY_DSN``, ``SENTRY_ENVIRONMENT``,
   ``SENTRY_RELEASE`` and ``SENTRY_TRACES_SAMPLE_RATE``;
3. the TOML file (``--config PATH``, else ``TRACE_PROXY_CONFIG``; the CLI resolves which);
4. the defaults below.

So ``TRACE_PROXY_SENTRY__DSN`` beats ``SENTRY_DSN``, which beats ``dsn`` in the file. A variable that is set
counts even when empty: ``SENTRY_RELEASE=`` clears a release set in the file. ``SENTRY_TRACE`` and
``SENTRY_BAGGAGE`` are not configuration (the app reads them as a trace carrier), and ``TRACE_PROXY_CONFIG``
names the file rather than a setting.

`load_settings` is the one place that reads the file and the environment. ``Settings(...)`` built directly
validates only its keyword arguments (defaults for the rest), which keeps tests independent of the process
environment. Every problem is reported at once, one ``section.key: message`` line each (`ConfigError`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from proxy.server.admission import LOOPBACK
from proxy.server.grammar import AuthorityError, check_listen_host, split_authority

__all__ = [
    "Address",
    "AdminSettings",
    "ConfigError",
    "ForwardSettings",
    "LoadedConfig",
    "LogSettings",
    "SentrySettings",
    "Settings",
    "describe_value",
    "load_config",
    "load_settings",
    "plain_value",
]

_ENV_PREFIX = "TRACE_PROXY_"
# The Sentry SDK's variables, filling [sentry] keys below the TRACE_PROXY_SENTRY__* overrides.
_SENTRY_ENV = {
    "SENTRY_DSN": "dsn",
    "SENTRY_ENVIRONMENT": "environment",
    "SENTRY_RELEASE": "release",
    "SENTRY_TRACES_SAMPLE_RATE": "traces_sample_rate",
}
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})


class ConfigError(Exception):
    """The configuration cannot be used; `problems` holds one ``section.key: message`` line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Address:
    """A listen address. `host` is an IPv4 address, an IPv6 address (without brackets) or a hostname."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``HOST:PORT`` (``[IPv6]:PORT`` for IPv6) by the grammar planning uses for request targets, the host
        also held to `check_listen_host`; raise ValueError naming what is wrong."""
        try:
            host, port = split_authority(text, None)
        except AuthorityError as exc:
            raise AuthorityError(f"{exc}: expected HOST:PORT or [IPv6]:PORT, with a port from 1 to 65535") from None
        try:
            host = check_listen_host(host, text.startswith("["))
        except AuthorityError as exc:
            raise AuthorityError(f"{exc}, in {text!r}") from None
        return cls(host, port)


def _overlap(a: Address, b: Address) -> bool:
    """Whether binding both would collide: the same port, and the same host or a wildcard on either side."""
    return a.port == b.port and (a.host == b.host or a.host in _WILDCARD_HOSTS or b.host in _WILDCARD_HOSTS)


def _address(value: Any) -> Address:
    if isinstance(value, Address):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a string HOST:PORT, got {value!r}")
    return Address.parse(value)


def _optional_address(value: Any) -> Address | None:
    return None if value == "" or value is None else _address(value)


def _network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR (``10.0.0.0/8``, ``fd00::/8``) or a single address (``10.1.2.3``, a /32 or /128)."""
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if not isinstance(value, str):
        raise ValueError(f'expected a string such as "10.0.0.0/8", got {value!r}')
    try:
        return ipaddress.ip_network(value.strip())
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a network: {exc} (a CIDR such as 10.0.0.0/8, or an address)") from None


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
    return pattern


# NoDecode: pydantic-settings would otherwise read an Address from the environment as JSON.
_Listen = Annotated[Address, PlainValidator(_address), NoDecode]
_OptionalListen = Annotated[Address | None, PlainValidator(_optional_address), NoDecode]
_Port = Annotated[int, Field(ge=1, le=65535)]
_Regex = Annotated[str, AfterValidator(_compiles)]
_Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, PlainValidator(_network)]


class ForwardSettings(BaseModel):
    """``[forward]``: the listener the service's ``HTTP_PROXY`` points at."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: _Listen = Address("127.0.0.1", 3128)
    connect_ports: tuple[_Port, ...] = (443,)  # () = any port
    connect_timeout: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    idle_timeout: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    shutdown_grace: float = Field(default=10.0, ge=0, allow_inf_nan=False)
    workers: int = Field(default=1, ge=1, le=64)
    splice_tunnels: bool = True  # relay CONNECT tunnels with splice(2) where the OS has it (Linux)
    splice_bodies: bool = True  # relay large Content-Length response bodies with splice(2) (Linux)
    # Who may use the proxy: an open forward proxy is a relay into the service's network. Default: loopback only.
    allow_clients: tuple[_Network, ...] = LOOPBACK
    header_timeout: float = Field(default=10.0, gt=0, allow_inf_nan=False)  # to send a whole request head, else 408
    max_connections: int = Field(default=10000, ge=1, le=1_000_000)  # client connections at once, per worker


class SentrySettings(BaseModel):
    """``[sentry]``: named after the Sentry SDK options they mirror."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dsn: str = ""  # "" = no DSN
    environment: str = "production"
    release: str = ""
    traces_sample_rate: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)  # None = deferred
    trace_propagation_targets: tuple[_Regex, ...] = (".*",)
    strict_trace_continuation: bool = False
    org_id: str = ""  # "" = the DSN's, if its host is oNNN.…
    propagate_traceparent: bool = False

    @field_validator("dsn")
    @classmethod
    def _check_dsn(cls, value: str) -> str:
        value = value.strip()
        if value:
            # Imported here, not at the top: the tracing package must stay free to import this module.
            from proxy.tracing.options import parse_dsn

            parse_dsn(value)  # its ValueError names the problem (and starts "invalid DSN")
        return value

    @field_validator("traces_sample_rate", mode="before")
    @classmethod
    def _empty_rate_is_unset(cls, value: Any) -> Any:
        # An environment variable cannot be absent-but-set: "" there means "defer", as leaving it out does.
        return None if value == "" else value

    @field_validator("org_id", mode="before")
    @classmethod
    def _check_org_id(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return str(value)  # org_id = 42 in TOML
        if isinstance(value, str) and not (value.isascii() and value.isdigit()) and value:
            raise ValueError(f"must be digits only (or empty), got {value!r}")
        return value


class AdminSettings(BaseModel):
    """``[admin]``: the /healthz and /readyz listener."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: _OptionalListen = Address("127.0.0.1", 9901)  # None (from "") = no admin listener


class LogSettings(BaseModel):
    """``[log]``: what the process logs and how (stderr; the CLI's ``--log-level``, when given, wins over `level`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"  # json: one object per line (proxy.logs)
    access: bool = False  # one line per proxied request (proxy.access_log)

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


class Settings(BaseSettings):
    """The whole configuration. Build it with `load_settings`; see the module docstring for precedence."""

    model_config = SettingsConfigDict(env_prefix=_ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True)

    forward: ForwardSettings = ForwardSettings()
    sentry: SentrySettings = SentrySettings()
    admin: AdminSettings = AdminSettings()
    log: LogSettings = LogSettings()

    @field_validator("admin")
    @classmethod
    def _listeners_differ(cls, admin: AdminSettings, info: ValidationInfo) -> AdminSettings:
        forward = info.data.get("forward")  # absent when [forward] itself is invalid
        if admin.listen is not None and forward is not None and _overlap(admin.listen, forward.listen):
            message = f"must differ from forward.listen ({forward.listen}): same port, got {str(admin.listen)!r}"
            raise ValidationError.from_exception_data(
                "AdminSettings",
                [
                    InitErrorDetails(
                        type=PydanticCustomError("listen_conflict", message),
                        loc=("listen",),  # pydantic prefixes "admin"
                        input=str(admin.listen),
                    )
                ],
            )
        return admin

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only keyword arguments here; load_settings hands over the file and the environment itself.
        return (init_settings,)


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file at `path` (None: no file) and `environ` (default: os.environ) into `Settings`.

    Raise `ConfigError` listing every problem: a missing or invalid file, or each invalid value.
    """
    return load_config(path, environ).settings


# Where a value came from, as `LoadedConfig.sources` names it.
FROM_FILE = "file"
FROM_DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """The settings and, for every ``section.key``, where its value came from: ``"file"``, ``"default"`` or
    ``"environment (NAME)"`` naming the variable (for the start-up line, and for operators asking why a value is
    what it is)."""

    settings: Settings
    sources: Mapping[str, str]

    def non_defaults(self) -> dict[str, str]:
        """The keys whose value differs from the built-in default, in the order of the models, with their source."""
        default = Settings()
        changed = {}
        for key, source in self.sources.items():
            section, _, name = key.partition(".")
            if getattr(getattr(self.settings, section), name) != getattr(getattr(default, section), name):
                changed[key] = source
        return changed


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """`load_settings`, plus where each value came from (`LoadedConfig.sources`). Raises `ConfigError` the same."""
    env = os.environ if environ is None else environ
    sentry_env = {key: env[name] for name, key in _SENTRY_ENV.items() if name in env}
    file_data = {} if path is None else _read_toml(path)
    env_data = _EnvSource(Settings, env)()  # the TRACE_PROXY_* variables, parsed as pydantic-settings does
    sources = (  # first wins
        _DataSource(Settings, env_data),
        _DataSource(Settings, {"sentry": sentry_env} if sentry_env else {}),
        _DataSource(Settings, file_data),
    )
    problems = _unknown_env_sections(env)
    try:
        settings = Settings(_build_sources=(sources, {}))
    except ValidationError as exc:
        problems += [_describe(error) for error in exc.errors(include_url=False)]
    if problems:
        raise ConfigError(problems)
    return LoadedConfig(settings, _sources(env, env_data, sentry_env, file_data))


def _unknown_env_sections(environ: Mapping[str, str]) -> list[str]:
    """``TRACE_PROXY_<SECTION>__<KEY>`` variables whose section does not exist: pydantic-settings only looks for the
    sections there are and passes over the rest, so a misspelt section (``TRACE_PROXY_LOGS__LEVEL``) would change
    nothing, silently. Variables without ``__`` (``TRACE_PROXY_CONFIG``, the build's ``TRACE_PROXY_MYPYC``) are not
    settings and are left alone."""
    problems = []
    for name in sorted(environ):
        if not name.upper().startswith(_ENV_PREFIX):
            continue
        section, sep, _ = name[len(_ENV_PREFIX) :].partition("__")
        if sep and section.lower() not in Settings.model_fields:
            problems.append(
                f"{section.lower()}: unknown section in the environment variable {name} "
                "(expected [forward], [sentry], [admin] or [log])"
            )
    return problems


def _sources(
    environ: Mapping[str, str], env_data: Mapping[str, Any], sentry_env: Mapping[str, Any], file_data: Mapping[str, Any]
) -> dict[str, str]:
    """For every ``section.key`` of `Settings`, the first source (in `load_config`'s order) that set it."""
    sentry_vars = {key: name for name, key in _SENTRY_ENV.items() if key in sentry_env}
    names = {name.upper(): name for name in environ}  # pydantic-settings matches the names case-insensitively
    found = {}
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        from_env = env_data.get(section)
        from_file = file_data.get(section)
        for key in model.model_fields:
            if isinstance(from_env, dict) and key in from_env:
                variable = f"{_ENV_PREFIX}{section}__{key}".upper()
                found[f"{section}.{key}"] = f"environment ({names.get(variable) or f'{_ENV_PREFIX}{section.upper()}'})"
            elif section == "sentry" and key in sentry_vars:
                found[f"{section}.{key}"] = f"environment ({sentry_vars[key]})"
            elif isinstance(from_file, dict) and key in from_file:
                found[f"{section}.{key}"] = FROM_FILE
            else:
                found[f"{section}.{key}"] = FROM_DEFAULT
    return found


def plain_value(key: str, value: Any) -> Any:
    """A setting's value as a JSON log line carries it: numbers, booleans, lists and null as such, the rest as
    strings, and never a secret (a DSN as its host and project id, as `describe_value` shows it)."""
    if key == "sentry.dsn" and isinstance(value, str) and value:
        return describe_value(key, value).strip('"')
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple):
        return [plain_value(key, item) for item in value]
    return str(value)


def describe_value(key: str, value: Any) -> str:
    """A setting's value as the logs show it: TOML-like, and never a secret (a DSN is shown as its host and project
    id, without its keys)."""
    if key == "sentry.dsn" and isinstance(value, str) and value:
        from proxy.tracing.options import parse_dsn

        try:
            dsn = parse_dsn(value)
        except ValueError:
            return '"<invalid DSN>"'
        return f'"<key redacted>@{dsn.host}/{dsn.project_id}"'
    if value is None:
        return '"" (none)' if key == "admin.listen" else "not set"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(describe_value(key, item) for item in value) + "]"
    if isinstance(value, int | float):
        return repr(value)
    return f'"{value}"'


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError([f"config: cannot read {path}: {exc.strerror or exc}"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"config: {path} is not valid TOML: {exc}"]) from None


# Pydantic's wording, where it would speak of Python types rather than TOML ones.
_MESSAGES = {
    "tuple_type": "expected a list",
    "model_type": "expected a table",
    "dict_type": "expected a table",
}


def _describe(error: ErrorDetails) -> str:
    """One pydantic error as ``section.key: message``; the items of a list are named in the message."""
    loc = [str(part) for part in error["loc"]]
    field = ".".join(loc[:2])
    if error["type"] == "extra_forbidden":
        if len(loc) == 1:
            return f"{field}: unknown section (expected [forward], [sentry], [admin] or [log])"
        return f"{field}: unknown key"
    if error["type"] in ("value_error", "listen_conflict"):
        message = error["msg"].removeprefix("Value error, ")  # these name the bad value themselves
    else:
        message = _MESSAGES.get(error["type"], error["msg"])
        message = f"{message[:1].lower()}{message[1:]} (got {_short_repr(error['input'])})"
    if len(loc) > 2:
        message = f"item {'.'.join(loc[2:])}: {message}"
    return f"{field}: {message}"


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' own TRACE_PROXY_* parsing, reading a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ  # read by _load_env_vars, which the base __init__ calls
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)

    def prepare_field_value(self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool) -> Any:
        try:
            return super().prepare_field_value(field_name, field, value, value_is_complex)
        except ValueError as exc:  # a list or table that is not valid JSON; the whole load stops here
            names = f"{_ENV_PREFIX}{field_name.upper()}[__KEY]"
            raise ConfigError([f"{field_name}: invalid JSON in {names} environment variable: {exc}"]) from exc


class _DataSource(PydanticBaseSettingsSource):
    """Values that are already parsed: the TOML file, the SENTRY_* variables."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the data whole

    def __call__(self) -> dict[str, Any]:
        return self._data
