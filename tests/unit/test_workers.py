"""The channel between the parent and its workers (workers.py), in one process: real socket pairs, reports served
as a worker serves them, and workers that answer late or not at all."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import pytest

from proxy.metrics import empty_snapshot
from proxy.workers import Workers, serve_reports

pytestmark = pytest.mark.asyncio


def report(ready: bool, requests: int) -> dict[str, Any]:
    snap = empty_snapshot()
    snap["requests"]["http ok"] = requests
    snap["connections"]["client"] = requests * 10
    return {"ready": ready, "metrics": snap}


async def test_ready_and_summed_when_every_worker_answers() -> None:
    states = [report(True, 2), report(True, 5)]
    pairs = [socket.socketpair() for _ in states]
    served = [await serve_reports(worker, lambda i=i: states[i]) for i, (_, worker) in enumerate(pairs)]
    workers = Workers([101, 102], [parent for parent, _ in pairs])
    await workers.open()
    try:
        assert await workers.ready()
        total = await workers.metrics()
        assert total["requests"]["http ok"] == 7
        assert total["connections"]["client"] == 70
        states[1] = report(False, 6)  # draining: read at the moment it is asked
        assert not await workers.ready()
        assert (await workers.metrics())["requests"]["http ok"] == 8
    finally:
        await workers.close()
        for transport in served:
            transport.close()


class ManualWorker:
    """A worker end answered by the test: it sees each request number and answers when told to."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(sock=self.sock)

    async def next_request(self) -> int:
        assert self.reader is not None
        return int.from_bytes(await self.reader.readexactly(4), "big")

    async def answer(self, number: int, body: dict[str, Any]) -> None:
        assert self.writer is not None
        data = json.dumps(body).encode()
        self.writer.write(number.to_bytes(4, "big") + len(data).to_bytes(4, "big") + data)
        await self.writer.drain()


async def test_a_late_answer_is_never_taken_for_the_next(caplog: pytest.LogCaptureFixture) -> None:
    parent, worker_end = socket.socketpair()
    worker = ManualWorker(worker_end)
    await worker.open()
    workers = Workers([201], [parent], timeout=0.2)
    await workers.open()
    try:
        first = asyncio.ensure_future(workers.ready())
        number = await worker.next_request()
        await worker.answer(number, report(True, 1))
        assert await first
        # Not answered in time: not ready, no counters, and (it answered before) logged.
        with caplog.at_level(logging.WARNING, logger="proxy.workers"):
            late = asyncio.ensure_future(workers.metrics())
            stale = await worker.next_request()
            assert (await late)["requests"]["http ok"] == 0
        assert "worker 0 (pid 201) did not answer within 0.2s" in caplog.text
        # The stale answer arrives, then the one to the next request: only the latter counts.
        current = asyncio.ensure_future(workers.metrics())
        fresh = await worker.next_request()
        assert fresh != stale
        await worker.answer(stale, report(True, 100))
        await worker.answer(fresh, report(True, 3))
        assert (await current)["requests"]["http ok"] == 3
    finally:
        await workers.close()
        if worker.writer is not None:
            worker.writer.close()


async def test_a_worker_gone_is_not_ready() -> None:
    parent, worker_end = socket.socketpair()
    workers = Workers([301], [parent], timeout=5.0)
    await workers.open()
    try:
        worker_end.close()
        assert not await asyncio.wait_for(workers.ready(), 2.0)  # at once, not after the timeout
        assert (await workers.metrics())["requests"]["http ok"] == 0
    finally:
        await workers.close()
