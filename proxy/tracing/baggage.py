"""W3C ``baggage``: parse it into Sentry's DSC and third-party members, and write it back within limits.

The proxy never re-encodes a member it received: each member keeps its raw (OWS-trimmed) text,
so the frozen dynamic sampling context (DSC, the ``sentry-`` members) is forwarded byte for
byte (docs/propagation.md §5) and third-party members come out exactly as the client sent them.
Only values the proxy writes itself are percent-encoded, with :func:`encode_value`.

Parsing is lenient per member and strict per character: a member that does not follow the W3C
grammar is dropped on its own, the rest of the header survives (§2). Headers as SDKs write them
(no whitespace, no properties) are validated with one ``bytes.translate`` instead of a regular
expression per member; anything else takes the general, per-member path. Both give the same
result (the tests check this).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final, NamedTuple
from urllib.parse import quote, unquote

__all__ = [
    "EMPTY_BAGGAGE",
    "MAX_BAGGAGE_BYTES",
    "MAX_BAGGAGE_MEMBERS",
    "SENTRY_PREFIX",
    "ParsedBaggage",
    "decode_value",
    "encode_value",
    "member_key",
    "parse_baggage",
    "serialize_baggage",
]

MAX_BAGGAGE_BYTES: Final = 8192
"""W3C limit on the one ``baggage`` header the proxy writes."""
MAX_BAGGAGE_MEMBERS: Final = 64
"""W3C limit on the number of members of that header."""
SENTRY_PREFIX: Final = "sentry-"
"""Keys with this prefix belong to Sentry's dynamic sampling context."""

# RFC 9110 token characters (keys).
_TCHARS: Final = "!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters
# W3C baggage-octet (values): printable ASCII except space, DQUOTE, comma, semicolon, backslash.
_OCTETS: Final = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\')
# Deleting the token characters from a header leaves its "skeleton": "=", "," and the octets
# that may appear in values but not in keys ("/", "@", ":", ...).
_TCHAR_BYTES: Final = _TCHARS.encode("ascii")
_SKELETON_BYTES: Final = (",=" + "".join(sorted(set(_OCTETS) - set(_TCHARS)))).encode("ascii")

_TCHAR_CLASS: Final = "[" + re.escape(_TCHARS) + "]"
_OCTET_CLASS: Final = "[" + re.escape(_OCTETS) + "]"
_MEMBER_RE: Final = re.compile(
    rf"(?P<key>{_TCHAR_CLASS}+)[ \t]*=[ \t]*(?P<value>{_OCTET_CLASS}*)"
    rf"(?:[ \t]*;[ \t]*{_TCHAR_CLASS}+(?:[ \t]*=[ \t]*{_OCTET_CLASS}*)?)*"
)
_OWS: Final = " \t"


class ParsedBaggage(NamedTuple):
    """The members of all ``baggage`` headers of one carrier, split by owner.

    ``dsc`` holds the raw DSC members in received order, one per key: of a key given more than
    once, the last member, at the first one's place (as sentry-sdk keeps it); ``dsc_values`` maps
    each DSC key (``sentry-`` prefix included) to its raw, still percent-encoded value, the last
    one winning as in both SDKs; ``third_party`` holds the other members' raw text in order,
    each distinct text once. No member contains a comma.
    """

    dsc: tuple[str, ...]
    dsc_values: Mapping[str, str]
    third_party: tuple[str, ...]


EMPTY_BAGGAGE: Final = ParsedBaggage((), MappingProxyType({}), ())  # shared: make its mapping read-only
"""What a carrier without (valid) baggage parses to."""


def _is_simple(header: str) -> bool:
    """True when ``header`` is a comma list of ``token=octets`` members with no whitespace,
    properties or empty members, i.e. splitting at "," and at the first "=" parses it."""
    try:
        raw = header.encode("ascii")
    except UnicodeEncodeError:
        return False
    skeleton = raw.translate(None, _TCHAR_BYTES)
    # Every member must contain "=" and have only token characters before it: in the
    # skeleton, the text starts with "=" and every "," is directly followed by "=". Only
    # skeleton characters may remain. Keys must not be empty ("=v" at a member start).
    return (
        skeleton.startswith(b"=")
        and skeleton.count(b",") == skeleton.count(b",=")
        and not skeleton.translate(None, _SKELETON_BYTES)
        and not header.startswith("=")
        and ",=" not in header
    )


def parse_baggage(values: Sequence[str]) -> ParsedBaggage:
    """Parse every ``baggage`` header value of one carrier as one list of members.

    Never raises on text input: unparsable members are dropped individually.
    """
    if not values:
        return EMPTY_BAGGAGE
    header = values[0] if len(values) == 1 else ",".join(values)
    dsc: list[str] = []
    dsc_values: dict[str, str] = {}
    third_party: dict[str, None] = {}  # an ordered set

    if _is_simple(header):
        add_dsc = dsc.append
        for member in header.split(","):
            if member[:7] == "sentry-":  # SENTRY_PREFIX, spelled out: this loop is hot on a cache miss
                key, _, value = member.partition("=")
                dsc_values[key] = value
                add_dsc(member)
            else:
                third_party[member] = None
    else:
        for part in header.split(","):
            member = part.strip(_OWS)
            match = _MEMBER_RE.fullmatch(member)
            if match is None:
                continue
            key = match["key"]
            if key.startswith(SENTRY_PREFIX):
                dsc.append(member)
                dsc_values[key] = match["value"]
            else:
                third_party[member] = None
    if not dsc and not third_party:
        return EMPTY_BAGGAGE
    if len(dsc) != len(dsc_values):
        # A key given twice: the SDKs read the DSC into a map, so the last value wins, at the first one's place
        # (sentry-sdk's dict); forwarding both would let each reader pick its own (docs/propagation.md §5).
        dsc = list({member_key(member): member for member in dsc}.values())
    return ParsedBaggage(tuple(dsc), dsc_values, tuple(third_party))


def member_key(member: str) -> str:
    """The key of a raw member as kept by :func:`parse_baggage` (text before ``=``, OWS removed)."""
    return member.partition("=")[0].rstrip(_OWS)


def decode_value(raw: str) -> str:
    """Percent-decode a received value (cheap when it holds no escape)."""
    return unquote(raw) if "%" in raw else raw


def encode_value(value: str) -> str:
    """Percent-encode a value the proxy writes, like the Python SDK (``quote``; ``/`` stays raw)."""
    return quote(value)


def _byte_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def serialize_baggage(dsc: str, third_party: Sequence[str] = ()) -> str | None:
    """Write one ``baggage`` value: the DSC, then as many third-party members as fit.

    ``dsc`` is the DSC members already joined with ``,`` (possibly empty; members never contain
    a comma). The W3C limits (:data:`MAX_BAGGAGE_BYTES`, :data:`MAX_BAGGAGE_MEMBERS`) are met by
    dropping third-party members from the end; DSC members are never dropped, even if they
    alone exceed a limit, because losing them would break the trace's sampling. ``None`` means
    "write no header" (nothing to write).
    """
    if not third_party:
        return dsc or None
    dsc_count = dsc.count(",") + 1 if dsc else 0
    joined = dsc + "," + ",".join(third_party) if dsc else ",".join(third_party)
    if dsc_count + len(third_party) <= MAX_BAGGAGE_MEMBERS and _byte_len(joined) <= MAX_BAGGAGE_BYTES:
        return joined
    room = MAX_BAGGAGE_MEMBERS - dsc_count
    size = _byte_len(dsc)
    kept: list[str] = []
    for member in third_party:
        if len(kept) >= room:
            break
        size += _byte_len(member) + (1 if size else 0)
        if size > MAX_BAGGAGE_BYTES:
            break
        kept.append(member)
    if not kept:
        return dsc or None
    if dsc:
        return dsc + "," + ",".join(kept)
    return ",".join(kept)
