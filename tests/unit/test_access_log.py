"""proxy.access_log and proxy.logs: what an access line holds (and never holds), in text and in JSON."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from proxy.access_log import FIELDS, AccessLog, access_fields, access_observers
from proxy.app import build_propagator
from proxy.config import LogSettings, SentrySettings, Settings
from proxy.logs import ACCESS_LOGGER, TEXT_FORMAT, configure_logging, json_formatter
from proxy.server.exchange import CONNECT, UNPLANNED, Exchange, ExchangeEnds, Outcome, tunnel_plan
from proxy.server.http1 import RequestPolicy, plan_request

DSN = "https://abc123@o42.ingest.sentry.io/7"
SECRETS = ("s3cr3t-query", "s3cr3t-auth", "s3cr3t-cookie", "s3cr3t-proxy-auth")


def _policy(rate: float | None = 1.0, targets: tuple[str, ...] = (".*",)) -> RequestPolicy:
    settings = Settings(sentry=SentrySettings(dsn=DSN, traces_sample_rate=rate, trace_propagation_targets=targets))
    return RequestPolicy.create(build_propagator(settings, {}), ())


def _exchange(
    target: bytes = b"http://svc.internal:8080/orders/42?token=s3cr3t-query",
    policy: RequestPolicy | None = None,
    method: bytes = b"POST",
) -> Exchange:
    headers = [
        (b"Host", b"svc.internal:8080"),
        (b"Authorization", b"Bearer s3cr3t-auth"),
        (b"Cookie", b"session=s3cr3t-cookie"),
        (b"Proxy-Authorization", b"Basic s3cr3t-proxy-auth"),
        (b"Content-Length", b"3"),
    ]
    plan = plan_request(method, target, True, True, False, headers, policy or _policy())
    clock = iter([0.0, 10.0, 10.25])  # ExchangeEnds reads it at creation, then at begin and end
    ends = ExchangeEnds(lambda: next(clock), lambda: 1_700_000_000.0 + 10.0, ())
    exchange = ends.begin(plan)
    exchange.status = 201
    exchange.bytes_to_origin = 321
    exchange.bytes_to_client = 654
    ends.end(exchange, Outcome.COMPLETE)
    return exchange


def test_fields_of_a_forwarded_request() -> None:
    exchange = _exchange()
    fields = access_fields(exchange)
    decision = exchange.plan.decision
    assert list(fields) == list(FIELDS)
    assert fields == {
        "method": "POST",
        "scheme": "http",
        "host": "svc.internal",
        "port": 8080,
        "path": "/orders/42",
        "status": 201,
        "bytes_to_origin": 321,
        "bytes_to_client": 654,
        "duration_s": 0.25,
        "trace_id": decision.trace_id,
        "span_id": decision.span_id,
        "sampled": True,
        "source": "new",
        "outcome": "complete",
    }
    assert decision.trace_id is not None and len(decision.trace_id) == 32


def test_deferred_and_untouched_requests() -> None:
    deferred = access_fields(_exchange(policy=_policy(rate=None)))
    assert deferred["sampled"] == "deferred" and deferred["source"] == "new"
    untouched = access_fields(_exchange(policy=_policy(targets=("^nothing$",))))
    assert untouched["source"] == "untouched"
    assert (untouched["trace_id"], untouched["span_id"], untouched["sampled"]) == (None, None, None)


def test_a_refused_request_has_no_request_fields() -> None:
    clock = iter([0.0, 5.0, 5.0])
    ends = ExchangeEnds(lambda: next(clock), lambda: 0.0, ())
    exchange = ends.begin(UNPLANNED)
    ends.end(exchange, Outcome.REFUSED, 403)
    fields = access_fields(exchange)
    assert fields["status"] == 403 and fields["outcome"] == "refused"
    assert all(fields[name] is None for name in ("method", "scheme", "host", "port", "path", "trace_id", "source"))


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger's output through `configure_logging`, restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    access_level = logging.getLogger(ACCESS_LOGGER).level
    stream = io.StringIO()
    yield stream
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.getLogger(ACCESS_LOGGER).setLevel(access_level)
    logging.captureWarnings(False)


def _log_access(settings: LogSettings, exchange: Exchange, stream: io.StringIO) -> list[str]:
    configure_logging(settings, stream=stream)
    for observer in access_observers(settings):
        observer.exchange_ended(exchange)
    return stream.getvalue().splitlines()


def test_json_line(captured: io.StringIO) -> None:
    exchange = _exchange()
    [line] = _log_access(LogSettings(format="json", access=True), exchange, captured)
    assert line.startswith('{"time": ')
    record = json.loads(line)
    assert record["level"] == "INFO" and record["logger"] == "proxy.access" and record["message"] == "access"
    stamp = datetime.fromisoformat(record["time"])
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60
    assert {k: record[k] for k in FIELDS} == access_fields(exchange)
    assert not any(secret in line for secret in SECRETS)


def test_text_line(captured: io.StringIO) -> None:
    exchange = _exchange()
    [line] = _log_access(LogSettings(access=True), exchange, captured)
    decision = exchange.plan.decision
    assert " INFO proxy.access: method=POST scheme=http host=svc.internal port=8080 path=/orders/42 status=201 " in line
    assert line.endswith(
        f"bytes_to_origin=321 bytes_to_client=654 duration_s=0.25 trace_id={decision.trace_id} "
        f"span_id={decision.span_id} sampled=true source=new outcome=complete"
    )
    assert not any(secret in line for secret in SECRETS)


def test_access_off_adds_no_observer_and_writes_nothing(captured: io.StringIO) -> None:
    assert access_observers(LogSettings()) == ()
    configure_logging(LogSettings(), stream=captured)
    AccessLog(logging.getLogger(ACCESS_LOGGER), json=False).exchange_ended(_exchange())
    assert captured.getvalue() == ""


def test_access_lines_ignore_the_level(captured: io.StringIO) -> None:
    """`access = true` asks for the lines whatever the level; the level still filters everything else."""
    lines = _log_access(LogSettings(level="error", access=True), _exchange(), captured)
    logging.getLogger("proxy.app").info("not at this level")
    assert len(lines) == 1 and "proxy.access" in lines[0]
    assert "not at this level" not in captured.getvalue()


def test_cli_level_wins_over_the_file(captured: io.StringIO) -> None:
    configure_logging(LogSettings(level="error"), level_override="debug", stream=captured)
    logging.getLogger("proxy.app").debug("shown")
    assert "DEBUG proxy.app: shown" in captured.getvalue()


def test_reconfiguring_replaces_the_handler(captured: io.StringIO) -> None:
    """A reload switching text to JSON writes each later line once, as JSON."""
    configure_logging(LogSettings(), stream=captured)
    logging.getLogger("proxy.app").info("as text")
    configure_logging(LogSettings(format="json"), stream=captured)
    logging.getLogger("proxy.app").info("as json", extra={"answer": 42})
    first, second = captured.getvalue().splitlines()
    assert first.endswith("INFO proxy.app: as text")
    assert json.loads(second) | {"time": None} == {
        "level": "INFO",
        "logger": "proxy.app",
        "message": "as json",
        "answer": 42,
        "time": None,
    }


def test_a_connect_is_logged_with_its_target_and_no_trace() -> None:
    """A CONNECT's exchange has the tunnel's target for its plan: the line says CONNECT, the target, and no path or
    trace decision (the proxy sees nothing inside the tunnel)."""
    clock = iter([0.0, 1.0, 1.5])
    ends = ExchangeEnds(lambda: next(clock), lambda: 1_700_000_000.0, ())
    exchange = ends.begin(tunnel_plan("db.internal", 443))
    exchange.kind = CONNECT
    ends.end(exchange, Outcome.COMPLETE, 200)
    fields = access_fields(exchange)
    assert (fields["method"], fields["host"], fields["port"], fields["status"]) == ("CONNECT", "db.internal", 443, 200)
    assert fields["path"] is fields["scheme"] is fields["source"] is fields["sampled"] is fields["trace_id"] is None


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_line_is_what_the_configured_formatter_writes(captured: io.StringIO, fmt: str) -> None:
    """Access lines bypass the logging machinery for speed: each must be exactly what the installed handler's
    formatter makes of the same record at the same time (python-json-logger's for JSON), so that a log reader sees
    one format, whichever way a line came."""
    exchange = _exchange()
    settings = LogSettings(format=fmt, access=True)
    [line] = _log_access(settings, exchange, captured)
    fields = access_fields(exchange)
    # The record the handler would have been given, at the time the line carries.
    if fmt == "json":
        created = datetime.fromisoformat(json.loads(line)["time"]).timestamp()
        msecs = 0.0  # not in the JSON format
    else:
        stamp, _, _ = line.partition(" INFO ")
        created = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        msecs = float(stamp.rpartition(",")[2])  # as written: `created` parsed back is only as exact as a float
    logger = logging.getLogger(ACCESS_LOGGER)
    message, extra = ("access", fields) if fmt == "json" else (line.partition(": ")[2], None)
    record = logger.makeRecord(logger.name, logging.INFO, "", 0, message, (), None, extra=extra)
    record.created, record.msecs = created, msecs
    formatter = json_formatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    assert line == formatter.format(record)


def test_without_configured_logging_lines_go_through_the_logger(caplog: pytest.LogCaptureFixture) -> None:
    """An AccessLog used where `configure_logging` never ran (a library user, a test) still logs, through its
    logger."""
    import proxy.logs

    installed, proxy.logs._installed[:] = list(proxy.logs._installed), []
    try:
        with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
            AccessLog(logging.getLogger(ACCESS_LOGGER), json=False).exchange_ended(_exchange())
    finally:
        proxy.logs._installed[:] = installed
    [record] = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert record.getMessage().startswith("method=POST scheme=http host=svc.internal")
