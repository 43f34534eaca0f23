"""Fixtures of the conformance tests: the envelope sink, the downstream SDK service and trace-proxy itself.

Client (plain `requests`, no SDK) -> trace-proxy (subprocess, ``python -m proxy``) -> downstream service (subprocess,
real sentry-sdk) -> its transactions -> envelope sink (in this process, own thread). Everything binds 127.0.0.1;
every wait is bounded.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests
from conformance_harness import (
    DOWNSTREAM_APP,
    DOWNSTREAM_ENVIRONMENT,
    DOWNSTREAM_PROJECT,
    DOWNSTREAM_PUBLIC_KEY,
    DOWNSTREAM_RELEASE,
    LISTENING,
    REPO,
    Downstream,
    Process,
    ProcessExited,
    Proxy,
    StartProxy,
    clean_env,
    free_port,
    toml_value,
)
from conformance_sink import EnvelopeSink

# -- the envelope sink -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sink() -> Iterator[EnvelopeSink]:
    with EnvelopeSink() as running:
        yield running


# -- the downstream service --------------------------------------------------------------------------------


@pytest.fixture(scope="session", params=["aiohttp", "wsgi"])
def downstream(request: pytest.FixtureRequest, sink: EnvelopeSink) -> Iterator[Downstream]:
    process = Process.spawn(
        f"downstream-{request.param}",
        [
            sys.executable,
            str(DOWNSTREAM_APP),
            "--framework",
            request.param,
            "--dsn",
            sink.dsn(DOWNSTREAM_PUBLIC_KEY, DOWNSTREAM_PROJECT),
            "--environment",
            DOWNSTREAM_ENVIRONMENT,
            "--release",
            DOWNSTREAM_RELEASE,
        ],
        clean_env(),
        REPO,
    )
    try:
        match = process.wait_for_line(re.compile(r"downstream listening on 127\.0\.0\.1:(\d+)"))
        yield Downstream(request.param, int(match.group(1)), process)
    finally:
        process.stop()


# -- trace-proxy -------------------------------------------------------------------------------------------


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[StartProxy]:
    """``start_proxy(sentry={...}, env={...})``: a running trace-proxy with that ``[sentry]`` table.

    `env` is added to a clean environment (no proxy, ``TRACE_PROXY_*`` or ``SENTRY_*`` variables). Every proxy
    is stopped with SIGTERM at teardown and must exit 0.
    """
    started: list[Proxy] = []

    def start(sentry: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Proxy:
        for attempt in range(5):  # the port is picked before the proxy binds it: retry if someone took it
            port = free_port()
            config = tmp_path / f"proxy-{len(started)}-{attempt}.toml"
            lines = ["[forward]", f'listen = "127.0.0.1:{port}"', "[sentry]"]
            lines += [f"{key} = {toml_value(value)}" for key, value in sentry.items()]
            lines += ["[admin]", 'listen = ""']
            config.write_text("\n".join(lines) + "\n")
            process = Process.spawn(
                "trace-proxy",
                [sys.executable, "-m", "proxy", "--config", str(config)],
                clean_env(env),
                REPO,
            )
            try:
                match = process.wait_for_line(LISTENING)
            except ProcessExited as exc:
                if "cannot listen" in process.log and attempt < 4:
                    continue
                raise AssertionError(str(exc)) from None
            except BaseException:
                process.stop()
                raise
            proxy = Proxy(int(match.group(1)), process, dict(sentry))
            started.append(proxy)
            return proxy
        raise AssertionError("unreachable")

    yield start

    codes = {}
    for proxy in started:
        codes[proxy.port] = proxy.process.stop()
    failed = {port: code for port, code in codes.items() if code != 0}
    assert not failed, f"trace-proxy exit status after SIGTERM (want 0): {failed}"


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A plain HTTP client with no SDK; ``trust_env = False``: only the proxies a test passes count."""
    with requests.Session() as session:
        session.trust_env = False
        yield session
