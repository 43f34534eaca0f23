"""The envelope sink itself: parsing and decoding, so a conformance failure is never the sink's own."""

from __future__ import annotations

import gzip
import json
import uuid
import zlib

import pytest
import requests
from conformance_sink import EnvelopeSink, ReceivedTransaction, decode_body, parse_envelope

DSC = {"trace_id": "a" * 32, "public_key": "pk", "sample_rate": "1.0", "sampled": "true"}


def envelope_bytes(event: dict[str, object], *, with_length: bool, trailing_newline: bool = True) -> bytes:
    payload = json.dumps(event).encode()
    item_header: dict[str, object] = {"type": "transaction", "content_type": "application/json"}
    if with_length:
        item_header["length"] = len(payload)
    attachment = b"line one\nline two"  # a payload with a newline: only its length can delimit it
    parts = [
        json.dumps({"event_id": event["event_id"], "trace": DSC}).encode(),
        json.dumps(item_header).encode(),
        payload,
        json.dumps({"type": "attachment", "length": len(attachment)}).encode(),
        attachment,
    ]
    return b"\n".join(parts) + (b"\n" if trailing_newline else b"")


def transaction_event(trace_id: str = "a" * 32) -> dict[str, object]:
    return {
        "event_id": uuid.uuid4().hex,
        "type": "transaction",
        "contexts": {"trace": {"trace_id": trace_id, "span_id": "b" * 16, "parent_span_id": "c" * 16}},
    }


@pytest.mark.parametrize("with_length", [True, False], ids=["length", "newline-terminated"])
@pytest.mark.parametrize("trailing_newline", [True, False], ids=["trailing-newline", "no-trailing-newline"])
def test_parse_envelope(with_length: bool, trailing_newline: bool) -> None:
    event = transaction_event()
    envelope = parse_envelope(envelope_bytes(event, with_length=with_length, trailing_newline=trailing_newline))
    assert envelope.dsc == DSC
    assert [item.type for item in envelope.items] == ["transaction", "attachment"]
    assert envelope.items[0].json() == event
    assert envelope.items[1].payload == b"line one\nline two"


def test_parse_envelope_rejects_a_short_payload() -> None:
    with pytest.raises(ValueError, match="length"):
        parse_envelope(b'{}\n{"type":"transaction","length":100}\n{}')


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "identity", None])
def test_decode_body(encoding: str | None) -> None:
    body = b'{"event_id":"x"}\n'
    if encoding == "gzip":
        encoded = gzip.compress(body)
    elif encoding == "deflate":
        encoded = zlib.compress(body)
    else:
        encoded = body
    assert decode_body(encoded, encoding) == body


def test_sink_receives_gzip_envelopes_and_anything_else() -> None:
    trace_id = uuid.uuid4().hex
    event = transaction_event(trace_id)
    with EnvelopeSink() as sink, requests.Session() as http:
        http.trust_env = False
        base = f"http://127.0.0.1:{sink.port}"
        response = http.post(
            f"{base}/api/42/envelope/",
            data=gzip.compress(envelope_bytes(event, with_length=True)),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/x-sentry-envelope"},
            timeout=10,
        )
        assert response.status_code == 200
        received = sink.wait_for_transaction(trace_id, timeout=10)
        assert received.event == event
        assert received.dsc == DSC
        assert received.path == "/api/42/envelope/"

        response = http.post(f"{base}/api/42/store/", json={"event_id": "e"}, timeout=10)
        assert response.status_code == 200
        assert [r.path for r in sink.requests] == ["/api/42/envelope/", "/api/42/store/"]
        assert sink.requests[1].envelope is None and sink.requests[1].error is None
        with pytest.raises(TimeoutError, match="no matching transaction"):
            sink.wait_for_transaction(uuid.uuid4().hex, timeout=0.05)


def span_v2_envelope(trace_id: str, *, content_type: str = "application/vnd.sentry.items.span.v2+json") -> bytes:
    """What sentry-sdk 3.x streams: one ``span`` item holding a segment span and one of its children."""
    segment = {
        "trace_id": trace_id,
        "span_id": "b" * 16,
        "parent_span_id": "c" * 16,
        "is_segment": True,
        "attributes": {
            "sentry.environment": {"value": "env", "type": "string"},
            "sentry.release": {"value": "rel@1", "type": "string"},
        },
    }
    child = {"trace_id": trace_id, "span_id": "d" * 16, "parent_span_id": "b" * 16, "is_segment": False}
    payload = json.dumps({"version": 2, "items": [child, segment]}).encode()
    item_header = {"type": "span", "content_type": content_type, "item_count": 2, "length": len(payload)}
    return b"\n".join([json.dumps({"trace": DSC}).encode(), json.dumps(item_header).encode(), payload])


def test_sink_reads_a_segment_span_as_the_transaction() -> None:
    trace_id = uuid.uuid4().hex
    with EnvelopeSink() as sink, requests.Session() as http:
        http.trust_env = False
        url = f"http://127.0.0.1:{sink.port}/api/42/envelope/"
        assert http.post(url, data=span_v2_envelope(trace_id), timeout=10).status_code == 200
        received = sink.wait_for_transaction(trace_id, timeout=10)
        assert received.kind == "span"
        assert received.trace_context == {"trace_id": trace_id, "span_id": "b" * 16, "parent_span_id": "c" * 16}
        assert (received.environment, received.release, received.dsc) == ("env", "rel@1", DSC)
        assert len(sink.transactions_for(trace_id)) == 1, "the child span is not a transaction"

        other = uuid.uuid4().hex
        assert http.post(url, data=span_v2_envelope(other, content_type="application/json"), timeout=10).ok
        assert "not span v2" in (sink.requests[-1].error or "")
        assert sink.transactions_for(other) == []


def test_transaction_fields() -> None:
    envelope = parse_envelope(
        envelope_bytes(transaction_event() | {"environment": "e", "release": "r"}, with_length=True)
    )
    received = ReceivedTransaction(envelope.items[0].json(), envelope, "/api/42/envelope/", {})
    assert (received.kind, received.environment, received.release) == ("transaction", "e", "r")
    assert received.trace_context["parent_span_id"] == "c" * 16
