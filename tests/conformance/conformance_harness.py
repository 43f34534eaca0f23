"""Shared pieces of the conformance tests: subprocess handling, the clean environment, the running services."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DOWNSTREAM_APP = Path(__file__).resolve().with_name("downstream_app.py")

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0

DOWNSTREAM_PUBLIC_KEY = "downpk"
DOWNSTREAM_PROJECT = 42
DOWNSTREAM_ENVIRONMENT = "downstream-env"
DOWNSTREAM_RELEASE = "downstream@2.0.0"

_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without proxy variables, ``TRACE_PROXY_*`` and ``SENTRY_*``, plus `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in _PROXY_VARS and not key.startswith(("TRACE_PROXY_", "SENTRY_"))
    }
    env.update(extra or {})
    return env


@dataclass
class Process:
    """A subprocess whose stderr is read line by line on a thread (so the pipe never fills)."""

    name: str
    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)

    @classmethod
    def spawn(cls, name: str, args: list[str], env: dict[str, str], cwd: Path) -> Process:
        popen = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        process = cls(name, popen)
        threading.Thread(target=process._pump, name=f"{name}-stderr", daemon=True).start()
        return process

    def _pump(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)
        self._queue.put(None)

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float = READY_TIMEOUT) -> re.Match[str]:
        """The first stderr line matching `pattern`; raise if the process exits or `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no line matching {pattern.pattern!r} in {timeout}s: {self.log}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = self.popen.wait(timeout=STOP_TIMEOUT)
                raise ProcessExited(code, f"{self.name} exited with {code} before ready: {self.log}")
            if match := pattern.search(line):
                return match

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then wait (SIGKILL after `timeout`); the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
                raise
        return self.popen.returncode

    @property
    def log(self) -> str:
        return "\n".join(self.lines)


class ProcessExited(RuntimeError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for everything these tests write
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


@dataclass(frozen=True)
class Downstream:
    framework: str
    port: int
    process: Process

    def url(self, path: str = "/echo") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@dataclass(frozen=True)
class Proxy:
    port: int
    process: Process
    sentry: dict[str, Any]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


StartProxy = Callable[..., Proxy]

LISTENING = re.compile(r"trace-proxy listening on 127\.0\.0\.1:(\d+)")
