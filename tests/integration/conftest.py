"""Fixtures of the integration tests: the real proxy as a subprocess, recording origins, a TLS CA.

`proxy` is one proxy per test module with the default configuration (checked alive around every test, stopped with
SIGTERM and required to exit 0 when the module ends); `proxy_factory` starts a proxy with TOML overrides and extra
environment variables for one test, and stops it the same way at the end of that test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

REPO = Path(__file__).resolve().parents[2]
pytest.register_assert_rewrite("tests.helpers")  # `tests` is importable: pyproject sets pythonpath = ["."]

from tests.helpers.origin import Origin, RawHandler, RawOrigin, RawOriginFactory, serve_ok  # noqa: E402
from tests.helpers.proxy_process import ProxyFactory, ProxyProcess, launch_proxy, stop_and_check  # noqa: E402
from tests.helpers.tls import TlsCa  # noqa: E402


@pytest.fixture(scope="module")
def _module_proxy(
    tmp_path_factory: pytest.TempPathFactory, unused_tcp_port_factory: Callable[[], int]
) -> Iterator[ProxyProcess]:
    proxy = launch_proxy(tmp_path_factory.mktemp("proxy"), unused_tcp_port_factory)
    try:
        yield proxy
    finally:
        stop_and_check(proxy)


@pytest.fixture
def proxy(_module_proxy: ProxyProcess) -> Iterator[ProxyProcess]:
    """The module's proxy with the default configuration (see tests/helpers/proxy_process.py)."""
    assert _module_proxy.alive(), _module_proxy.stderr
    yield _module_proxy
    assert _module_proxy.alive(), f"the proxy died during the test; stderr:\n{_module_proxy.stderr}"


@pytest.fixture
def proxy_factory(tmp_path: Path, unused_tcp_port_factory: Callable[[], int]) -> Iterator[ProxyFactory]:
    """Start proxies with config overrides (`{"forward": {"idle_timeout": 0.5}}`) and extra env vars."""
    started: list[ProxyProcess] = []

    def factory(
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        admin: bool = True,
    ) -> ProxyProcess:
        proxy = launch_proxy(tmp_path, unused_tcp_port_factory, overrides, env, admin=admin)
        started.append(proxy)
        return proxy

    yield factory
    errors = []
    for proxy in started:
        try:
            stop_and_check(proxy)
        except AssertionError as exc:
            errors.append(str(exc))
        finally:
            proxy.kill()
    assert not errors, "\n".join(errors)


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> TlsCa:
    """A test certificate authority, its PEM file written for curl."""
    return TlsCa.create(tmp_path_factory.mktemp("tls"))


@pytest_asyncio.fixture
async def tls_origin(tls_ca: TlsCa) -> AsyncIterator[Origin]:
    """An HTTPS aiohttp origin on 127.0.0.1 (certificate from `tls_ca`), recording like `origin`."""
    server = Origin()
    await server.start(tls_ca.server_context())
    try:
        yield server
    finally:
        await server.close()


@pytest_asyncio.fixture
async def origin() -> AsyncIterator[Origin]:
    """An aiohttp origin that records every request (default route: read the body, answer `ok <sha256>`)."""
    server = Origin()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest_asyncio.fixture
async def raw_origin_factory() -> AsyncIterator[RawOriginFactory]:
    """Bare asyncio origins that record every byte; handler errors fail the test at teardown."""
    servers: list[RawOrigin] = []

    async def factory(handler: RawHandler = serve_ok) -> RawOrigin:
        server = RawOrigin(handler)
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.close()
    errors = [e for s in servers for e in s.errors]
    assert not errors, f"origin handler failed: {errors!r}"


@pytest_asyncio.fixture
async def raw_origin(raw_origin_factory: RawOriginFactory) -> RawOrigin:
    """A raw origin answering `200 ok <target>` to every request."""
    return await raw_origin_factory()
