"""proxy.config: defaults, file, environment precedence, validation messages, immutability."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from proxy.config import (
    Address,
    ConfigError,
    ForwardSettings,
    LogSettings,
    Settings,
    describe_value,
    load_config,
    load_settings,
    plain_value,
)

REPO = Path(__file__).resolve().parents[2]
DSN = "https://abc123@o42.ingest.sentry.io/7"


Write = Callable[[str], Path]


@pytest.fixture
def write(tmp_path: Path) -> Write:
    def write(text: str) -> Path:
        path = tmp_path / "config.toml"
        path.write_text(text)
        return path

    return write


def problems(text: str | None, environ: dict[str, str] | None = None, tmp: Path | None = None) -> list[str]:
    path = None
    if text is not None:
        assert tmp is not None
        path = tmp / "bad.toml"
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ or {})
    return info.value.problems


def test_defaults() -> None:
    s = load_settings(None, {})
    assert s.forward.listen == Address("127.0.0.1", 3128)
    assert s.forward.connect_ports == (443,)
    assert (s.forward.connect_timeout, s.forward.idle_timeout, s.forward.shutdown_grace) == (5.0, 60.0, 10.0)
    assert s.forward.workers == 1
    assert s.sentry.dsn == ""
    assert s.sentry.environment == "production"
    assert s.sentry.release == ""
    assert s.sentry.traces_sample_rate is None
    assert s.sentry.trace_propagation_targets == (".*",)
    assert s.sentry.strict_trace_continuation is False
    assert s.sentry.org_id == ""
    assert s.sentry.propagate_traceparent is False
    assert s.admin.listen == Address("127.0.0.1", 9901)
    assert s == Settings()


def test_settings_built_directly_ignore_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACE_PROXY_FORWARD__WORKERS", "4")
    monkeypatch.setenv("SENTRY_RELEASE", "from-env")
    assert Settings() == load_settings(None, {})
    assert Settings(forward=ForwardSettings(workers=3)).forward.workers == 3


def test_environ_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("TRACE_PROXY_", "SENTRY_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TRACE_PROXY_FORWARD__WORKERS", "4")
    assert load_settings(None).forward.workers == 4


def test_file_values(write: Write) -> None:
    path = write(
        f"""
[forward]
listen = "0.0.0.0:8080"
connect_ports = [443, 8443]
connect_timeout = 2.5
idle_timeout = 30
shutdown_grace = 0
workers = 4

[sentry]
dsn = "{DSN}"
environment = "staging"
release = "app@1.2.3"
traces_sample_rate = 0.25
trace_propagation_targets = ["^https://api\\\\.example\\\\.com/", "internal"]
strict_trace_continuation = true
org_id = "1234"
propagate_traceparent = true

[admin]
listen = "[::1]:9000"
"""
    )
    s = load_settings(path, {})
    assert s.forward.listen == Address("0.0.0.0", 8080)
    assert s.forward.connect_ports == (443, 8443)
    assert (s.forward.connect_timeout, s.forward.idle_timeout, s.forward.shutdown_grace) == (2.5, 30.0, 0.0)
    assert s.forward.workers == 4
    assert s.sentry.dsn == DSN
    assert (s.sentry.environment, s.sentry.release) == ("staging", "app@1.2.3")
    assert s.sentry.traces_sample_rate == 0.25
    assert s.sentry.trace_propagation_targets == (r"^https://api\.example\.com/", "internal")
    assert s.sentry.strict_trace_continuation is True
    assert s.sentry.org_id == "1234"
    assert s.sentry.propagate_traceparent is True
    assert s.admin.listen == Address("::1", 9000)
    assert str(s.admin.listen) == "[::1]:9000"


def test_partial_file_keeps_other_defaults(write: Write) -> None:
    s = load_settings(write("[forward]\nworkers = 2\n[sentry]\n"), {})
    assert s.forward.workers == 2
    assert s.forward.listen == Address("127.0.0.1", 3128)
    assert s.sentry == Settings().sentry


def test_example_config_is_the_defaults_with_a_sample_rate() -> None:
    s = load_settings(REPO / "config.example.toml", {})
    assert s.sentry.traces_sample_rate == 1.0
    assert s.model_copy(update={"sentry": s.sentry.model_copy(update={"traces_sample_rate": None})}) == Settings()


def test_example_config_lists_every_key() -> None:
    text = (REPO / "config.example.toml").read_text()
    for section in ("forward", "sentry", "admin", "log"):
        assert f"[{section}]" in text
        for key in getattr(Settings(), section).__class__.model_fields:
            assert f"\n{key} = " in text, f"{section}.{key} missing from config.example.toml"


def test_env_override_beats_file(write: Write) -> None:
    path = write('[forward]\nlisten = "127.0.0.1:3000"\nconnect_ports = [443]\n[sentry]\nenvironment = "file"\n')
    s = load_settings(
        path,
        {
            "TRACE_PROXY_FORWARD__LISTEN": "0.0.0.0:3128",
            "TRACE_PROXY_FORWARD__CONNECT_PORTS": "[443, 8443]",
            "TRACE_PROXY_SENTRY__TRACES_SAMPLE_RATE": "0.5",
            "TRACE_PROXY_SENTRY__STRICT_TRACE_CONTINUATION": "true",
        },
    )
    assert s.forward.listen == Address("0.0.0.0", 3128)
    assert s.forward.connect_ports == (443, 8443)
    assert s.sentry.traces_sample_rate == 0.5
    assert s.sentry.strict_trace_continuation is True
    assert s.sentry.environment == "file"  # untouched keys of an overridden section stay


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("dsn", DSN, DSN),
        ("environment", "staging", "staging"),
        ("release", "app@2", "app@2"),
        ("traces_sample_rate", "0.1", 0.1),
    ],
)
def test_sentry_env_fills_and_precedence(write: Write, key: str, value: str, expected: object) -> None:
    sentry_var = f"SENTRY_{key.upper()}"
    own_var = f"TRACE_PROXY_SENTRY__{key.upper()}"
    other = {"dsn": "https://zzz@o1.ingest.sentry.io/1", "traces_sample_rate": "0.9"}.get(key, "other")

    # SENTRY_X fills the key ...
    assert getattr(load_settings(None, {sentry_var: value}).sentry, key) == expected
    # ... over the file ...
    file_value = f"{other}" if key == "traces_sample_rate" else f'"{other}"'
    path = write(f"[sentry]\n{key} = {file_value}\n")
    assert getattr(load_settings(path, {sentry_var: value}).sentry, key) == expected
    # ... and under TRACE_PROXY_SENTRY__X.
    assert getattr(load_settings(path, {own_var: value, sentry_var: other}).sentry, key) == expected


def test_set_but_empty_sentry_env_clears_the_file_value(write: Write) -> None:
    path = write('[sentry]\nrelease = "1.0"\ntraces_sample_rate = 0.5\n')
    s = load_settings(path, {"SENTRY_RELEASE": "", "SENTRY_TRACES_SAMPLE_RATE": ""})
    assert s.sentry.release == ""
    assert s.sentry.traces_sample_rate is None


def test_non_config_variables_are_ignored() -> None:
    s = load_settings(
        None,
        {
            "TRACE_PROXY_CONFIG": "/some/where.toml",
            "SENTRY_TRACE": "771a43a4192642f0b136d5159a501700-bb7f2bd3a9a34bb6-1",
            "SENTRY_BAGGAGE": "sentry-trace_id=771a43a4192642f0b136d5159a501700",
            "HTTP_PROXY": "http://127.0.0.1:3128",
        },
    )
    assert s == Settings()


@pytest.mark.parametrize(
    ("toml", "field", "words"),
    [
        (
            "[sentry]\ntraces_sample_rate = 2.0",
            "sentry.traces_sample_rate",
            ["less than or equal to 1", "2.0"],
        ),
        ("[sentry]\ntraces_sample_rate = -0.1", "sentry.traces_sample_rate", ["greater than or equal to 0"]),
        ('[sentry]\ntraces_sample_rate = "half"', "sentry.traces_sample_rate", ["number", "'half'"]),
        ('[sentry]\ndsn = "not a dsn"', "sentry.dsn", ["invalid DSN"]),
        (
            '[sentry]\ntrace_propagation_targets = [".*", "("]',
            "sentry.trace_propagation_targets",
            ["item 1", "'('", "missing )"],
        ),
        (
            '[sentry]\ntrace_propagation_targets = ".*"',
            "sentry.trace_propagation_targets",
            ["expected a list"],
        ),
        ('[sentry]\norg_id = "o42"', "sentry.org_id", ["digits", "'o42'"]),
        ("[sentry]\nenvironment = 3", "sentry.environment", ["string"]),
        ('[forward]\nlisten = "nonsense"', "forward.listen", ["HOST:PORT", "'nonsense'"]),
        ('[forward]\nlisten = "127.0.0.1:70000"', "forward.listen", ["1 to 65535", "70000"]),
        ('[forward]\nlisten = "127.0.0.1:0"', "forward.listen", ["1 to 65535"]),
        ('[forward]\nlisten = ":3128"', "forward.listen", ["missing host"]),
        ('[forward]\nlisten = "::1:3128"', "forward.listen", ["brackets"]),
        ('[forward]\nlisten = "[nope]:3128"', "forward.listen", ["IPv6"]),
        ('[forward]\nlisten = "300.1.1.1:3128"', "forward.listen", ["IPv4"]),
        ('[forward]\nlisten = "bad_host:3128"', "forward.listen", ["hostname"]),
        ("[forward]\nlisten = 3128", "forward.listen", ["string"]),
        (
            "[forward]\nconnect_ports = [443, 0]",
            "forward.connect_ports",
            ["item 1", "greater than or equal to 1"],
        ),
        (
            "[forward]\nconnect_ports = [65536]",
            "forward.connect_ports",
            ["item 0", "less than or equal to 65535"],
        ),
        ("[forward]\nconnect_timeout = 0", "forward.connect_timeout", ["greater than 0"]),
        ("[forward]\nidle_timeout = -1", "forward.idle_timeout", ["greater than 0"]),
        ("[forward]\nidle_timeout = inf", "forward.idle_timeout", ["finite"]),
        ("[forward]\nshutdown_grace = -1", "forward.shutdown_grace", ["greater than or equal to 0"]),
        ("[forward]\nworkers = 0", "forward.workers", ["greater than or equal to 1"]),
        ("[forward]\nworkers = 65", "forward.workers", ["less than or equal to 64"]),
        ("[forward]\nlisen = '127.0.0.1:3128'", "forward.lisen", ["unknown key"]),
        ("[sentry]\nsample_rate = 1.0", "sentry.sample_rate", ["unknown key"]),
        ("[fowrard]\nlisten = '127.0.0.1:3128'", "fowrard", ["unknown section"]),
        ("listen = '127.0.0.1:3128'", "listen", ["unknown section"]),
        ("forward = 1", "forward", ["expected a table"]),
        ('[admin]\nlisten = "localhost"', "admin.listen", ["HOST:PORT"]),
        ('[admin]\nlisten = "127.0.0.1:3128"', "admin.listen", ["forward.listen", "127.0.0.1:3128"]),
    ],
)
def test_bad_value_names_its_field(tmp_path: Path, toml: str, field: str, words: list[str]) -> None:
    [problem] = problems(toml + "\n", tmp=tmp_path)
    assert problem.startswith(f"{field}: "), problem
    for word in words:
        assert word in problem, problem


@pytest.mark.parametrize(
    ("forward", "admin", "clash"),
    [
        ("127.0.0.1:3128", "127.0.0.1:3128", True),
        ("0.0.0.0:3128", "127.0.0.1:3128", True),
        ("127.0.0.1:9000", "[::]:9000", True),
        ("localhost:3128", "LOCALHOST:3128", True),
        ("127.0.0.1:3128", "127.0.0.2:3128", False),
        ("127.0.0.1:3128", "127.0.0.1:3129", False),
        ("0.0.0.0:3128", "", False),
    ],
)
def test_forward_and_admin_listen_must_differ(forward: str, admin: str, clash: bool) -> None:
    environ = {"TRACE_PROXY_FORWARD__LISTEN": forward, "TRACE_PROXY_ADMIN__LISTEN": admin}
    if clash:
        [problem] = problems(None, environ)
        assert problem.startswith("admin.listen: must differ from forward.listen"), problem
    else:
        load_settings(None, environ)


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    found = problems(
        """
[forward]
listen = "nonsense"
workers = 0
typo = 1
[sentry]
traces_sample_rate = 2.0
dsn = "not a dsn"
trace_propagation_targets = ["("]
[admin]
listen = "127.0.0.1:99999"
[extra]
""",
        {"TRACE_PROXY_SENTRY__ORG_ID": "abc"},
        tmp=tmp_path,
    )
    fields = [p.split(": ", 1)[0] for p in found]
    assert sorted(fields) == sorted(
        [
            "forward.listen",
            "forward.workers",
            "forward.typo",
            "sentry.traces_sample_rate",
            "sentry.dsn",
            "sentry.trace_propagation_targets",
            "sentry.org_id",
            "admin.listen",
            "extra",
        ]
    )
    assert str(ConfigError(found)) == "\n".join(found)


def test_listen_clash_reported_beside_other_problems() -> None:
    environ = {"TRACE_PROXY_ADMIN__LISTEN": "127.0.0.1:3128", "SENTRY_TRACES_SAMPLE_RATE": "7"}
    fields = [p.split(":", 1)[0] for p in problems(None, environ)]
    assert fields == ["sentry.traces_sample_rate", "admin.listen"]


def test_env_values_are_validated_like_file_values() -> None:
    [problem] = problems(None, {"TRACE_PROXY_FORWARD__LISTEN": "nonsense"})
    assert problem.startswith("forward.listen: ")
    [problem] = problems(None, {"TRACE_PROXY_FORWARD__LISTN": "127.0.0.1:1"})
    assert problem == "forward.listn: unknown key"
    [problem] = problems(None, {"SENTRY_TRACES_SAMPLE_RATE": "2.0"})
    assert problem.startswith("sentry.traces_sample_rate: ")


def test_env_section_that_does_not_exist_is_named() -> None:
    """A misspelt section in a variable's name changed nothing, silently: it is an error naming the variable, like an
    unknown key; variables that are not settings (no `__`) are left alone."""
    [problem] = problems(None, {"TRACE_PROXY_LOGS__LEVEL": "debug", "TRACE_PROXY_MYPYC": "1", "TRACE_PROXY_CONFIG": ""})
    assert problem.startswith("logs: unknown section")
    assert "TRACE_PROXY_LOGS__LEVEL" in problem and "[log]" in problem
    found = problems(None, {"trace_proxy_fowrard__listen": "127.0.0.1:1", "TRACE_PROXY_FORWARD__LISTEN": "x"})
    assert [p.split(":", 1)[0] for p in found] == ["fowrard", "forward.listen"]  # all at once


def test_env_list_that_is_not_json() -> None:
    [problem] = problems(None, {"TRACE_PROXY_FORWARD__CONNECT_PORTS": "[443,"})
    assert problem.startswith("forward: invalid JSON in TRACE_PROXY_FORWARD"), problem


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "absent.toml", {})
    [problem] = info.value.problems
    assert problem.startswith("config: ") and "absent.toml" in problem, problem


@pytest.mark.parametrize("content", [b"[forward\nlisten = 1\n", b"listen = \n", b"\xff\xfe"])
def test_invalid_toml(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    [problem] = info.value.problems
    assert problem.startswith(f"config: {path} is not valid TOML"), problem


def test_settings_are_frozen() -> None:
    s = load_settings(None, {})
    with pytest.raises(ValidationError):
        s.forward = s.forward  # type: ignore[misc, unused-ignore]  # an error only with the pydantic plugin
    with pytest.raises(ValidationError):
        s.forward.workers = 2  # type: ignore[misc, unused-ignore]  # an error only with the pydantic plugin
    with pytest.raises(ValidationError):
        s.sentry.dsn = DSN  # type: ignore[misc, unused-ignore]  # an error only with the pydantic plugin
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.forward.listen.port = 1  # type: ignore[misc]
    assert isinstance(s.forward.connect_ports, tuple)
    assert isinstance(s.sentry.trace_propagation_targets, tuple)
    hash(s)


def test_admin_empty_listen_disables(write: Write) -> None:
    assert load_settings(write('[admin]\nlisten = ""\n'), {}).admin.listen is None
    assert load_settings(None, {"TRACE_PROXY_ADMIN__LISTEN": ""}).admin.listen is None


def test_empty_connect_ports_means_any(write: Write) -> None:
    assert load_settings(write("[forward]\nconnect_ports = []\n"), {}).forward.connect_ports == ()


def test_org_id_may_be_a_toml_integer(write: Write) -> None:
    assert load_settings(write("[sentry]\norg_id = 42\n"), {}).sentry.org_id == "42"


@pytest.mark.parametrize(
    ("text", "host", "port", "shown"),
    [
        ("127.0.0.1:3128", "127.0.0.1", 3128, "127.0.0.1:3128"),
        ("Proxy.Example.com:80", "proxy.example.com", 80, "proxy.example.com:80"),
        ("localhost:65535", "localhost", 65535, "localhost:65535"),
        ("[::1]:3128", "::1", 3128, "[::1]:3128"),
        ("[0:0::0]:1", "::", 1, "[::]:1"),
    ],
)
def test_address_parse_and_str(text: str, host: str, port: int, shown: str) -> None:
    address = Address.parse(text)
    assert (address.host, address.port) == (host, port)
    assert str(address) == shown
    assert Address.parse(str(address)) == address


def test_log_section() -> None:
    assert load_settings(None, {}).log == LogSettings(level="info", format="text", access=False)
    environ = {"TRACE_PROXY_LOG__LEVEL": "WARNING", "TRACE_PROXY_LOG__FORMAT": "json", "TRACE_PROXY_LOG__ACCESS": "1"}
    s = load_settings(None, environ)
    assert s.log == LogSettings(level="warning", format="json", access=True)


def test_log_section_errors_name_the_field(tmp_path: Path) -> None:
    found = problems('[log]\nlevel = "loud"\nformat = "xml"\naccess = "maybe"\ncolour = 1\n', tmp=tmp_path)
    assert sorted(p.partition(":")[0] for p in found) == ["log.access", "log.colour", "log.format", "log.level"]
    assert any(p.startswith("log.level: ") and "'debug'" in p and "'loud'" in p for p in found), found


def test_sources_name_where_each_value_came_from(write: Write) -> None:
    path = write('[forward]\nworkers = 2\nidle_timeout = 60.0\n[sentry]\nrelease = "file@1"\n[log]\nformat = "json"\n')
    environ = {
        "TRACE_PROXY_FORWARD__CONNECT_TIMEOUT": "2",
        "trace_proxy_log__access": "true",
        "SENTRY_DSN": DSN,
        "SENTRY_RELEASE": "env@2",
        "TRACE_PROXY_ADMIN": '{"listen": "127.0.0.1:9902"}',
    }
    loaded = load_config(path, environ)
    assert loaded.settings == load_settings(path, environ)
    sources = loaded.sources
    assert sources["forward.workers"] == "file"
    assert sources["forward.idle_timeout"] == "file"  # set in the file, to the default value
    assert sources["forward.connect_timeout"] == "environment (TRACE_PROXY_FORWARD__CONNECT_TIMEOUT)"
    assert sources["log.access"] == "environment (trace_proxy_log__access)"
    assert sources["admin.listen"] == "environment (TRACE_PROXY_ADMIN)"
    assert sources["sentry.dsn"] == "environment (SENTRY_DSN)"
    assert sources["sentry.release"] == "environment (SENTRY_RELEASE)"
    assert sources["log.format"] == "file"
    assert sources["forward.listen"] == "default"
    assert set(sources) == {
        f"{section}.{key}"
        for section in Settings.model_fields
        for key in type(getattr(Settings(), section)).model_fields
    }
    assert loaded.non_defaults() == {
        "forward.connect_timeout": "environment (TRACE_PROXY_FORWARD__CONNECT_TIMEOUT)",
        "forward.workers": "file",
        "sentry.dsn": "environment (SENTRY_DSN)",
        "sentry.release": "environment (SENTRY_RELEASE)",
        "admin.listen": "environment (TRACE_PROXY_ADMIN)",
        "log.format": "file",
        "log.access": "environment (trace_proxy_log__access)",
    }


def test_own_variable_beats_the_sentry_one_in_the_sources() -> None:
    loaded = load_config(None, {"SENTRY_RELEASE": "a", "TRACE_PROXY_SENTRY__RELEASE": "b"})
    assert loaded.settings.sentry.release == "b"
    assert loaded.sources["sentry.release"] == "environment (TRACE_PROXY_SENTRY__RELEASE)"


def test_no_file_no_environment_everything_is_default() -> None:
    loaded = load_config(None, {})
    assert set(loaded.sources.values()) == {"default"}
    assert loaded.non_defaults() == {}


def test_described_values_hide_the_dsn_keys() -> None:
    text = describe_value("sentry.dsn", "https://public9key:secret7key@o42.ingest.sentry.io/prefix/7")
    assert text == '"<key redacted>@o42.ingest.sentry.io/7"'
    assert describe_value("sentry.dsn", "") == '""'
    assert describe_value("sentry.traces_sample_rate", None) == "not set"
    assert describe_value("forward.connect_ports", (443, 8443)) == "[443, 8443]"
    assert describe_value("forward.listen", Address("::1", 3128)) == '"[::1]:3128"'
    assert describe_value("log.access", True) == "true"


def test_plain_values_for_json_hide_the_dsn_keys() -> None:
    dsn = "https://pk9:sk7@o42.ingest.sentry.io/7"
    assert plain_value("sentry.dsn", dsn) == "<key redacted>@o42.ingest.sentry.io/7"
    assert plain_value("forward.listen", Address("::1", 3128)) == "[::1]:3128"
    assert plain_value("forward.connect_ports", (443,)) == [443]
    assert plain_value("forward.allow_clients", load_settings(None, {}).forward.allow_clients) == [
        "127.0.0.0/8",
        "::1/128",
    ]
    assert plain_value("sentry.traces_sample_rate", None) is None
    assert plain_value("log.access", True) is True
