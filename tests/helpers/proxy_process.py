"""The real trace-proxy as a subprocess: `python -m proxy --config FILE`, started and stopped with bounded waits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tests.helpers import toml

REPO = Path(__file__).resolve().parents[2]
DSN = "https://abc123@o42.ingest.sentry.io/7"
ENVIRONMENT = "itest"
RELEASE = "trace-proxy-itest@1.0.0"
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0

# What every test proxy runs with unless a test overrides it; `listen` keys are filled in per start.
DEFAULT_CONFIG: toml.Config = {
    "forward": {
        "connect_ports": [],
        "connect_timeout": 5.0,
        "idle_timeout": 15.0,
        "shutdown_grace": 5.0,
        "workers": 1,
    },
    "sentry": {
        "dsn": DSN,
        "environment": ENVIRONMENT,
        "release": RELEASE,
        "traces_sample_rate": 1.0,
        "trace_propagation_targets": [".*"],
    },
    "admin": {},
}

_DROPPED_ENV_PREFIXES = ("TRACE_PROXY_", "SENTRY_")
_DROPPED_ENV_NAMES = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"})


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without proxy settings or trace-proxy/Sentry configuration."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_DROPPED_ENV_PREFIXES) and k.lower() not in _DROPPED_ENV_NAMES
    }
    env["PYTHONPATH"] = str(REPO)
    env.update(extra or {})
    return env


class ProxyProcess:
    """A running proxy: its URL, ports, process, and the stderr it wrote so far."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, admin_port: int | None, config: Path) -> None:
        self.process = process
        self.port = port
        self.admin_port = admin_port
        self.config_path = config
        self.stopped_by_test = False
        self._lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        assert self.admin_port is not None, "this proxy runs without an admin listener"
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def stderr(self) -> str:
        return "".join(self._lines)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        marker = f"trace-proxy listening on 127.0.0.1:{self.port}"
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace")
            self._lines.append(line)
            if marker in line:
                self._ready.set()
        self._ready.set()  # EOF: the process is gone; whoever waits looks at the exit status

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> bool:
        """True once the `listening on` line was logged; False if the process exited first or time ran out."""
        self._ready.wait(timeout)
        return self.process.poll() is None and "trace-proxy listening on" in self.stderr

    def alive(self) -> bool:
        return self.process.poll() is None

    def send_signal(self, sig: signal.Signals) -> None:
        self.stopped_by_test = True
        self.process.send_signal(sig)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """The exit status, waiting at most `timeout` seconds (subprocess.TimeoutExpired after that)."""
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Signal the proxy (if it still runs) and return its exit status; kill it if it does not exit in time."""
        self.stopped_by_test = True
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
            raise

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)

    def lines(self, text: str) -> list[str]:
        """The stderr lines logged so far that contain `text`."""
        return [line for line in list(self._lines) if text in line]

    def wait_for_lines(self, text: str, count: int = 1, timeout: float = STARTUP_TIMEOUT) -> list[str]:
        """Poll (the lines arrive on a reader thread) until `count` lines containing `text` were logged; the lines."""
        deadline = time.monotonic() + timeout
        while len(found := self.lines(text)) < count:
            if time.monotonic() > deadline or not self.alive():
                raise AssertionError(f"expected {count} lines with {text!r} within {timeout}s; stderr:\n{self.stderr}")
            time.sleep(0.01)
        return found

    def rewrite_config(self, overrides: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace keys of the proxy's configuration file (its listen addresses stay unless overridden), as an
        operator would before a SIGHUP; written to a new file renamed over the old one, as editors and ConfigMaps do."""
        with self.config_path.open("rb") as file:
            config = toml.merge(tomllib.load(file), overrides)
        new = self.config_path.with_suffix(".new")
        new.write_text(toml.dumps(config))
        new.replace(self.config_path)


class ProxyFactory(Protocol):
    """The `proxy_factory` fixture: a proxy with TOML overrides and extra environment variables."""

    def __call__(
        self,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        admin: bool = True,
    ) -> ProxyProcess: ...


def launch_proxy(
    workdir: Path,
    port_factory: Callable[[], int],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    admin: bool = True,
    attempts: int = 3,
) -> ProxyProcess:
    """Start the proxy with DEFAULT_CONFIG plus `overrides` and wait until it logs that it listens.

    Ports come from `port_factory`; a start that fails because another process took a port in between is
    retried with fresh ports, anything else raises with the proxy's stderr.
    """
    last = ""
    for attempt in range(attempts):
        port = port_factory()
        admin_port = port_factory() if admin else None
        config = toml.merge(DEFAULT_CONFIG, overrides)
        config["forward"]["listen"] = f"127.0.0.1:{port}"
        config["admin"]["listen"] = f"127.0.0.1:{admin_port}" if admin_port is not None else ""
        path = workdir / f"proxy-{port}-{attempt}.toml"
        path.write_text(toml.dumps(config))
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--config", str(path)],
            cwd=REPO,
            env=clean_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        proxy = ProxyProcess(process, port, admin_port, path)
        if proxy.wait_ready():
            return proxy
        proxy.kill()
        last = proxy.stderr
        if "cannot listen" not in last:
            break
    raise RuntimeError(f"trace-proxy did not start; stderr:\n{last}")


def stop_and_check(proxy: ProxyProcess) -> None:
    """Teardown: a proxy still running must drain on SIGTERM and exit 0 without waiting out its shutdown_grace
    (its clients are gone by now, so a connection it still holds is one it failed to close); one a test already
    stopped must not have died on its own; and nothing may have logged a traceback."""
    if proxy.alive():
        code = proxy.stop()
        assert code == 0, f"proxy exited {code} on SIGTERM; stderr:\n{proxy.stderr}"
        assert "shutdown grace" not in proxy.stderr, (
            f"drain waited for a connection nobody used; stderr:\n{proxy.stderr}"
        )
    elif not proxy.stopped_by_test:
        code = proxy.wait()
        raise AssertionError(f"proxy died during the test with status {code}; stderr:\n{proxy.stderr}")
    assert "Traceback" not in proxy.stderr, proxy.stderr


def wait_until_refused(port: int, timeout: float = 10.0) -> None:
    """Poll (there is no event to wait on) until nothing accepts connections on 127.0.0.1:`port`."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                pass
        except ConnectionRefusedError:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"127.0.0.1:{port} still accepts connections after {timeout}s")
        time.sleep(0.02)


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set size (VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


# The `st` column of /proc/net/tcp (include/net/tcp_states.h).
TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


@dataclass(frozen=True)
class TcpSocket:
    """One TCP socket a process holds open, as /proc/net/tcp describes it."""

    local_port: int
    remote_port: int
    state: str  # a value of TCP_STATES


def tcp_sockets(pid: int) -> list[TcpSocket]:
    """The TCP sockets process `pid` holds open (from /proc: its fds and /proc/net/tcp{,6}); OSError if it is gone."""
    inodes: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found: dict[str, TcpSocket] = {}
    # The kernel writes these tables a page at a time, so one read of a table that changes meanwhile can skip or
    # repeat rows: the rows are keyed by inode, and the union of two reads is taken.
    for table in ("/proc/net/tcp", "/proc/net/tcp6") * 2:
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[9] in inodes:
                local, remote = fields[1].rsplit(":", 1)[1], fields[2].rsplit(":", 1)[1]
                found[fields[9]] = TcpSocket(int(local, 16), int(remote, 16), TCP_STATES.get(fields[3], fields[3]))
    return list(found.values())


def local_tcp_ports(pid: int) -> set[int]:
    """Local ports of the TCP sockets process `pid` holds open."""
    return {s.local_port for s in tcp_sockets(pid)}
