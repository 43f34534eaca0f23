"""Who may use the proxy (`forward.allow_clients`), the rate-limited refusal lines, and the start-up checks that go
with them: plain data, no sockets."""

from __future__ import annotations

import ipaddress
import logging
import subprocess
import sys

import pytest

from proxy.app import loopback_only_warning
from proxy.config import Address
from proxy.server.admission import LOOPBACK, ClientAllowList
from proxy.server.log_limit import RateLimitedLog


def allow(*networks: str) -> ClientAllowList:
    return ClientAllowList([ipaddress.ip_network(n) for n in networks])


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.9.8.7", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # an IPv4 client of a dual-stack listener
        ("10.0.0.1", False),
        ("::2", False),
        ("::ffff:10.0.0.1", False),
        ("fe80::1%eth0", False),
        ("not an address", False),
        ("", False),
    ],
)
def test_default_is_loopback_only(host: str, allowed: bool) -> None:
    assert ClientAllowList(LOOPBACK).allows(host) is allowed


def test_networks_and_single_addresses() -> None:
    rules = allow("10.0.0.0/8", "192.168.1.7/32", "fd00::/8")
    assert rules.allows("10.255.0.3")
    assert rules.allows("192.168.1.7")
    assert not rules.allows("192.168.1.8")
    assert rules.allows("fd12::5")
    assert rules.allows("fe80::1%eth0") is False
    assert not rules.allows("127.0.0.1")  # loopback only when listed


def test_answers_are_remembered_and_bounded() -> None:
    rules = allow("10.0.0.0/8")
    for i in range(5000):
        assert rules.allows(f"10.0.{i // 256}.{i % 256}")
        assert len(rules._known) <= 4096
    assert rules.allows("10.0.0.1") and not rules.allows("11.0.0.1")


def test_rate_limited_log_counts_what_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    limited = RateLimitedLog(logging.getLogger("test.limit"), 10.0, lambda: now[0])
    caplog.set_level(logging.WARNING, "test.limit")
    for _ in range(5):
        limited.warning("refused %s", "10.0.0.1")
    now[0] += 9.9
    limited.warning("refused %s", "10.0.0.2")
    now[0] += 0.2
    limited.warning("refused %s", "10.0.0.3")
    assert [r.getMessage() for r in caplog.records] == [
        "refused 10.0.0.1",
        "refused 10.0.0.3 (and 5 more like it in the last 10s)",
    ]


@pytest.mark.parametrize(
    ("listen", "networks", "warns"),
    [
        ("127.0.0.1:3128", LOOPBACK, False),
        ("[::1]:3128", LOOPBACK, False),
        ("localhost:3128", LOOPBACK, False),
        ("0.0.0.0:3128", LOOPBACK, True),
        ("[::]:3128", LOOPBACK, True),
        ("10.1.2.3:3128", LOOPBACK, True),
        ("proxy.internal:3128", LOOPBACK, True),
        ("0.0.0.0:3128", (ipaddress.ip_network("172.16.0.0/12"),), False),
    ],
)
def test_listening_beyond_loopback_with_the_default_clients_says_so(
    listen: str, networks: tuple[ipaddress.IPv4Network, ...], warns: bool
) -> None:
    warning = loopback_only_warning(Address.parse(listen), networks)
    assert (warning is not None) is warns
    if warning is not None:
        assert "forward.allow_clients" in warning and "only loopback clients" in warning
        assert "\n" not in warning


@pytest.mark.parametrize(
    ("soft", "max_connections", "expected"),
    [(256, 2000, 2000), (256, 10**6, None)],
    ids=["raised-to-fit", "hard-limit-lowers-max"],
)
def test_descriptor_limit_is_raised_for_max_connections(soft: int, max_connections: int, expected: int | None) -> None:
    """In a child process with a soft limit of 256 (the hard limit as it is): 2,000 connections need 4,256
    descriptors, and get them; a million do not fit under the hard limit, and max_connections is lowered to fit."""
    code = (
        "import resource\n"
        "from proxy.app import fit_descriptor_limit\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, hard))\n"
        f"fitting = fit_descriptor_limit({max_connections})\n"
        "print(fitting, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    fitting, new_soft, hard = (int(v) for v in out.stdout.split())
    if hard != -1 and hard < 4256:
        pytest.skip(f"the hard descriptor limit here is {hard}")
    if expected is not None:
        assert (fitting, new_soft) == (expected, 2 * expected + 256)
    else:
        assert new_soft == hard
        assert fitting == (hard - 256) // 2
        assert "serving at most" in out.stderr
