"""Conformance with the real sentry-sdk: a downstream service continues exactly the trace trace-proxy wrote.

For each case a plain client (no SDK) sends a request through trace-proxy to a downstream service running
sentry-sdk with tracing (aiohttp integration and WSGI middleware, each its own process), which echoes the trace
headers it received and reports its transaction to a local envelope sink. Runs on sentry-sdk 2.x (a transaction
event) and 3.x (span streaming: the request's segment span, the same ids and the same envelope DSC). Per case:

- the transaction's trace id (``contexts.trace.trace_id``; a segment span's own) is the one in ``sentry-trace``;
- its ``parent_span_id`` is the span id the proxy sent (the proxy's hop), and the SDK's own span is new;
- the envelope header's ``trace`` (the DSC the SDK reports) equals the ``sentry-*`` members of the proxy's
  ``baggage``, decoded — for a continued trace also the client's DSC, unchanged (frozen).
"""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import unquote

import pytest
import requests
import sentry_sdk
from conformance_harness import DOWNSTREAM_ENVIRONMENT, DOWNSTREAM_RELEASE, Downstream, Proxy, StartProxy
from conformance_sink import EnvelopeSink, ReceivedTransaction

SENTRY_TRACE = re.compile(r"([0-9a-f]{32})-([0-9a-f]{16})(?:-([01]))?")
SPAN_ID = re.compile(r"[0-9a-f]{16}")
SAMPLE_RAND = re.compile(r"0\.[0-9]{6}")  # docs/propagation.md §3: exactly 6 decimals, in [0, 1)

PROXY_DSN = "https://pk123@o42.ingest.sentry.io/7"
PROXY_ENVIRONMENT = "conformance stage"  # a space: written %20, the SDK must read it back
PROXY_RELEASE = "trace-proxy-conf@1.0.0+build.7"  # '@' and '+': percent-encoded on the wire

REQUEST_TIMEOUT = 10.0


def proxy_sentry(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "dsn": PROXY_DSN,
        "environment": PROXY_ENVIRONMENT,
        "release": PROXY_RELEASE,
        "traces_sample_rate": 1.0,
        "trace_propagation_targets": [".*"],
    }
    config.update(overrides)
    return {key: value for key, value in config.items() if value is not None}


def new_ids() -> tuple[str, str]:
    return uuid.uuid4().hex, uuid.uuid4().hex[:16]


# -- header helpers ----------------------------------------------------------------------------------------


def baggage_members(header: str) -> list[str]:
    """The list members of a W3C baggage header, as written (surrounding whitespace removed)."""
    return [member.strip() for member in header.split(",") if member.strip()]


def dsc_members(header: str) -> list[str]:
    return [m for m in baggage_members(header) if m.startswith("sentry-")]


def third_party_members(header: str) -> list[str]:
    return [m for m in baggage_members(header) if not m.startswith("sentry-")]


def decode_dsc(header: str) -> dict[str, str]:
    """``sentry-key=value`` members as ``{key: unquoted value}`` (properties after ``;`` dropped)."""
    dsc = {}
    for member in dsc_members(header):
        key, _, value = member.partition(";")[0].partition("=")
        dsc[unquote(key.strip()).removeprefix("sentry-")] = unquote(value.strip())
    return dsc


def sdk_major(sdk: dict[str, Any]) -> int:
    """The major version of the downstream's sentry-sdk (it runs in the test's interpreter, but says so itself); it
    must be the test process's own, so that a run meant for 3.x (CI's, with PYTHONPATH=.sdk3) never tests 2.x."""
    major = int(sdk["sdk_version"].partition(".")[0])
    assert major == int(sentry_sdk.VERSION.partition(".")[0]), (sdk["sdk_version"], sentry_sdk.VERSION)
    return major


# -- one hop through the proxy -----------------------------------------------------------------------------


class Hop:
    """What happened to one request: the headers the downstream received, the SDK's view, its transaction."""

    def __init__(self, echo: dict[str, Any], framework: str) -> None:
        self.echo = echo
        received = echo["received"]
        assert len(received["sentry-trace"]) == 1, f"want exactly one sentry-trace downstream: {received}"
        assert len(received["baggage"]) == 1, f"want exactly one baggage downstream: {received}"
        self.sentry_trace: str = received["sentry-trace"][0]
        self.baggage: str = received["baggage"][0]
        match = SENTRY_TRACE.fullmatch(self.sentry_trace)
        assert match, f"the proxy wrote an invalid sentry-trace: {self.sentry_trace!r}"
        self.trace_id, self.span_id, self.flag = match.group(1), match.group(2), match.group(3)
        self.dsc = decode_dsc(self.baggage)
        self.sdk: dict[str, Any] = echo["sdk"]
        self.framework = framework

    def transaction(self, sink: EnvelopeSink) -> ReceivedTransaction:
        """The downstream's transaction for this hop, checked against what the proxy sent.

        Found by the span id the SDK had in the handler (echoed), so the checks below are not what selects it.
        """
        assert self.sdk is not None, "no current span in the downstream handler"
        transaction = sink.wait_for(lambda t: t.trace_context.get("span_id") == self.sdk["span_id"])
        event, trace = transaction.event, transaction.trace_context
        # 2.x sends a transaction event; 3.x streams spans, the request's root span as a segment span (span v2).
        if sdk_major(self.sdk) < 3:
            assert transaction.kind == "transaction" and event.get("type") == "transaction", event
        else:
            assert transaction.kind == "span" and event.get("is_segment") is True, event
        assert trace["trace_id"] == self.trace_id
        assert trace.get("parent_span_id") == self.span_id, (
            f"the SDK's parent span is not the proxy's hop: {trace} vs sentry-trace {self.sentry_trace}"
        )
        assert SPAN_ID.fullmatch(trace["span_id"]) and trace["span_id"] != self.span_id
        assert transaction.dsc == self.dsc, (
            f"envelope DSC differs from the proxy's baggage:\n  envelope: {transaction.dsc}\n"
            f"  baggage:  {self.dsc}\n  raw baggage: {self.baggage}"
        )
        # The SDK's transport reached the sink directly: through the proxy it would have gained trace headers.
        assert not {"sentry-trace", "baggage", "via"} & transaction.request_headers.keys()
        assert transaction.path == "/api/42/envelope/"
        # The SDK reports its own environment/release on the event; the DSC stays the one it was handed.
        assert transaction.environment == DOWNSTREAM_ENVIRONMENT, event
        assert transaction.release == DOWNSTREAM_RELEASE, event
        return transaction


def send(http: requests.Session, proxy: Proxy, downstream: Downstream, headers: dict[str, str] | None = None) -> Hop:
    response = http.get(downstream.url(), headers=headers or {}, proxies={"http": proxy.url}, timeout=REQUEST_TIMEOUT)
    assert response.status_code == 200, (response.status_code, response.text, proxy.process.log)
    echo = response.json()
    assert echo["framework"] == downstream.framework
    return Hop(echo, downstream.framework)


def assert_sdk_continued(hop: Hop, sampled: bool) -> None:
    """The SDK, in the request handler, is inside a transaction continuing the proxy's span."""
    assert hop.sdk is not None, "no current span in the downstream handler"
    assert hop.sdk["trace_id"] == hop.trace_id
    assert hop.sdk["parent_span_id"] == hop.span_id
    assert hop.sdk["sampled"] is sampled


# -- the cases ---------------------------------------------------------------------------------------------


def test_new_trace(start_proxy: StartProxy, downstream: Downstream, sink: EnvelopeSink, http: requests.Session) -> None:
    proxy = start_proxy(proxy_sentry())
    hops = [send(http, proxy, downstream) for _ in range(2)]
    assert hops[0].trace_id != hops[1].trace_id, "each request without a trace starts its own"

    for hop in hops:
        assert hop.flag == "1"  # rate 1.0
        assert_sdk_continued(hop, sampled=True)
        assert hop.dsc == {
            "trace_id": hop.trace_id,
            "public_key": "pk123",
            "org_id": "42",
            "environment": PROXY_ENVIRONMENT,
            "release": PROXY_RELEASE,
            "sample_rate": "1.0",
            "sampled": "true",
            "sample_rand": hop.dsc.get("sample_rand"),
        }, hop.baggage
        assert SAMPLE_RAND.fullmatch(hop.dsc["sample_rand"]), hop.baggage
        assert third_party_members(hop.baggage) == []
        transaction = hop.transaction(sink)
        assert transaction.dsc is not None and transaction.dsc["public_key"] == "pk123"


# A DSC from another project of the same organisation (org 42, as the proxy's DSN), with a transaction name
# and values that need percent-encoding, and a third-party member.
def client_baggage(trace_id: str, *, sampled: str | None = "true", sample_rand: str | None = "0.123456") -> str:
    members = [
        f"sentry-trace_id={trace_id}",
        "sentry-public_key=otherpk",
        "sentry-org_id=42",
        "sentry-environment=other%20env",
        "sentry-release=frontend%401.2.3",
        "sentry-transaction=GET%20%2Forders%2F%3Aid",
    ]
    if sampled is not None:
        members += ["sentry-sample_rate=0.25", f"sentry-sampled={sampled}"]
    if sample_rand is not None:
        members.append(f"sentry-sample_rand={sample_rand}")
    return ",".join([*members, "vendor=acme"])


@pytest.mark.parametrize(
    ("flag", "sample_rand"),
    [("1", "0.123456"), ("1", None), ("0", "0.500000")],
    ids=["sampled", "sampled-no-incoming-rand", "unsampled"],
)
def test_continued_trace(
    start_proxy: StartProxy,
    downstream: Downstream,
    sink: EnvelopeSink,
    http: requests.Session,
    flag: str,
    sample_rand: str | None,
) -> None:
    proxy = start_proxy(proxy_sentry())  # rate 1.0: the incoming flag wins all the same
    trace_id, parent = new_ids()
    sampled = {"1": "true", "0": "false"}[flag]
    baggage = client_baggage(trace_id, sampled=sampled, sample_rand=sample_rand)
    hop = send(http, proxy, downstream, {"sentry-trace": f"{trace_id}-{parent}-{flag}", "baggage": baggage})

    assert hop.trace_id == trace_id
    assert hop.span_id != parent, "the proxy's hop must be a new span"
    assert hop.flag == flag
    forwarded = dsc_members(hop.baggage)
    if sample_rand is None:  # §4/§5: sample_rand added, inside [0, incoming sample_rate) since the flag is 1
        added = [m for m in forwarded if m.startswith("sentry-sample_rand=")]
        assert len(added) == 1, hop.baggage
        rand = added[0].removeprefix("sentry-sample_rand=")
        assert SAMPLE_RAND.fullmatch(rand) and float(rand) < 0.25, hop.baggage
        forwarded.remove(added[0])
    assert forwarded == dsc_members(baggage), "the frozen DSC is forwarded byte for byte, in order"
    assert third_party_members(hop.baggage) == ["vendor=acme"]
    assert_sdk_continued(hop, sampled=flag == "1")

    if flag == "1":
        transaction = hop.transaction(sink)
        assert transaction.dsc == decode_dsc(baggage) | {"sample_rand": hop.dsc["sample_rand"]}, "the DSC as received"
        assert transaction.dsc["transaction"] == "GET /orders/:id"


def test_duplicate_dsc_keys_go_out_once_as_the_sdk_reads_them(
    start_proxy: StartProxy, downstream: Downstream, sink: EnvelopeSink, http: requests.Session
) -> None:
    """A client baggage that gives `sentry-environment` and `sentry-release` twice, with different values: the
    proxy forwards one member per key, and the downstream SDK's DSC is exactly the forwarded one, which is what
    sentry-sdk itself reads from the client's header (the last value of each key)."""
    from sentry_sdk.tracing_utils import Baggage

    proxy = start_proxy(proxy_sentry())
    trace_id, parent = new_ids()
    baggage = client_baggage(trace_id) + ",sentry-environment=second,sentry-release=second%402"
    hop = send(http, proxy, downstream, {"sentry-trace": f"{trace_id}-{parent}-1", "baggage": baggage})

    keys = [m.partition("=")[0] for m in dsc_members(hop.baggage)]
    assert len(keys) == len(set(keys)), hop.baggage
    assert hop.dsc == Baggage.from_incoming_header(baggage).sentry_items, hop.baggage
    assert hop.dsc["environment"] == "second" and hop.dsc["release"] == "second@2"
    assert third_party_members(hop.baggage) == ["vendor=acme"]
    transaction = hop.transaction(sink)  # checks the envelope's DSC equals the forwarded one
    assert transaction.dsc is not None and transaction.dsc["environment"] == "second"


@pytest.mark.parametrize(
    ("sample_rand", "rate", "flag"),
    [("0.250000", 0.5, "1"), ("0.750000", 0.5, "0"), (None, 1.0, "1")],
    ids=["rand-below-rate", "rand-above-rate", "no-incoming-rand"],
)
def test_deferred_incoming_trace(
    start_proxy: StartProxy,
    downstream: Downstream,
    sink: EnvelopeSink,
    http: requests.Session,
    sample_rand: str | None,
    rate: float,
    flag: str,
) -> None:
    """No flag in the incoming ``sentry-trace``: the proxy decides with its rate and the SDK keeps that."""
    proxy = start_proxy(proxy_sentry(traces_sample_rate=rate))
    trace_id, parent = new_ids()
    baggage = client_baggage(trace_id, sampled=None, sample_rand=sample_rand)
    hop = send(http, proxy, downstream, {"sentry-trace": f"{trace_id}-{parent}", "baggage": baggage})

    assert hop.trace_id == trace_id
    assert hop.span_id != parent
    assert hop.flag == flag
    expected = decode_dsc(baggage) | {"sample_rate": repr(rate)}  # §4: the proxy's rate, no `sampled` added
    if sample_rand is None:
        assert SAMPLE_RAND.fullmatch(hop.dsc.get("sample_rand", "")), hop.baggage  # §4: added, in [0, 1)
        expected["sample_rand"] = hop.dsc["sample_rand"]
    assert hop.dsc == expected, hop.baggage
    assert third_party_members(hop.baggage) == ["vendor=acme"]
    assert_sdk_continued(hop, sampled=flag == "1")

    if flag == "1":
        transaction = hop.transaction(sink)
        assert transaction.dsc is not None and transaction.dsc["sample_rate"] == repr(rate)
        assert "sampled" not in transaction.dsc


def test_parent_from_environment(
    start_proxy: StartProxy, downstream: Downstream, sink: EnvelopeSink, http: requests.Session
) -> None:
    """``SENTRY_TRACE``/``SENTRY_BAGGAGE``: every request without a trace of its own continues that parent."""
    trace_id, parent = new_ids()
    baggage = client_baggage(trace_id)
    proxy = start_proxy(proxy_sentry(), env={"SENTRY_TRACE": f"{trace_id}-{parent}-1", "SENTRY_BAGGAGE": baggage})

    hops = [send(http, proxy, downstream) for _ in range(2)]
    assert hops[0].span_id != hops[1].span_id, "each request is a new span of the environment's trace"
    for hop in hops:
        assert hop.trace_id == trace_id
        assert hop.span_id != parent
        assert hop.flag == "1"
        assert dsc_members(hop.baggage) == dsc_members(baggage)
        assert_sdk_continued(hop, sampled=True)
    for hop in hops:
        assert hop.transaction(sink).dsc == decode_dsc(baggage)

    # The request's own trace comes first (source 1 before 4).
    own_trace, own_parent = new_ids()
    own_baggage = client_baggage(own_trace)
    hop = send(http, proxy, downstream, {"sentry-trace": f"{own_trace}-{own_parent}-1", "baggage": own_baggage})
    assert hop.trace_id == own_trace
    assert dsc_members(hop.baggage) == dsc_members(own_baggage)
    assert hop.transaction(sink).dsc == decode_dsc(own_baggage)


def test_other_organisation_starts_a_new_trace(
    start_proxy: StartProxy, downstream: Downstream, sink: EnvelopeSink, http: requests.Session
) -> None:
    """docs/propagation.md §6: an incoming DSC of another org id is not continued; the SDK follows the proxy's trace."""
    proxy = start_proxy(proxy_sentry())
    trace_id, parent = new_ids()
    baggage = client_baggage(trace_id).replace("sentry-org_id=42", "sentry-org_id=99")
    hop = send(http, proxy, downstream, {"sentry-trace": f"{trace_id}-{parent}-1", "baggage": baggage})

    assert hop.trace_id != trace_id
    assert hop.dsc["trace_id"] == hop.trace_id
    assert hop.dsc["public_key"] == "pk123" and hop.dsc["org_id"] == "42"
    assert third_party_members(hop.baggage) == ["vendor=acme"]
    assert_sdk_continued(hop, sampled=True)
    hop.transaction(sink)


def test_untargeted_request_is_untouched(
    start_proxy: StartProxy, downstream: Downstream, sink: EnvelopeSink, http: requests.Session
) -> None:
    """§7: a URL no target matches keeps the client's headers, so the SDK's parent is the client's span."""
    proxy = start_proxy(proxy_sentry(trace_propagation_targets=["^http://example\\.invalid/"]))
    trace_id, parent = new_ids()
    baggage = client_baggage(trace_id)
    hop = send(http, proxy, downstream, {"sentry-trace": f"{trace_id}-{parent}-1", "baggage": baggage})

    assert hop.sentry_trace == f"{trace_id}-{parent}-1"
    assert hop.baggage == baggage
    assert_sdk_continued(hop, sampled=True)
    assert hop.transaction(sink).dsc == decode_dsc(baggage)
