"""The grammar planning and the configuration share (proxy/server/grammar.py): one reading of an authority for a
request target and a listen address, and the hop-by-hop names the response scan is written out for."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import Address
from proxy.server import grammar
from proxy.server.http1 import _HOP_LINE, _HOP_LINE_BUT_KEEP_ALIVE, RequestRejected, split_authority


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("example.com", 80, ("example.com", 80)),
        ("example.com:8080", 80, ("example.com", 8080)),
        ("[::1]:3128", None, ("::1", 3128)),
        ("under_score.internal:81", None, ("under_score.internal", 81)),  # a client's name: left to the resolver
        ("10.0.0.1:65535", None, ("10.0.0.1", 65535)),
    ],
)
def test_split_authority_accepts(text: str, default: int | None, expected: tuple[str, int]) -> None:
    assert grammar.split_authority(text, default) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", ["invalid host", "empty"]),
        ("user@example.com:80", ["invalid host"]),
        ("[::1:80", ["malformed IPv6"]),
        ("[::1]x", ["malformed authority"]),
        ("example.com:", ["empty port"]),
        ("example.com:0", ["invalid port"]),
        ("example.com:70000", ["invalid port", "70000"]),
        ("example.com:80:80", ["invalid port"]),
        ("example.com:٣", ["invalid port"]),  # a digit, but not an ASCII one
        ("::1", ["invalid host", "brackets"]),
        ("fe80::1:8080", ["invalid host", "brackets"]),
        (":80", ["invalid host", "missing host"]),
        ("exa mple.com", ["invalid host"]),
        ("a..b", ["empty label"]),
        ("b" * 64 + ".example", ["label longer than 63"]),
        ("example.com", ["missing port", "'example.com'"]),  # no default port
    ],
)
def test_split_authority_refuses_naming_the_problem(text: str, words: list[str]) -> None:
    with pytest.raises(grammar.AuthorityError) as info:
        grammar.split_authority(text, None if "port" in words[0] else 80)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_planning_and_configuration_read_an_authority_alike() -> None:
    """The same text is refused by both for the same reason: the planner's 400 and the config's field error."""
    for text in ("::1:3128", "example.com:0", ":3128", "a..b:80", "host:"):
        with pytest.raises(RequestRejected) as planned:
            split_authority(text.encode(), None)
        with pytest.raises(ValueError) as configured:
            Address.parse(text)
        assert str(configured.value).startswith(planned.value.message)


def test_a_listen_host_is_held_to_the_dns_rules() -> None:
    assert Address.parse("LocalHost:80") == Address("localhost", 80)
    assert Address.parse("[0:0::1]:80") == Address("::1", 80)
    for text, words in (
        ("under_score:80", "not a valid hostname"),
        ("[nothex]:80", "not an IPv6 address"),
        ("300.1.1.1:80", "not an IPv4 address"),
    ):
        with pytest.raises(ValueError, match=words):
            Address.parse(text)


@given(st.text(alphabet="ab1:.[]-_@ ", max_size=16))
def test_a_listen_address_is_an_authority_planning_accepts(text: str) -> None:
    """Whatever the configuration accepts as a listen address, planning reads as the same host and port."""
    try:
        address = Address.parse(text)
    except ValueError:
        return
    host, port = grammar.split_authority(text, None)
    assert port == address.port
    assert host.lower() == address.host or ":" in host


def test_the_response_scan_finds_exactly_the_hop_by_hop_fields() -> None:
    """`_HOP_LINE` is written out by hand for speed: it must name every hop-by-hop field but Trailer (a chunked
    response's trailer fields are relayed), and nothing else."""
    names = grammar.HOP_BY_HOP - {b"trailer"}
    for name in names:
        assert _HOP_LINE.fullmatch(b"\r\n" + name + b": x"), name
    for name in (b"trailer", b"content-length", b"teapot", b"upgrade-insecure-requests", b"connectionx", b"date"):
        assert not _HOP_LINE.fullmatch(b"\r\n" + name + b": x"), name
    assert not _HOP_LINE_BUT_KEEP_ALIVE.search(b"\r\nconnection: keep-alive\r\n")
    assert _HOP_LINE_BUT_KEEP_ALIVE.search(b"\r\nconnection: close\r\n")


def test_connection_tokens() -> None:
    assert grammar.connection_tokens(b" Close , ,X-Foo") == [b"close", b"x-foo"]
