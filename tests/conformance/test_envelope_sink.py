"""The envelope sink itself: parsing and decoding, so a conformance failure is never the sink's own."""

from __future__ import annotations

import gzip
import json
import uuid
import zlib

import pytest
import requests
from conformance_sink import EnvelopeSink, decode_body, parse_envelope

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
