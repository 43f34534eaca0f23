"""W3C ``baggage`` parsing and writing (docs/propagation.md §2)."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.tracing.baggage import (
    MAX_BAGGAGE_BYTES,
    MAX_BAGGAGE_MEMBERS,
    ParsedBaggage,
    decode_value,
    encode_value,
    member_key,
    parse_baggage,
    serialize_baggage,
)

# W3C baggage list-member, written independently of the implementation: RFC 9110 token key,
# baggage-octet value, optional properties, OWS around "=" and ";".
TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
OCTET = r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]"
MEMBER = re.compile(rf"{TCHAR}+[ \t]*=[ \t]*{OCTET}*(?:[ \t]*;[ \t]*{TCHAR}+(?:[ \t]*=[ \t]*{OCTET}*)?)*")

TCHARS = "!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters
OCTETS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\')
keys = st.text(TCHARS, min_size=1, max_size=12)
values = st.text(OCTETS, max_size=20)
members = st.builds(lambda k, v: f"{k}={v}", keys, values)
third_party_members = members.filter(lambda m: not m.startswith("sentry-"))
dsc_members = st.builds(lambda k, v: f"sentry-{k}={v}", keys, values)
# Text that looks like baggage often enough to exercise both parser paths.
baggage_ish = st.lists(st.sampled_from([*'ab=,; \t"\\%/@-é', "sentry-", "x=1", ",,"]), max_size=20).map("".join)


def test_split_dsc_and_third_party_keeping_raw_text() -> None:
    parsed = parse_baggage(["sentry-trace_id=abc,foo=bar,sentry-release=billing%401.4.2,userId=alice;prop=1"])
    assert parsed.dsc == ("sentry-trace_id=abc", "sentry-release=billing%401.4.2")
    assert dict(parsed.dsc_values) == {"sentry-trace_id": "abc", "sentry-release": "billing%401.4.2"}
    assert parsed.third_party == ("foo=bar", "userId=alice;prop=1")


def test_ows_trimmed_properties_and_inner_text_kept() -> None:
    parsed = parse_baggage([" foo = bar ;\tp = 1 ; q ,\tsentry-sampled=true  "])
    assert parsed.third_party == ("foo = bar ;\tp = 1 ; q",)
    assert parsed.dsc == ("sentry-sampled=true",)
    assert parsed.dsc_values == {"sentry-sampled": "true"}


def test_several_headers_are_one_list() -> None:
    parsed = parse_baggage(["sentry-a=1", "foo=bar,sentry-b=2", "", "x=y"])
    assert parsed.dsc == ("sentry-a=1", "sentry-b=2")
    assert parsed.third_party == ("foo=bar", "x=y")


@pytest.mark.parametrize(
    "bad",
    ["=novalue", "novalue", "k e=v", "k=v v", 'k="v"', "k=v\\", "k=é", "k/x=1", "k=1;", "k=1;=p", "(k)=1", "k=\x01"],
)
def test_unparsable_member_dropped_alone(bad: str) -> None:
    parsed = parse_baggage([f"a=1,{bad},sentry-b=2"])
    assert parsed.third_party == ("a=1",)
    assert parsed.dsc == ("sentry-b=2",)


def test_empty_value_and_value_only_octets_are_valid() -> None:
    parsed = parse_baggage(["sentry-release=,sentry-transaction=GET%20/api/users?a=b,k=@:/[]{}<>?()="])
    assert parsed.dsc_values == {"sentry-release": "", "sentry-transaction": "GET%20/api/users?a=b"}
    assert parsed.third_party == ("k=@:/[]{}<>?()=",)


def test_third_party_deduplicated_dsc_key_once_last_value_at_first_place() -> None:
    parsed = parse_baggage(["a=1,sentry-x=1,a=1,sentry-y=0,b=2,sentry-x=2,a=1 ,a=2"])
    assert parsed.third_party == ("a=1", "b=2", "a=2")
    assert parsed.dsc == ("sentry-x=2", "sentry-y=0")
    assert parsed.dsc_values == {"sentry-x": "2", "sentry-y": "0"}


@pytest.mark.parametrize(
    "header",
    [
        "sentry-trace_id=aaa,sentry-trace_id=bbb",
        "sentry-trace_id=aaa, sentry-sampled=true ,sentry-trace_id=bbb;p=1",  # the general parser
        "sentry-sample_rand=0.1,x=1,sentry-sampled=false,sentry-sample_rand=0.9,sentry-sampled=true",
        "sentry-release=a%401,sentry-release=b%402",
    ],
)
def test_duplicate_dsc_keys_are_read_as_sentry_sdk_reads_them(header: str) -> None:
    """The oracle: sentry-sdk's own Baggage parser. One member per key goes out, with the value and in the place the
    SDK keeps in its DSC (the last value, where the key first appeared)."""
    parsed = parse_baggage([header])
    assert len({member_key(m) for m in parsed.dsc}) == len(parsed.dsc)
    assert _as_sdk_reads(parsed.dsc) == _sdk_sentry_items(header)


def _as_sdk_reads(dsc: tuple[str, ...]) -> list[tuple[str, str]]:
    """The (key without `sentry-`, decoded value) pairs of raw DSC members, in order."""
    pairs = []
    for member in dsc:
        value = member.partition("=")[2].strip(" \t").partition(";")[0].strip(" \t")
        pairs.append((member_key(member)[7:], decode_value(value)))
    return pairs


def _sdk_sentry_items(header: str) -> list[tuple[str, str]]:
    from sentry_sdk.tracing_utils import Baggage

    items = Baggage.from_incoming_header(header).sentry_items
    # The SDK keeps properties as part of the value; the W3C grammar does not (they are not the value).
    return [(key, value.partition(";")[0].strip(" \t")) for key, value in items.items()]


sdk_keys = st.sampled_from(["trace_id", "public_key", "sample_rand", "sampled", "release", "org_id", "x"])


@given(
    st.lists(st.one_of(third_party_members, st.builds(lambda k, v: f"sentry-{k}={v}", sdk_keys, values)), max_size=12)
)
def test_dsc_agrees_with_sentry_sdk_whatever_the_duplicates(parts: list[str]) -> None:
    header = ",".join(parts)
    assert _as_sdk_reads(parse_baggage([header]).dsc) == _sdk_sentry_items(header)


def test_nothing_valid() -> None:
    assert parse_baggage([]) == ParsedBaggage((), {}, ())
    assert parse_baggage([",, ,", "=", "x"]) == ParsedBaggage((), {}, ())


def test_encode_value_like_the_python_sdk() -> None:
    assert encode_value("billing@1.4.2") == "billing%401.4.2"
    assert encode_value("a b,c;d=e%f") == "a%20b%2Cc%3Bd%3De%25f"
    assert encode_value("GET /api/users") == "GET%20/api/users"
    assert encode_value("é") == "%C3%A9"
    assert decode_value("billing%401.4.2") == "billing@1.4.2"
    assert decode_value("plain") == "plain"


def test_member_key() -> None:
    assert member_key("sentry-x = 1;p") == "sentry-x"
    assert member_key("k=v=w") == "k"


def test_serialize_dsc_first_and_empty() -> None:
    assert serialize_baggage("sentry-a=1,sentry-b=2", ["x=1", "y=2"]) == "sentry-a=1,sentry-b=2,x=1,y=2"
    assert serialize_baggage("", ["x=1"]) == "x=1"
    assert serialize_baggage("sentry-a=1") == "sentry-a=1"
    assert serialize_baggage("") is None
    assert serialize_baggage("", []) is None


def test_serialize_byte_limit_drops_third_party_from_the_end() -> None:
    dsc = "sentry-a=" + "v" * 100
    third = [f"k{i}=" + "w" * 1000 for i in range(20)]
    written = serialize_baggage(dsc, third)
    assert written is not None
    assert len(written.encode()) <= MAX_BAGGAGE_BYTES
    kept = written.split(",")[1:]
    assert kept == third[: len(kept)]
    assert len(written) + 1 + len(third[len(kept)]) > MAX_BAGGAGE_BYTES


def test_serialize_member_limit() -> None:
    dsc = ",".join(f"sentry-k{i}=1" for i in range(10))
    third = [f"k{i}=1" for i in range(100)]
    written = serialize_baggage(dsc, third)
    assert written is not None
    assert len(written.split(",")) == MAX_BAGGAGE_MEMBERS
    assert written.split(",")[10:] == third[: MAX_BAGGAGE_MEMBERS - 10]


def test_serialize_never_drops_dsc_even_over_the_limits() -> None:
    dsc = ",".join(f"sentry-k{i}=" + "v" * 200 for i in range(70))
    assert serialize_baggage(dsc, ["x=1"]) == dsc


@given(st.lists(st.text(), max_size=3))
def test_parse_never_raises_and_keeps_only_valid_members(texts: list[str]) -> None:
    parsed = parse_baggage(texts)
    for member in (*parsed.dsc, *parsed.third_party):
        assert MEMBER.fullmatch(member), member
        assert "," not in member
    assert all(m.startswith("sentry-") for m in parsed.dsc)
    assert not any(m.startswith("sentry-") for m in parsed.third_party)
    assert len(set(parsed.third_party)) == len(parsed.third_party)


@given(st.lists(st.one_of(members, dsc_members, baggage_ish), max_size=12))
def test_fast_and_general_paths_agree(parts: list[str]) -> None:
    header = ",".join(parts)
    # OWS after each comma and in front changes no member but forces the general parser.
    assert parse_baggage([header]) == parse_baggage([" " + header.replace(",", ", \t")])


@given(st.lists(third_party_members, max_size=8), st.lists(dsc_members, max_size=8))
def test_valid_members_all_survive_in_order(third: list[str], dsc: list[str]) -> None:
    parsed = parse_baggage([",".join(third + dsc)])
    assert parsed.dsc == tuple({member_key(m): m for m in dsc}.values())  # a key given twice: the last, in place
    assert parsed.third_party == tuple(dict.fromkeys(third))


@given(
    st.lists(dsc_members, max_size=80),
    st.lists(st.builds(lambda k, v: f"{k}={v}", keys, st.text(OCTETS, max_size=400)), max_size=120),
)
def test_serialize_parses_back_within_limits(dsc: list[str], third: list[str]) -> None:
    dsc = list({member_key(m): m for m in dsc}.values())  # what parsing keeps of duplicate keys
    third = [m for m in dict.fromkeys(third) if not m.startswith("sentry-")]
    written = serialize_baggage(",".join(dsc), third)
    if not dsc and not third:
        assert written is None
        return
    assert written is not None
    reparsed = parse_baggage([written])
    assert reparsed.dsc == tuple(dsc)  # every DSC member, byte for byte
    kept = list(reparsed.third_party)
    assert kept == third[: len(kept)]  # dropped from the end only
    if len(kept) < len(third):
        # Only dropped when keeping one more would break a limit.
        assert kept or dsc
        assert (
            len(written.encode()) + 1 + len(third[len(kept)].encode()) > MAX_BAGGAGE_BYTES
            or len(dsc) + len(kept) + 1 > MAX_BAGGAGE_MEMBERS
        )
    if kept:
        assert len(written.encode()) <= MAX_BAGGAGE_BYTES
        assert len(dsc) + len(kept) <= MAX_BAGGAGE_MEMBERS
