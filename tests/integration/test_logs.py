"""Logs of a running proxy: the access log in JSON and text (what it carries, what it never does), the start-up
line, and which level wins."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy import build_info
from tests.helpers import http, toml
from tests.helpers.origin import Origin
from tests.helpers.proxy_process import DEFAULT_CONFIG, REPO, ProxyFactory, clean_env

pytestmark = pytest.mark.asyncio

SECRETS = {
    "query": "q-s3cr3t-4d1f",
    "authorization": "auth-s3cr3t-77aa",
    "cookie": "cookie-s3cr3t-0b3c",
    "proxy-authorization": "proxyauth-s3cr3t-91ee",
}


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line, parsed: with format = "json", each one must be a JSON object."""
    records = []
    for line in stderr.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        records.append(record)
    return records


async def _get_with_secrets(proxy_url: str, url: str) -> None:
    headers = {
        "Authorization": f"Bearer {SECRETS['authorization']}",
        "Cookie": f"session={SECRETS['cookie']}",
        "Proxy-Authorization": f"Basic {SECRETS['proxy-authorization']}",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}?token={SECRETS['query']}&x=1", proxy=proxy_url, headers=headers) as resp,
    ):
        assert resp.status == 200
        await resp.read()


async def test_json_access_line_carries_the_trace_the_origin_got(proxy_factory: ProxyFactory, origin: Origin) -> None:
    """With format = "json" and access = true, each request gets one JSON line whose trace id and span id are those of
    the sentry-trace the origin received; no query string and no secret header value appears anywhere in the log;
    a request the proxy refused is logged too."""
    proxy = proxy_factory({"log": {"format": "json", "access": True}})
    await _get_with_secrets(proxy.url, origin.url("/orders/42"))
    refused = await http.exchange(proxy.port, b"GET /not-a-proxy-request HTTP/1.1\r\nHost: x\r\n\r\n")
    assert refused.status == 400
    lines = await asyncio.to_thread(proxy.wait_for_lines, '"logger": "proxy.access"', 2)
    [record] = origin.requests
    trace = record.assert_proxied()
    forwarded, rejected = (json.loads(line) for line in lines)
    assert forwarded["message"] == "access" and forwarded["level"] == "INFO"
    assert forwarded["time"].endswith("+00:00")
    assert {k: forwarded[k] for k in ("method", "scheme", "host", "port", "path", "status")} == {
        "method": "GET",
        "scheme": "http",
        "host": "127.0.0.1",
        "port": origin.port,
        "path": "/orders/42",
        "status": 200,
    }
    assert (forwarded["trace_id"], forwarded["span_id"]) == (trace.trace_id, trace.span_id)
    assert (forwarded["sampled"], forwarded["source"], forwarded["outcome"]) == (True, "new", "complete")
    assert isinstance(forwarded["duration_s"], float) and 0 <= forwarded["duration_s"] < http.TIMEOUT
    assert (rejected["status"], rejected["outcome"], rejected["path"]) == (400, "refused", None)
    assert not any(secret in proxy.stderr for secret in SECRETS.values()), proxy.stderr
    assert "token=" not in proxy.stderr
    records = json_lines(proxy.stderr)  # every line of the process is JSON, the start-up line included
    [startup] = [r for r in records if "listen" in r]
    assert startup["listen"] == f"127.0.0.1:{proxy.port}" and startup["workers"] == 1
    assert startup["compiled"] is build_info.compiled() and startup["sampling"] == "traces_sample_rate 1.0"
    assert startup["settings"]["sentry.dsn"] == {"value": "<key redacted>@o42.ingest.sentry.io/7", "source": "file"}
    assert startup["settings"]["log.access"] == {"value": True, "source": "file"}
    assert "abc123" not in proxy.stderr  # the DSN's public key


async def test_text_access_line(proxy_factory: ProxyFactory, origin: Origin) -> None:
    proxy = proxy_factory({"log": {"access": True}})
    await _get_with_secrets(proxy.url, origin.url("/a/b"))
    [line] = await asyncio.to_thread(proxy.wait_for_lines, "INFO proxy.access: ")
    trace = origin.requests[0].assert_proxied()
    expected = f"method=GET scheme=http host=127.0.0.1 port={origin.port} path=/a/b status=200 bytes_to_origin="
    assert expected in line
    assert f" trace_id={trace.trace_id} span_id={trace.span_id} sampled=true source=new outcome=complete" in line
    assert not any(secret in proxy.stderr for secret in SECRETS.values()), proxy.stderr


async def test_no_access_lines_by_default(proxy_factory: ProxyFactory, origin: Origin) -> None:
    proxy = proxy_factory()
    await _get_with_secrets(proxy.url, origin.url("/quiet"))
    assert proxy.lines("proxy.access") == []


async def test_startup_line_says_what_runs_and_where_it_came_from(proxy_factory: ProxyFactory) -> None:
    """Listen addresses, sampling and targets, workers, the compiled hot path, and the keys not at their defaults
    with their source; the DSN only as its host and project id."""
    proxy = proxy_factory(
        {"sentry": {"traces_sample_rate": None, "trace_propagation_targets": ["internal"]}},
        env={"TRACE_PROXY_FORWARD__IDLE_TIMEOUT": "12.5"},
    )
    [line] = proxy.lines("trace-proxy listening on")
    assert f"listening on 127.0.0.1:{proxy.port} " in line and f"admin on 127.0.0.1:{proxy.admin_port}" in line
    assert "workers 1;" in line
    assert f"compiled hot path: {'yes' if build_info.compiled() else 'no'}" in line
    assert 'sampling: deferred; trace_propagation_targets = ["internal"]' in line
    assert "forward.idle_timeout = 12.5 from environment (TRACE_PROXY_FORWARD__IDLE_TIMEOUT)" in line
    assert 'sentry.dsn = "<key redacted>@o42.ingest.sentry.io/7" from file' in line
    assert 'sentry.environment = "itest" from file' in line
    assert "sentry.traces_sample_rate" not in line  # left out of the file: the default
    assert "abc123" not in proxy.stderr  # the DSN's public key


def _run(config: dict[str, Any], path: Path, *args: str) -> subprocess.Popen[bytes]:
    path.write_text(toml.dumps(config))
    return subprocess.Popen(
        [sys.executable, "-m", "proxy", "--config", str(path), *args],
        cwd=REPO,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize(("flag", "shown"), [((), False), (("--log-level", "info"), True)], ids=["file", "flag"])
async def test_level_from_the_file_unless_the_flag_says_otherwise(
    tmp_path: Path, unused_tcp_port_factory: Any, flag: tuple[str, ...], shown: bool
) -> None:
    """`[log] level = "warning"` keeps the INFO start-up line out; `--log-level info` wins over the file."""
    port = unused_tcp_port_factory()
    config = toml.merge(
        DEFAULT_CONFIG,
        {"forward": {"listen": f"127.0.0.1:{port}"}, "admin": {"listen": ""}, "log": {"level": "warning"}},
    )
    process = _run(config, tmp_path / "level.toml", *flag)
    try:
        await asyncio.to_thread(_wait_listening, port, process)
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(process.communicate, timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0, err
    assert ("trace-proxy listening on" in err.decode()) is shown, err


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Poll until 127.0.0.1:`port` accepts (the log line to wait on is what the test is about)."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"the proxy did not listen on {port} (exit status {process.poll()})")
