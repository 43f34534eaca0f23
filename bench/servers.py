"""The rig's child processes: servers pinned to a CPU in their own process group, and stopped for sure.

Every peer (the origin, the proxies) is a ``Server``: started with ``taskset``, a scrubbed environment and a
parent-death signal, waited for until it listens, and stopped with bounded waits, so that a failed or interrupted run
leaves nothing behind. ``PointError`` lives here because a server that does not come up is the first way a
measurement cannot be taken; the measurements raise it too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from procfs import listen_sockets

HOST = "127.0.0.1"
# Environment variables that would change what the children do: proxies for curl, settings for trace-proxy.
_SCRUB = re.compile(r"^(https?_proxy|all_proxy|no_proxy|TRACE_PROXY_.*|SENTRY_.*)$", re.IGNORECASE)


class PointError(Exception):
    """One measurement could not be taken; the run goes on and exits 1 at the end."""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not _SCRUB.match(k)}
    env.update(extra)
    return env


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when bench.py dies, even by SIGKILL (kept across exec, not setuid)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def pinned(cpus: str | None, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus is not None else list(argv)


def free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        try:
            s.connect((HOST, port))
        except OSError:
            return False
        return True


@dataclass
class Server:
    """A server process in its own process group, started pinned, stopped with bounded waits."""

    name: str
    argv: list[str]
    port: int
    cpus: str | None
    workdir: Path
    listeners: int = 1  # listening sockets to wait for (SO_REUSEPORT workers)
    discard_output: bool = False  # stdout and stderr to /dev/null rather than `log` (an access log's volume)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "stdout-stderr.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 15.0) -> None:
        if self.discard_output:
            self.log.write_text("(output discarded: see Server.discard_output)\n")
        with open(os.devnull, "ab") if self.discard_output else self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                pinned(self.cpus, self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=clean_env(),
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PointError(f"{self.name} exited with status {self.proc.returncode} at start: {self.log_tail()}")
            if listen_sockets(self.port) >= self.listeners and port_open(self.port):
                time.sleep(0.2 if self.listeners == 1 else 0.5)
                if self.proc.poll() is None:
                    return
            time.sleep(0.05)
        raise PointError(f"{self.name} did not accept connections on port {self.port} within {timeout:g}s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
            try:
                os.killpg(pgid, 0)  # anything left of the group (workers, helpers)?
            except (ProcessLookupError, PermissionError):
                if self.proc.poll() is not None:
                    break
        self.proc = None

    def log_tail(self, lines: int = 8) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def line_reader(proc: subprocess.Popen[bytes]) -> Iterator[Callable[[float], str]]:
    def read(timeout: float) -> str:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            raise PointError(f"no output within {timeout:g}s")
        line = proc.stdout.readline().decode(errors="replace")
        if not line:
            raise PointError(f"exited with status {proc.wait(5)} before reporting")
        return line

    try:
        yield read
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
