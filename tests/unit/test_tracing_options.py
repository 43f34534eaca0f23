"""DSN parsing, sample-rate text, PropagationConfig and propagation targets (§3, §7)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import sentry_sdk.utils
from hypothesis import given
from hypothesis import strategies as st
from sentry_sdk.consts import EndpointType

from proxy.tracing import Dsn, PropagationConfig, parse_dsn
from proxy.tracing.options import format_sample_rate
from proxy.tracing.targets import PropagationTargets
from tests.unit.tracing_support import BASE_OPTIONS

BASE: dict[str, Any] = BASE_OPTIONS


def config(**changes: Any) -> PropagationConfig:
    return PropagationConfig.from_options(**{**BASE, **changes})


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("https://pk123@o42.ingest.sentry.io/7", Dsn("pk123", "o42.ingest.sentry.io", "42", "7")),
        ("http://abc:secret@127.0.0.1:9000/7", Dsn("abc", "127.0.0.1", None, "7")),
        ("https://k@sentry.example.com/prefix/path/12/", Dsn("k", "sentry.example.com", None, "12")),
        ("https://k@o1.Ingest.example/3", Dsn("k", "o1.ingest.example", "1", "3")),
        ("https://k@oops.example/3", Dsn("k", "oops.example", None, "3")),
        ("  https://k@o7.x/3\n", Dsn("k", "o7.x", "7", "3")),
    ],
)
def test_parse_dsn(dsn: str, expected: Dsn) -> None:
    assert parse_dsn(dsn) == expected


@pytest.mark.parametrize(
    ("dsn", "reason"),
    [
        ("", "empty"),
        ("not a dsn", "scheme"),
        ("ftp://k@host/1", "scheme"),
        ("https://host/1", "public key"),
        ("https://k@/1", "host"),
        ("https://k@host", "project id"),
        ("https://k@host/abc", "project id"),
        ("https://k@host:99999/1", "out of range"),
        ("https://k@[::1/1", "IPv6"),
        ("https://k@host/1?x=1", "query"),
    ],
)
def test_parse_dsn_errors_say_why(dsn: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as error:
        parse_dsn(dsn)
    assert str(error.value).startswith("invalid DSN")  # config validation shows it as is


@given(st.text())
def test_parse_dsn_raises_only_value_error(text: str) -> None:
    try:
        dsn = parse_dsn(text)
    except ValueError:
        return
    assert dsn.public_key
    assert dsn.host
    assert dsn.project_id.isdigit()


@pytest.mark.parametrize(
    ("rate", "text"),
    [(1.0, "1.0"), (0.0, "0.0"), (0.25, "0.25"), (0.00001, "0.00001"), (1, "1.0"), (1e-7, "0.0000001")],
)
def test_format_sample_rate(rate: float, text: str) -> None:
    assert format_sample_rate(rate) == text


@given(st.floats(min_value=0.0, max_value=1.0))
def test_format_sample_rate_round_trips_without_exponent(rate: float) -> None:
    text = format_sample_rate(rate)
    assert "e" not in text.lower()
    assert float(text) == rate
    if "e" not in repr(rate):
        assert text == repr(rate)  # repr is the shortest round-tripping text


def test_from_options_precomputes_the_new_dsc() -> None:
    cfg = config()
    assert cfg.public_key == "pk123"
    assert cfg.org_id == "42"
    assert cfg.sample_rate_text == "1.0"
    assert cfg.sample_rate_member == "sentry-sample_rate=1.0"
    assert cfg.new_dsc_members == (
        "sentry-public_key=pk123",
        "sentry-org_id=42",
        "sentry-environment=production",
        "sentry-release=billing%401.4.2",
        "sentry-sample_rate=1.0",
    )
    infix = "," + ",".join(cfg.new_dsc_members)
    assert dict(cfg.new_dsc_tails) == {
        True: infix + ",sentry-sampled=true,sentry-sample_rand=0.",
        False: infix + ",sentry-sampled=false,sentry-sample_rand=0.",
        None: infix + ",sentry-sample_rand=0.",
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.org_id = "1"  # type: ignore[misc]


def test_from_options_leaves_out_what_is_unknown() -> None:
    cfg = config(dsn="", environment="", release="", traces_sample_rate=None)
    assert (cfg.public_key, cfg.org_id, cfg.sample_rate_text, cfg.sample_rate_member) == (None, None, None, None)
    assert cfg.new_dsc_members == ()
    assert cfg.new_dsc_tails[None] == ",sentry-sample_rand=0."


def test_org_id_option_wins_over_the_dsn() -> None:
    assert config(org_id="99").org_id == "99"
    assert config(dsn="http://k@127.0.0.1/1", org_id="").org_id is None
    assert config(dsn="http://k@127.0.0.1/1", org_id="5").org_id == "5"


@pytest.mark.parametrize("rate", [-0.1, 1.5, math.nan, math.inf, "0.5", True])
def test_from_options_rejects_bad_rates(rate: Any) -> None:
    with pytest.raises(ValueError, match="traces_sample_rate"):
        config(traces_sample_rate=rate)


def test_from_options_rejects_bad_dsn_and_targets() -> None:
    with pytest.raises(ValueError, match="DSN"):
        config(dsn="https://host/1")
    with pytest.raises(ValueError, match="trace_propagation_targets"):
        config(trace_propagation_targets=["("])


URL = "http://orders.internal:8080/v1/orders?id=3"


@pytest.mark.parametrize(
    ("patterns", "matches"),
    [
        ([".*"], True),
        ([], False),
        (["orders\\.internal"], True),  # searched, not fully matched
        (["^http://orders"], True),
        (["^orders"], False),  # the full URL starts with the scheme
        (["ORDERS"], False),  # case-sensitive
        (["billing", ":8080/v1"], True),
        (["billing", "payments"], False),
        (["id=3$"], True),
    ],
)
def test_targets(patterns: list[str], matches: bool) -> None:
    targets = PropagationTargets(patterns)
    assert targets.matches(URL) is matches
    assert targets.match_all is (patterns == [".*"])


def test_targets_reject_a_bare_string() -> None:
    with pytest.raises(TypeError):
        PropagationTargets(".*")


@given(st.text(), st.lists(st.sampled_from(["a", "b.", "^h", "x$", "[0-9]+"]), max_size=3))
def test_targets_agree_with_re_search(url: str, patterns: list[str]) -> None:
    import re

    assert PropagationTargets(patterns).matches(url) == any(re.search(p, url) for p in patterns)
    assert PropagationTargets([*patterns, ".*"]).matches(url)


# -- what a client sending to Sentry needs: checked against sentry-sdk's own Dsn ------------------------------------


def _sdk_view(dsn: str) -> tuple[str, str, int, str, str, str, str]:
    """sentry-sdk's reading of `dsn`: scheme, host, port, path, project id, public key, envelope URL."""
    sdk = sentry_sdk.utils.Dsn(dsn)
    url = sdk.to_auth().get_api_url(EndpointType.ENVELOPE)
    return sdk.scheme, sdk.host, sdk.port, sdk.path, sdk.project_id, sdk.public_key, url


def _our_view(dsn: str) -> tuple[str, str, int, str, str, str, str]:
    ours = parse_dsn(dsn)
    return ours.scheme, ours.host, ours.port, ours.path, ours.project_id, ours.public_key, ours.envelope_url


@pytest.mark.parametrize(
    "dsn",
    [
        "https://pk123@o42.ingest.sentry.io/7",  # SaaS
        "https://pk123@o42.ingest.us.sentry.io/4508",
        "http://abc:secret@127.0.0.1:9000/7",  # self-hosted, a port, a secret
        "https://k@sentry.example.com/sentry/42",  # behind a path prefix
        "https://k@sentry.example.com:8443/a/b/3",
        "http://k@sentry.internal/5",
        "https://k@sentry.example.com:443/5",  # the default port written out
        "http://k@sentry.example.com:80/5",
    ],
)
def test_dsn_reads_as_sentry_sdk_reads_it(dsn: str) -> None:
    assert _our_view(dsn) == _sdk_view(dsn)


def test_an_ipv6_host_is_bracketed_in_the_envelope_url() -> None:
    """Where sentry-sdk writes `http://::1:9000/...` (no brackets), the URL must bracket the address."""
    dsn = parse_dsn("http://k@[::1]:9000/7")
    assert (dsn.host, dsn.port) == ("::1", 9000)
    assert dsn.envelope_url == "http://[::1]:9000/api/7/envelope/"


_label = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)


@given(
    scheme=st.sampled_from(["http", "https"]),
    key=st.from_regex(r"[a-f0-9]{1,32}", fullmatch=True),
    host=st.lists(_label, min_size=1, max_size=4).map(".".join),
    port=st.one_of(st.none(), st.integers(1, 65535)),
    prefix=st.lists(_label, max_size=3).map(lambda parts: "".join(f"/{p}" for p in parts)),
    project=st.integers(0, 10**9),
)
def test_dsn_fields_and_envelope_url_match_sentry_sdk(
    scheme: str, key: str, host: str, port: int | None, prefix: str, project: int
) -> None:
    dsn = f"{scheme}://{key}@{host}{'' if port is None else f':{port}'}{prefix}/{project}"
    assert _our_view(dsn) == _sdk_view(dsn)


@pytest.mark.parametrize(
    "dsn",
    [
        "ftp://pub:SECRET@o1.ingest.sentry.io/1",
        "https://pub:SECRET@o1.ingest.sentry.io/not-a-number",
        "https://pub:SECRET@o1.ingest.sentry.io/1?x=1",
        "https://pub:SECRET@o1.ingest.sentry.io:99999/1",
    ],
)
def test_an_invalid_dsn_is_shown_without_its_keys(dsn: str) -> None:
    """The message goes to logs (a reload's errors) and to stderr: it names the host and path, never the keys."""
    with pytest.raises(ValueError) as error:
        parse_dsn(dsn)
    message = str(error.value)
    assert message.startswith("invalid DSN")
    assert "SECRET" not in message and "pub" not in message
    assert "<key redacted>@o1.ingest.sentry.io" in message
