"""The HTTP grammar the proxy and its configuration share: authorities, host names, hop-by-hop fields and the
Connection header's tokens. Pure functions and constants, no I/O.

One place, so that a rule cannot drift between its users: planning (`http1`) reads request targets and CONNECT
authorities with `split_authority`, the configuration reads listen addresses (and later an inbound upstream) with
the same function plus `check_listen_host`, which only a configured address must pass (a name we bind or resolve
ourselves is held to the DNS letter-digit-hyphen rule; a name a client sends is left to the resolver, which knows
names with an underscore).

Errors are `AuthorityError` (a ValueError) with a one-line reason that quotes the text: planning turns it into a
400, the configuration into a ``section.key: reason`` line.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

__all__ = [
    "CONNECTION_OPTIONS",
    "FRAMING_NAMES",
    "HOP_BY_HOP",
    "REQUEST_SPECIAL",
    "AuthorityError",
    "check_listen_host",
    "connection_tokens",
    "split_authority",
]

# Hop-by-hop fields (RFC 9110 §7.6.1, plus the obsolete Proxy-Connection clients still send): a proxy never relays
# them; the message's own Connection header may name more.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)
# Request fields that never go out as they came: the hop-by-hop ones plus those the proxy writes itself (Host and
# the framing) or handles itself (Expect, dropped from an HTTP/1.0 request).
REQUEST_SPECIAL: Final = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
# Fields that a Connection header must not remove: the message's framing depends on them.
FRAMING_NAMES: Final = frozenset({b"content-length", b"transfer-encoding", b"host"})
# Tokens of Connection that name options rather than fields to drop.
CONNECTION_OPTIONS: Final = frozenset({b"close", b"keep-alive", b"upgrade"})

MAX_HOST_NAME: Final = 253  # RFC 1035 §2.3.4, without the trailing dot of a fully qualified name
MAX_LABEL: Final = 63
_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # RFC 1123 §2.1
_NOT_IN_HOST = " /\\?#%@"


class AuthorityError(ValueError):
    """An authority (``host[:port]``) that cannot be used; the message is one line naming what is wrong."""


def connection_tokens(value: bytes) -> list[bytes]:
    """The lowercased tokens of a Connection (or Proxy-Connection) field value, empty ones left out."""
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


def split_authority(text: str, default_port: int | None) -> tuple[str, int]:
    """``host[:port]`` or ``[IPv6]:port`` as (host, port): the host without brackets, exactly as written.

    Strict, since it decides where bytes go: no empty or non-numeric port, no port outside 1-65535, a
    port required when `default_port` is None, an IPv6 address only in brackets, and a name the resolver can encode
    (`_check_host_name`)."""
    if not text:
        raise AuthorityError("invalid host: the authority is empty")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise AuthorityError(f"malformed IPv6 authority {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise AuthorityError(f"malformed authority {text!r}")
        if rest == ":":
            raise AuthorityError(f"empty port in {text!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.partition(":")
        if ":" in port_text and (_is_ipv6(text) or _is_ipv6(text.rpartition(":")[0])):
            raise AuthorityError(f"invalid host in {text!r}: an IPv6 address needs brackets, as in [::1]:8080")
        if sep and not port_text:
            raise AuthorityError(f"empty port in {text!r}")
    if not host:
        raise AuthorityError(f"invalid host in {text!r}: missing host")
    if any(c in host for c in _NOT_IN_HOST) or not all(32 < ord(c) < 127 for c in host):
        raise AuthorityError(f"invalid host in {text!r}")
    if not text.startswith("["):
        _check_host_name(host)
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5 or not 0 < int(port_text) < 65536:
            raise AuthorityError(f"invalid port in {text!r}")
        return host, int(port_text)
    if default_port is None:
        raise AuthorityError(f"missing port in {text!r}")
    return host, default_port


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _check_host_name(host: str) -> None:
    """Refuse a name that no resolver can look up: an empty label or one over 63 characters, or over 253 in all
    (the resolver's IDNA encoding raises for those, long after the request was accepted)."""
    name = host[:-1] if host.endswith(".") else host
    shown = host if len(host) <= 80 else host[:77] + "..."
    if len(name) > MAX_HOST_NAME:
        raise AuthorityError(f"invalid host {shown!r}: longer than {MAX_HOST_NAME} characters")
    for label in name.split("."):
        if not label:
            raise AuthorityError(f"invalid host {shown!r}: an empty label")
        if len(label) > MAX_LABEL:
            raise AuthorityError(f"invalid host {shown!r}: a label longer than {MAX_LABEL} characters")


def check_listen_host(host: str, bracketed: bool) -> str:
    """A host from `split_authority` that the proxy itself binds or resolves: an IPv6 address (bracketed), an IPv4
    address (a numeric last label means one), or an LDH host name; returned normalised (addresses in their
    canonical form, names lowercased)."""
    if bracketed:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise AuthorityError(f"{host!r} is not an IPv6 address") from None
    if host.rpartition(".")[2].isdigit():  # a numeric last label: only an IPv4 address looks so
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise AuthorityError(f"{host!r} is not an IPv4 address") from None
    if not all(_LDH_LABEL.fullmatch(label) for label in host.removesuffix(".").split(".")):
        raise AuthorityError(f"{host!r} is not a valid hostname (letters, digits and hyphens)")
    return host.lower()
