"""How the parent of several workers hears from them: whether each is ready, and its counters, asked for whenever
/readyz or /metrics is asked on the parent's admin port.

Before forking, the parent makes one Unix socket pair per worker (`WorkerChannels`); each worker answers on its end
(`serve_reports`), the parent asks on the others (`Workers`). A socket pair rather than a named socket: nothing in
the filesystem (a sidecar's root filesystem is often read-only), nothing another process can connect to, nothing
left behind after a crash.

The protocol: the parent writes a request number (4 bytes, big-endian); the worker answers with the same number,
the length of its body (4 bytes each) and the body, JSON `{"ready": bool, "metrics": snapshot}` (metrics.py). The
parent reads every answer in one task per worker and matches it to its request by number, so that an answer that
comes after its request timed out is dropped, never taken for the next one's. A worker that does not answer within
`timeout` counts as not ready, and its counters are missing from that scrape; that is logged, at most once a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any, Final

from proxy.metrics import Snapshot, merge
from proxy.server.log_limit import RateLimitedLog

log = logging.getLogger(__name__)

TIMEOUT: Final = 0.5  # seconds a worker has to answer: well within a Kubernetes probe's default 1 s
_MISSING_LOG_SECONDS: Final = 60.0
_STARTUP_SECONDS: Final = 10.0  # a worker that never answered yet is only reported after this long: it is starting


class WorkerChannels:
    """One socket pair per worker, made before the workers are forked."""

    def __init__(self, count: int) -> None:
        self._pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(count)]

    def for_worker(self, index: int) -> socket.socket:
        """In worker `index`, just forked: its end; every other end inherited from the parent is closed."""
        mine = self._pairs[index][1]
        for parent_end, worker_end in self._pairs:
            parent_end.close()
            if worker_end is not mine:
                worker_end.close()
        return mine

    def for_parent(self) -> list[socket.socket]:
        """In the parent, once every worker is forked: its ends, in worker order; the workers' ends are closed."""
        for _, worker_end in self._pairs:
            worker_end.close()
        return [parent_end for parent_end, _ in self._pairs]


class _ReportServer(asyncio.Protocol):
    """A worker's end: every request number read is answered with the report of that moment."""

    def __init__(self, report: Callable[[], dict[str, Any]]) -> None:
        self._report = report
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        transport = self._transport
        while len(buffer) >= 4 and transport is not None:
            number, buffer = buffer[:4], buffer[4:]
            try:
                body = json.dumps(self._report(), separators=(",", ":")).encode()
            except Exception:
                log.exception("making this worker's report for the parent failed")
                body = b'{"ready":false}'
            transport.write(number + len(body).to_bytes(4, "big") + body)
        self._buffer = buffer


async def serve_reports(sock: socket.socket, report: Callable[[], dict[str, Any]]) -> asyncio.BaseTransport:
    """In a worker: answer the parent on `sock` with `report()` (`{"ready": ..., "metrics": ...}`), from the event
    loop, so that the report reads the counters between two events, never in the middle of one."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(lambda: _ReportServer(report), sock=sock)
    return transport


class _WorkerLink:
    """The parent's end of one worker's socket pair."""

    def __init__(self, index: int, pid: int, sock: socket.socket) -> None:
        self.index = index
        self.pid = pid
        self.answered = False  # it answered at least once
        self._sock = sock
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[bytes | None]] = {}
        self._number = 0

    async def open(self) -> None:
        reader, self._writer = await asyncio.open_connection(sock=self._sock)
        self._reading = asyncio.get_running_loop().create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                head = await reader.readexactly(8)
                body = await reader.readexactly(int.from_bytes(head[4:], "big"))
                waiting = self._waiting.pop(int.from_bytes(head[:4], "big"), None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker is gone (its exit is the supervisor's to see)
        finally:
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.close()
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_result(None)

    async def ask(self, timeout: float) -> dict[str, Any] | None:
        """The worker's report, or None when it did not answer within `timeout` seconds (or is gone)."""
        writer = self._writer
        if writer is None:
            return None
        self._number = number = (self._number + 1) % (1 << 32)
        answer: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._waiting[number] = answer
        try:
            writer.write(number.to_bytes(4, "big"))
            async with asyncio.timeout(timeout):
                body = await answer
        except (TimeoutError, ConnectionError):
            return None
        finally:
            self._waiting.pop(number, None)
        if body is None:
            return None
        try:
            report = json.loads(body)
        except ValueError:
            log.error("worker %d (pid %d) sent a report that is not JSON", self.index, self.pid)
            return None
        self.answered = True
        return report if isinstance(report, dict) else None

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        if self._writer is not None:
            self._writer.close()


class Workers:
    """The parent's view of its workers: every one ready, and the sum of their counters."""

    def __init__(self, pids: Sequence[int], socks: Sequence[socket.socket], timeout: float = TIMEOUT) -> None:
        loop = asyncio.get_running_loop()
        self._links = [_WorkerLink(index, pid, sock) for index, (pid, sock) in enumerate(zip(pids, socks, strict=True))]
        self._timeout = timeout
        self._clock = loop.time
        self._started = loop.time()
        self._missing_log = RateLimitedLog(log, _MISSING_LOG_SECONDS, loop.time)

    async def open(self) -> None:
        for link in self._links:
            await link.open()

    async def close(self) -> None:
        for link in self._links:
            await link.close()

    async def reports(self) -> list[dict[str, Any] | None]:
        """Every worker's report, None for those that did not answer in time."""
        answers = await asyncio.gather(*(link.ask(self._timeout) for link in self._links))
        starting = self._clock() - self._started < _STARTUP_SECONDS
        missing = [
            f"{link.index} (pid {link.pid})"
            for link, answer in zip(self._links, answers, strict=True)
            if answer is None and (link.answered or not starting)
        ]
        if missing:
            self._missing_log.warning(
                "worker %s did not answer within %gs: /readyz answers 503, and /metrics lacks its counters",
                ", ".join(missing),
                self._timeout,
            )
        return answers

    async def ready(self) -> bool:
        """Every worker answered, and is ready (its listener bound, not draining)."""
        return all(answer is not None and answer.get("ready") is True for answer in await self.reports())

    async def metrics(self) -> Snapshot:
        """The sum of the counters of the workers that answered."""
        return merge(
            [answer["metrics"] for answer in await self.reports() if answer is not None and "metrics" in answer]
        )
