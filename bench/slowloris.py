"""Do slow clients delay normal requests? Latency of ordinary GETs through trace-proxy with and without slowloris.

    /work/main/.venv/bin/python bench/slowloris.py [--rounds 5] [--dribblers 1000] [--header-timeout S] [--quick]

One run starts a real trace-proxy (``python -m proxy --config FILE`` through ``tests/helpers/proxy_process.py``,
127.0.0.1, sample rate 1.0 and a DSN as in the tests, so every request starts a trace with a full DSC) and a fast
origin, then measures, round after round, two phases:

- **A**: ``--conns`` keep-alive connections (4) each send ``--requests`` absolute-form GETs (2,000) one after the
  other, each ``--interval-ms`` (2 ms) after the previous one was sent, every one timed with ``time.perf_counter``
  from the write to the last byte of the response (a few warm-up requests per connection are not counted);
- **B**: the same, while ``--dribblers`` other connections (1,000) to the proxy each dribble a request head one byte
  per second, never finishing it. They are opened before the phase and kept open and dribbling until its end; one
  the proxy closes (after ``forward.header_timeout`` it should answer 408) is counted with the answer it got and
  its age, and re-opened, so that the load stays the same through the phase (at once; one the proxy refused at
  once, as a connection limit would, after a second, so that refusals do not become a reconnection storm).

Optionally (``--control``) each round also times the same GETs sent **directly to the origin**, without and with the
dribblers running (A0/B0): the difference between those two is what the load generator itself costs the measured
client, which then should not be mistaken for the proxy's doing. B0 follows B with the same dribblers, which are
then up to about 11 s old: with a 10 s header timeout some are answered and replaced during B0, not during B.

Why the phases are paced and not a closed loop at full speed: a closed loop keeps the single-threaded proxy 100 %
busy, so the figures would measure queueing behind the other measured connections, and a phase would last under a
second, in which a dribbler sends one byte. At about 1,700 requests/s (each connection waits 2 ms from one send to
the next, rounded up to the event loop's millisecond timers) the proxy is mostly idle, as a sidecar is, a phase
lasts about 5 s (the dribblers are about 6 s old at its end, under the 10 s default header timeout), and what B
adds to the latency is the dribblers' own cost: 1,000 reads of one byte per second, the head parser run on each,
the bookkeeping of 1,000 more connections.
``--interval-ms 0`` gives the closed loop.

Where each part runs, so that the load generator is not what is measured:

- the proxy runs on the first CPU of this process's affinity, the client and the origin on the second (as bench.py
  does; ``--no-pin`` pins nothing);
- the measured client is a process of its own (one uvloop event loop, the raw-HTTP helpers of tests/helpers/http.py):
  the dribblers' timer callbacks and socket bookkeeping never run on its event loop or hold its GIL, and it does
  nothing but the timed requests;
- the origin is a process of its own too (a minimal uvloop protocol that answers every request head with a fixed
  200 and a ``--body-bytes`` body; nginx is not required, and the recording origins of tests/helpers/origin.py do
  too much per request for a benchmark);
- the dribblers run on this (the orchestrating) process's event loop, with non-blocking sockets and a timer wheel of
  1,000 one-millisecond slots: each dribbler has a slot and sends its next byte when the wheel passes it, so with
  1,000 dribblers the wheel sends one byte per millisecond instead of a burst of 1,000 once a second (a burst would
  make the proxy's and the client's CPU busy at the same instant and inflate B's tail for a reason that has nothing
  to do with slow clients). That costs this process about one send(2) per millisecond; its CPU share is reported.
  Once the children are started it switches itself to SCHED_IDLE (else nice 19), so that whatever shares its CPU
  preempts it the moment it wakes; a dribbler's byte can be a few milliseconds late, which a one-byte-per-second
  client does not notice. It runs on the **proxy's CPU** by default (``--dribblers-on proxy``): on loopback the
  sender's CPU also does the receiving side's network processing, which for real remote slow clients lands on the
  proxy's host as well, and the direct control shows it leaves the measured client alone (B0/A0 of p99 0.9-1.0 on
  the machine it was written on). On the client's and origin's CPU instead (``--dribblers-on load``), even at
  SCHED_IDLE it doubled to tripled the control's p99 (B0/A0 1.5-2.9 at p50 1.0), which would be blamed on the proxy.

The dribbler connections open at the proxy are counted at the start and at the end of each B phase from /proc: the
TCP sockets of the proxy process whose local port is its listen port (the listening socket excluded) and whose peer
is a live dribbler. The soft RLIMIT_NOFILE is raised to the hard limit first; the proxy inherits it.

Prints a table (p50, p90, p99, max in µs per phase and round, medians over the rounds, and the median over the
rounds of the B/A ratio of p50 and p99, each round's pair measured within seconds of each other; also over the
quiet rounds alone, those in which other processes took at most 10 % of either CPU in both phases, read from
/proc/stat as bench.py does: on a shared machine that is the figure to trust), and writes everything to
``--output`` (default ``bench/results/slowloris-latest.json``, which git ignores). ``--header-timeout S`` and
``--max-connections N`` set ``forward.header_timeout`` / ``forward.max_connections`` in the proxy's configuration;
without them the keys are not written, so the script also runs against a proxy that does not know them. The exit
status is 0 when every phase ran and no request failed, 1 otherwise; never a verdict on the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import math
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import platform
import resource
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
for _entry in (str(REPO), str(BENCH_DIR)):
    if _entry not in sys.path:
        sys.path.insert(0, _entry)

import uvloop  # noqa: E402
from machine import machine_info, trace_proxy_build  # noqa: E402
from procfs import CLK_TCK, cpu_stat, cpu_usage, tree_cpu_ticks, wait_quiet  # noqa: E402
from servers import free_port  # noqa: E402

from tests.helpers.http import close_writer, get, open_raw, read_response  # noqa: E402
from tests.helpers.proxy_process import ProxyProcess, launch_proxy, tcp_sockets  # noqa: E402

HOST = "127.0.0.1"
DEFAULT_OUTPUT = BENCH_DIR / "results" / "slowloris-latest.json"
WHEEL_SLOTS = 1000  # one slot per millisecond: a dribbler sends its next byte when the wheel passes its slot
OPEN_PARALLEL = 100  # dribbler connections being opened at once
SETTLE_TIMEOUT = 20.0  # longest wait for the proxy to hold (or to have dropped) the dribbler connections
QUIET_PCT = 10.0  # a phase in which other processes took more of the proxy's CPU was disturbed
PHASE_TIMEOUT = 300.0  # longest a measured phase may take before the run gives up


# ---------------------------------------------------------------------------------------------------------------
# small utilities


def pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def yield_to_load() -> str:
    """Put this process (the dribblers) below the measured client and the origin, which share its CPU: SCHED_IDLE,
    else nice 19. Called after the children are started, which would inherit it."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (OSError, AttributeError):
        os.nice(19 - os.nice(0))
        return f"nice {os.nice(0)}"


def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit: this process holds the dribblers, the proxy (which inherits it)
    one descriptor per client connection and one per origin connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..100)."""
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def latency_stats(latencies_us: Sequence[float]) -> dict[str, float | int]:
    ordered = sorted(latencies_us)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "p50_us": round(percentile(ordered, 50), 1),
        "p90_us": round(percentile(ordered, 90), 1),
        "p99_us": round(percentile(ordered, 99), 1),
        "max_us": round(ordered[-1], 1),
        "mean_us": round(statistics.fmean(ordered), 1),
    }


def proxy_sockets(pid: int, port: int) -> list[tuple[int, str]]:
    """(peer port, TCP state) of every TCP socket process `pid` holds whose local port is `port`, the listening
    socket left out."""
    return [(s.remote_port, s.state) for s in tcp_sockets(pid) if s.local_port == port and s.state != "LISTEN"]


# ---------------------------------------------------------------------------------------------------------------
# the origin: its own process, a fixed answer to every request head


class _OriginProtocol(asyncio.Protocol):
    """Answers each complete request head (GETs without a body, as the benchmark sends) with the same response."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport does not subclass it

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        heads = buf.count(b"\r\n\r\n")
        if heads and self.transport is not None:
            self.transport.write(self.response * heads)
            buf = buf[buf.rindex(b"\r\n\r\n") + 4 :]
        self.buf = buf


async def _serve_origin(pipe: mpc.Connection, body_bytes: int) -> None:
    loop = asyncio.get_running_loop()
    body = b"x" * body_bytes
    response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    server = await loop.create_server(lambda: _OriginProtocol(response), HOST, 0, backlog=1024)
    pipe.send(server.sockets[0].getsockname()[1])
    parent_gone = loop.create_future()
    loop.add_reader(pipe.fileno(), lambda: None if parent_gone.done() else parent_gone.set_result(None))
    await parent_gone  # the parent closed its end of the pipe (or died)
    server.close()


def origin_main(pipe: mpc.Connection, cpu: int | None, body_bytes: int) -> None:
    pin(cpu)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes the pipe
    uvloop.run(_serve_origin(pipe, body_bytes))


# ---------------------------------------------------------------------------------------------------------------
# the measured client: its own process, commanded over a pipe, one phase per command


async def _measure(port: int, url: str, conns: int, requests: int, warmup: int, interval_s: float) -> dict[str, Any]:
    request = get(url)
    latencies: list[float] = []
    sent_at: list[float] = []  # seconds from the start of the phase, for --raw
    errors: Counter[str] = Counter()
    ports: list[int] = []
    started = time.perf_counter()

    async def one(index: int) -> None:
        try:
            reader, writer = await open_raw(port)
        except (OSError, TimeoutError) as exc:
            errors[f"connect: {type(exc).__name__}"] += 1
            return
        ports.append(writer.get_extra_info("sockname")[1])
        try:
            await asyncio.sleep(interval_s * index / conns)  # staggered, so that the connections rarely coincide
            for number in range(warmup + requests):
                start = time.perf_counter()
                writer.write(request)
                response = await read_response(reader)
                elapsed = time.perf_counter() - start
                if response.status != 200:
                    errors[f"status {response.status}"] += 1
                elif number >= warmup:
                    latencies.append(elapsed * 1e6)
                    sent_at.append(start - started)
                if interval_s:
                    await asyncio.sleep(max(0.0, start + interval_s - time.perf_counter()))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, AssertionError, ValueError) as exc:
            errors[f"{type(exc).__name__}: {exc}"[:200]] += 1
        finally:
            await close_writer(writer)

    await asyncio.gather(*(one(i) for i in range(conns)))
    return {
        "latencies_us": latencies,
        "sent_at_s": sent_at,
        "errors": dict(errors),
        "client_ports": ports,
        "seconds": time.perf_counter() - started,
    }


def client_main(pipe: mpc.Connection, cpu: int | None) -> None:
    pin(cpu)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            command = pipe.recv()
        except EOFError:
            return
        if command is None:
            return
        pipe.send(uvloop.run(_measure(**command)))


# ---------------------------------------------------------------------------------------------------------------
# the dribblers: this process's event loop, non-blocking sockets, a timer wheel


@dataclass(eq=False)
class Dribbler:
    sock: socket.socket
    port: int
    opened: float
    slot: int
    sent: int = 0
    answer: bytearray = field(default_factory=bytearray)


class Dribblers:
    """Slow clients that each send a request head one byte per second and never finish it.

    Every dribbler has a slot on a wheel of WHEEL_SLOTS one-millisecond ticks; the wheel turns once a second, so each
    dribbler sends one byte a second and the sends of all of them are spread evenly over that second. A dribbler the
    proxy answers stops sending; once the proxy closes it, the closure is counted under the first line of the answer
    (or "closed, no answer", "reset") with its age, and, while `reopen` is set, a new dribbler takes its place.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, port: int, head: bytes) -> None:
        self.loop = loop
        self.port = port
        self.head = head
        self.wheel: list[set[Dribbler]] = [set() for _ in range(WHEEL_SLOTS)]
        self.live: set[Dribbler] = set()
        self.reopen = False
        self._next_slot = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.TimerHandle | None = None
        self._tick = 0
        self._t0 = 0.0
        self.reset_counters()

    def reset_counters(self) -> None:
        self.closed: Counter[str] = Counter()
        self.close_ages: dict[str, list[float]] = {}
        self.reopened = 0
        self.open_failed: Counter[str] = Counter()
        self.bytes_sent = 0
        self.max_lag_ms = 0.0

    # -- the wheel ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Set the wheel turning (it turns only while there are dribblers, so phase A has no trace of it)."""
        if self._ticker is None:
            self._t0 = self.loop.time()
            self._tick = 0
            self._ticker = self.loop.call_at(self._t0, self._turn)

    def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def _turn(self) -> None:
        """Send the next byte of every dribbler in each slot that is due (several if the loop fell behind)."""
        now = self.loop.time()
        step = 1.0 / WHEEL_SLOTS
        while self._t0 + self._tick * step <= now:
            self.max_lag_ms = max(self.max_lag_ms, (now - self._t0 - self._tick * step) * 1e3)
            for dribbler in list(self.wheel[self._tick % WHEEL_SLOTS]):
                self._send(dribbler)
            self._tick += 1
        self._ticker = self.loop.call_at(self._t0 + self._tick * step, self._turn)

    def _byte(self, offset: int) -> bytes:
        return self.head[offset : offset + 1] if offset < len(self.head) else b"a"

    def _send(self, dribbler: Dribbler) -> None:
        try:
            dribbler.sock.send(self._byte(dribbler.sent))
        except BlockingIOError:
            return  # cannot happen with one byte in flight a second; try again on the next turn
        except OSError as exc:
            self._closed(dribbler, f"reset on send ({type(exc).__name__})")
            return
        dribbler.sent += 1
        self.bytes_sent += 1

    # -- opening and closing ------------------------------------------------------------------------------------

    async def open(self, count: int) -> None:
        self.start()
        gate = asyncio.Semaphore(OPEN_PARALLEL)

        async def limited() -> None:
            async with gate:
                await self._open_one()

        await asyncio.gather(*(limited() for _ in range(count)))

    async def _open_one(self, delay: float = 0.0) -> None:
        if delay:
            await asyncio.sleep(delay)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(self.loop.sock_connect(sock, (HOST, self.port)), 10.0)
            sock.send(self.head[:1])
        except (OSError, TimeoutError) as exc:
            sock.close()
            self.open_failed[type(exc).__name__] += 1
            return
        dribbler = Dribbler(sock, sock.getsockname()[1], self.loop.time(), self._next_slot, sent=1)
        self._next_slot = (self._next_slot + 1) % WHEEL_SLOTS
        self.live.add(dribbler)
        self.wheel[dribbler.slot].add(dribbler)
        self.loop.add_reader(sock.fileno(), self._readable, dribbler)

    def _readable(self, dribbler: Dribbler) -> None:
        try:
            data = dribbler.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            # A reset can discard an answer that had arrived but was not read yet: the label says so, and a proxy
            # that closes with unread input (no lingering close) shows up here instead of under its answer.
            reset = f"reset ({type(exc).__name__})"
            self._closed(dribbler, f"{self._label(dribbler.answer)}, then {reset}" if dribbler.answer else reset)
            return
        if data:
            dribbler.answer += data
            self.wheel[dribbler.slot].discard(dribbler)  # answered: a client would stop sending now
            return
        self._closed(dribbler, self._label(dribbler.answer))

    @staticmethod
    def _label(answer: bytes | bytearray) -> str:
        if not answer:
            return "closed, no answer"
        return answer.split(b"\r\n", 1)[0].decode("latin-1")[:80]

    def _closed(self, dribbler: Dribbler, label: str) -> None:
        self._forget(dribbler)
        self.closed[label] += 1
        self.close_ages.setdefault(label, []).append(self.loop.time() - dribbler.opened)
        if self.reopen:
            self.reopened += 1
            # One the proxy refused at once (a connection limit) waits a second, so that refusals do not turn
            # into a reconnection storm; one it closed after a while (the header timeout) is replaced at once.
            quick = self.loop.time() - dribbler.opened < 1.0
            task = self.loop.create_task(self._open_one(delay=1.0 if quick else 0.0))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _forget(self, dribbler: Dribbler) -> None:
        self.loop.remove_reader(dribbler.sock.fileno())
        self.wheel[dribbler.slot].discard(dribbler)
        self.live.discard(dribbler)
        dribbler.sock.close()

    def close_all(self) -> None:
        self.reopen = False
        for task in list(self._tasks):
            task.cancel()
        for dribbler in list(self.live):
            self._forget(dribbler)
        self.stop()

    # -- what the dribblers saw ---------------------------------------------------------------------------------

    def ports(self) -> set[int]:
        return {d.port for d in self.live}

    def oldest_s(self) -> float:
        now = self.loop.time()
        return max((now - d.opened for d in self.live), default=0.0)

    def answered_open(self) -> int:
        """Dribblers the proxy answered but has not closed (it says it closes after its error answers)."""
        return sum(1 for d in self.live if d.answer)

    def summary(self) -> dict[str, Any]:
        ages = {
            label: {"min_s": round(min(v), 2), "max_s": round(max(v), 2)} for label, v in self.close_ages.items() if v
        }
        return {
            "closed_by_proxy": dict(self.closed),
            "close_age": ages,
            "reopened": self.reopened,
            "open_failed": dict(self.open_failed),
            "answered_still_open": self.answered_open(),
            "bytes_sent": self.bytes_sent,
        }


# ---------------------------------------------------------------------------------------------------------------
# the run


@dataclass
class Options:
    rounds: int
    dribblers: int
    conns: int
    requests: int
    warmup: int
    interval_ms: float
    body_bytes: int
    header_timeout: float | None
    max_connections: int | None
    control: bool
    pin: bool
    output: Path
    raw: bool
    wait_quiet: float
    dribblers_on: str


@dataclass
class Rig:
    opts: Options
    loop: asyncio.AbstractEventLoop
    proxy: ProxyProcess
    origin_port: int
    client: mpc.Connection
    dribblers: Dribblers
    proxy_cpu: str | None
    load_cpu: str | None
    errors: list[str] = field(default_factory=list)

    def count(self) -> dict[str, int]:
        """The proxy's sockets on its listen port right now: all of them, and those whose peer is a live dribbler."""
        sockets = proxy_sockets(self.proxy.pid, self.proxy.port)
        ports = self.dribblers.ports()
        return {"proxy_sockets": len(sockets), "dribblers_at_proxy": sum(1 for peer, _ in sockets if peer in ports)}

    async def settle(self, want: int) -> tuple[dict[str, int], float]:
        """Wait (polling /proc, bounded) until the proxy holds `want` dribbler connections."""
        started = time.monotonic()
        while True:
            seen = self.count()
            if seen["dribblers_at_proxy"] == want and (want or seen["proxy_sockets"] == 0):
                return seen, time.monotonic() - started
            if time.monotonic() - started > SETTLE_TIMEOUT:
                self.errors.append(f"the proxy holds {seen} dribbler connections, not {want}, after {SETTLE_TIMEOUT}s")
                return seen, time.monotonic() - started
            await asyncio.sleep(0.05)

    async def timed(self, name: str, port: int, url: str) -> dict[str, Any]:
        """One measured phase: the client process sends the GETs; the proxy's and this process's CPU are read
        around it."""
        opts = self.opts
        command = {
            "port": port,
            "url": url,
            "conns": opts.conns,
            "requests": opts.requests,
            "warmup": opts.warmup,
            "interval_s": opts.interval_ms / 1e3,
        }
        ticks, everything, mine, cpus = (
            tree_cpu_ticks(self.proxy.pid),
            tree_cpu_ticks(os.getpid()),
            time.process_time(),
            cpu_stat(),
        )
        # This process's CPU and the wheel's lateness count from here: the /proc reads blocked the loop, so the
        # wheel first catches up on the turns they delayed.
        await asyncio.sleep(0.005)
        self.dribblers.max_lag_ms = 0.0
        own, wall = time.process_time(), time.monotonic()
        self.client.send(command)
        ready = await self.loop.run_in_executor(None, self.client.poll, PHASE_TIMEOUT)
        own, wall, lag = time.process_time() - own, time.monotonic() - wall, self.dribblers.max_lag_ms
        if not ready:
            raise RuntimeError(f"phase {name}: the client did not finish within {PHASE_TIMEOUT}s")
        result: dict[str, Any] = self.client.recv()
        ticks = tree_cpu_ticks(self.proxy.pid) - ticks
        everything = tree_cpu_ticks(os.getpid()) - everything  # the proxy, the client, the origin, this process
        mine = round((time.process_time() - mine) * CLK_TCK)
        after = cpu_stat()
        # Which CPU this process (the dribblers) ran on decides whose own time it counts as.
        on_proxy_cpu = self.opts.dribblers_on == "proxy"
        proxy_own, load_own = ticks + (mine if on_proxy_cpu else 0), everything - ticks - (mine if on_proxy_cpu else 0)
        usage = cpu_usage(cpus, after, self.proxy_cpu, proxy_own) if self.proxy_cpu is not None else None
        load_usage = cpu_usage(cpus, after, self.load_cpu, load_own) if self.load_cpu is not None else None
        latencies = result.pop("latencies_us")
        sent_at = result.pop("sent_at_s")
        phase: dict[str, Any] = {
            "phase": name,
            **latency_stats(latencies),
            "seconds": round(wall, 2),
            "errors": result["errors"],
            "proxy_cpu_pct": round(ticks / CLK_TCK / wall * 100, 1),
            "orchestrator_cpu_pct": round(own / wall * 100, 1),
            "wheel_max_lag_ms": round(lag, 2),
            "proxy_cpu_usage": usage,  # busy_pct, and other_pct: what other processes took of the proxy's CPU
            "load_cpu_usage": load_usage,  # the same for the CPU of the client, the origin and the dribblers
            "client_ports": result["client_ports"],
        }
        if opts.raw:  # [seconds into the phase the request was sent, its latency in µs], in the order of completion
            phase["raw"] = [[round(t, 6), round(v, 1)] for t, v in zip(sent_at, latencies, strict=True)]
        if result["errors"]:
            self.errors.append(f"phase {name}: {result['errors']}")
        if not self.proxy.alive():
            raise RuntimeError(f"the proxy exited during phase {name}; stderr:\n{self.proxy.stderr}")
        return phase

    async def slow_phase(self, name: str, port: int, url: str) -> dict[str, Any]:
        """A measured phase with the dribblers open at the proxy from its start to its end."""
        d = self.dribblers
        d.reset_counters()
        d.reopen = True
        start = self.count()
        oldest_start = d.oldest_s()
        phase = await self.timed(name, port, url)
        end = self.count()
        phase["dribblers"] = {
            "wanted": self.opts.dribblers,
            "at_proxy_start": start["dribblers_at_proxy"],
            "at_proxy_end": end["dribblers_at_proxy"],
            "proxy_sockets_start": start["proxy_sockets"],
            "proxy_sockets_end": end["proxy_sockets"],
            "live_here_end": len(d.live),
            "oldest_age_start_s": round(oldest_start, 2),
            "oldest_age_end_s": round(d.oldest_s(), 2),
            **d.summary(),
        }
        return phase


async def run_rounds(rig: Rig) -> list[dict[str, Any]]:
    opts = rig.opts
    url = f"http://{HOST}:{rig.origin_port}/slowloris"
    rounds: list[dict[str, Any]] = []
    for index in range(opts.rounds):
        waited = 0.0
        if opts.wait_quiet:  # no dribbler is open now: the loop may wait in a thread
            waited = await rig.loop.run_in_executor(None, wait_quiet, opts.wait_quiet, [rig.proxy_cpu, rig.load_cpu])
        phases: list[dict[str, Any]] = []
        if opts.control:
            phases.append(await rig.timed("A0", rig.origin_port, url))
        phases.append(await rig.timed("A", rig.proxy.port, url))
        opened = time.monotonic()
        await rig.dribblers.open(opts.dribblers)
        seen, _ = await rig.settle(len(rig.dribblers.live))
        open_s = time.monotonic() - opened
        phases.append(await rig.slow_phase("B", rig.proxy.port, url))
        phases[-1]["dribblers"]["opening_s"] = round(open_s, 2)
        if opts.control:
            phases.append(await rig.slow_phase("B0", rig.origin_port, url))
        rig.dribblers.close_all()
        _, drained = await rig.settle(0)
        rounds.append(
            {
                "round": index + 1,
                "waited_for_quiet_s": waited,
                "phases": phases,
                "dribblers_drained_s": round(drained, 2),
            }
        )
        print(progress_line(index + 1, phases, seen), flush=True)
    return rounds


def progress_line(number: int, phases: list[dict[str, Any]], seen: dict[str, int]) -> str:
    parts = [f"{p['phase']} p99 {p.get('p99_us', float('nan')):.0f} µs" for p in phases]
    return f"  round {number}: " + ", ".join(parts) + f"; {seen['dribblers_at_proxy']} dribblers at the proxy"


# ---------------------------------------------------------------------------------------------------------------
# the report

METRICS = ("p50_us", "p90_us", "p99_us", "max_us")
NAMES = {
    "A0": "A0 direct, no dribblers",
    "A": "A  proxy, no dribblers",
    "B": "B  proxy, dribblers",
    "B0": "B0 direct, dribblers",
}


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds per phase, and the ratios B/A (and B0/A0) of each round, with their median."""
    by_phase: dict[str, list[dict[str, Any]]] = {}
    for rnd in rounds:
        for phase in rnd["phases"]:
            by_phase.setdefault(phase["phase"], []).append(phase)
    medians = {
        name: {m: statistics.median(p[m] for p in phases if m in p) for m in (*METRICS, "proxy_cpu_pct")}
        for name, phases in by_phase.items()
        if all(p.get("n") for p in phases)
    }
    out: dict[str, Any] = {"medians": medians, "ratios": {}}
    for slow, calm in (("B", "A"), ("B0", "A0")):
        if slow not in by_phase or calm not in by_phase:
            continue
        pairs = [(a, b) for a, b in zip(by_phase[calm], by_phase[slow], strict=True) if a.get("n") and b.get("n")]
        for metric in ("p50_us", "p99_us"):
            per_round = [b[metric] / a[metric] for a, b in pairs]
            quiet = [b[metric] / a[metric] for a, b in pairs if _quiet(a) and _quiet(b)]
            out["ratios"][f"{slow}/{calm} {metric[:-3]}"] = {
                "per_round": [round(r, 3) for r in per_round],
                "median": round(statistics.median(per_round), 3) if per_round else None,
                "quiet_rounds": [round(r, 3) for r in quiet],  # both phases had the proxy's CPU to themselves
                "quiet_median": round(statistics.median(quiet), 3) if quiet else None,
            }
    return out


def _quiet(phase: dict[str, Any]) -> bool:
    """Other processes took at most QUIET_PCT of either CPU of the rig during the phase (False when not known)."""
    others = [(phase.get(key) or {}).get("other_pct") for key in ("proxy_cpu_usage", "load_cpu_usage")]
    return all(other is not None and other <= QUIET_PCT for other in others)


def _others(phase: dict[str, Any]) -> str:
    """What other processes took of the proxy's CPU / of the load's CPU during the phase: a disturbed measurement."""
    shares = [(phase.get(key) or {}).get("other_pct") for key in ("proxy_cpu_usage", "load_cpu_usage")]
    return "/".join("-" if v is None else f"{v:.0f}" for v in shares) + " %"


def table(rounds: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    head = (
        f"{'round':>5}  {'phase':<24} {'n':>6} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>8}  "
        f"{'proxy CPU':>9} {'others':>9}  dribblers at proxy start/end, closed by the proxy"
    )
    lines = [head, "-" * len(head)]
    for rnd in rounds:
        for p in rnd["phases"]:
            extra = ""
            if "dribblers" in p:
                d = p["dribblers"]
                closed = ", ".join(f"{n} {label}" for label, n in d["closed_by_proxy"].items()) or "none"
                extra = f"{d['at_proxy_start']}/{d['at_proxy_end']}, closed: {closed}"
                if d["answered_still_open"]:
                    extra += f"; {d['answered_still_open']} answered, not closed"
                if d["open_failed"]:
                    extra += f"; opens failed: {d['open_failed']}"
            lines.append(
                f"{rnd['round']:>5}  {NAMES[p['phase']]:<24} {p.get('n', 0):>6} "
                + " ".join(f"{p.get(m, float('nan')):>7.0f}" for m in METRICS[:3])
                + f" {p.get('max_us', float('nan')):>8.0f}  {p['proxy_cpu_pct']:>7.1f} % {_others(p):>9}  {extra}"
            )
    lines.append("-" * len(head))
    for name, med in summary["medians"].items():  # a phase some round has no latency for has no median
        lines.append(
            f"{'median':>5}  {NAMES[name]:<24} {'':>6} "
            + " ".join(f"{med[m]:>7.0f}" for m in METRICS[:3])
            + f" {med['max_us']:>8.0f}  {med['proxy_cpu_pct']:>7.1f} %"
        )
    lines.append(
        "(others: what other processes took of the proxy's CPU / of the CPU of the client, origin and dribblers; "
        f"a round is quiet when both stay at or under {QUIET_PCT:g} % in both of its phases)"
    )
    lines.append("")
    for name, ratio in summary["ratios"].items():
        per_round = " ".join(f"{r:.2f}" for r in ratio["per_round"])
        quiet = ratio["quiet_median"]
        quiet_text = f"; {len(ratio['quiet_rounds'])} quiet round(s): {quiet:.2f}" if quiet is not None else ""
        lines.append(f"{name:<12} median over rounds {ratio['median']:.2f}{quiet_text}   (rounds: {per_round})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# main


def disturbed(rounds: list[dict[str, Any]]) -> list[str]:
    """Phases in which other processes took more than QUIET_PCT of a CPU of the rig: the machine was not quiet."""
    hits = [
        f"round {rnd['round']} {p['phase']} ({_others(p)})"
        for rnd in rounds
        for p in rnd["phases"]
        if p.get("proxy_cpu_usage") is not None and not _quiet(p)
    ]
    if not hits:
        return []
    return [
        f"other processes took over {QUIET_PCT:g} % of the proxy's or the load's CPU in {len(hits)} phase(s): "
        + ", ".join(hits)
    ]


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5, help="A/B rounds (default 5)")
    parser.add_argument("--dribblers", type=int, default=1000, help="slow client connections in B (default 1000)")
    parser.add_argument("--conns", type=int, default=4, help="measured keep-alive connections (default 4)")
    parser.add_argument("--requests", type=int, default=2000, help="timed GETs per connection and phase (2000)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed GETs per connection first (default 50)")
    parser.add_argument(
        "--interval-ms", type=float, default=2.0, help="per connection, ms from one send to the next (2; 0: no pause)"
    )
    parser.add_argument("--body-bytes", type=int, default=1024, help="origin's response body (default 1024)")
    parser.add_argument("--header-timeout", type=float, help="write forward.header_timeout = S (default: not written)")
    parser.add_argument("--max-connections", type=int, help="write forward.max_connections = N (default: not written)")
    parser.add_argument("--control", action="store_true", help="also time GETs direct to the origin (A0, B0)")
    parser.add_argument(
        "--dribblers-on",
        choices=("load", "proxy"),
        default="proxy",
        help="the CPU the dribblers run on: the proxy's (proxy, default) or the client's and origin's (load)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin the proxy and the load to separate CPUs")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, 200 dribblers, 2 x 300 requests")
    parser.add_argument(
        "--wait-quiet", type=float, default=0.0, help="before each round, wait up to S seconds for idle CPUs (0)"
    )
    parser.add_argument(
        "--raw", action="store_true", help="also write every request's send time and latency to the JSON"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON results ({DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.dribblers, args.conns, args.requests = 1, 200, 2, 300
    if min(args.rounds, args.conns, args.requests) < 1 or args.dribblers < 0 or args.interval_ms < 0:
        parser.error("--rounds, --conns, --requests must be >= 1; --dribblers, --interval-ms >= 0")
    return Options(
        rounds=args.rounds,
        dribblers=args.dribblers,
        conns=args.conns,
        requests=args.requests,
        warmup=args.warmup,
        interval_ms=args.interval_ms,
        body_bytes=args.body_bytes,
        header_timeout=args.header_timeout,
        max_connections=args.max_connections,
        control=args.control,
        pin=not args.no_pin,
        output=args.output,
        raw=args.raw,
        wait_quiet=args.wait_quiet,
        dribblers_on=args.dribblers_on,
    )


def dribble_head(origin_port: int) -> bytes:
    """What every dribbler sends, one byte a second: a valid request head that never ends (an endless header
    value follows it), so no header-size limit but only a timeout can end it."""
    return b"GET http://%s:%d/slow HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: slowloris\r\nX-Slow: " % (
        HOST.encode(),
        origin_port,
        HOST.encode(),
        origin_port,
    )


async def amain(opts: Options, workdir: Path, report: dict[str, Any]) -> list[str]:
    loop = asyncio.get_running_loop()
    cpus = sorted(os.sched_getaffinity(0))
    proxy_cpu, load_cpu = (cpus[0], cpus[1]) if opts.pin and len(cpus) >= 2 else (None, None)
    report["settings"]["proxy_cpu"], report["settings"]["load_cpu"] = proxy_cpu, load_cpu
    ctx = mp.get_context("spawn")
    origin_pipe, origin_end = ctx.Pipe()
    client_pipe, client_end = ctx.Pipe()
    origin = ctx.Process(target=origin_main, args=(origin_end, load_cpu, opts.body_bytes), daemon=True)
    client = ctx.Process(target=client_main, args=(client_end, load_cpu), daemon=True)
    proxy: ProxyProcess | None = None
    dribblers: Dribblers | None = None
    try:
        origin.start()
        client.start()
        origin_end.close()
        client_end.close()
        if not origin_pipe.poll(20.0):
            raise RuntimeError("the origin process did not report its port")
        origin_port: int = origin_pipe.recv()
        forward: dict[str, Any] = {"idle_timeout": 60.0}  # the proxy's default; the tests' 15 s is for tests
        if opts.header_timeout is not None:
            forward["header_timeout"] = opts.header_timeout
        if opts.max_connections is not None:
            forward["max_connections"] = opts.max_connections
        report["settings"]["proxy_overrides"] = {"forward": forward}
        taken: set[int] = {origin_port}
        proxy = launch_proxy(workdir, lambda: free_port(taken), {"forward": forward}, admin=False)
        if proxy_cpu is not None:
            os.sched_setaffinity(proxy.pid, {proxy_cpu})
        pin(proxy_cpu if opts.dribblers_on == "proxy" else load_cpu)  # this process: the dribblers
        report["settings"]["orchestrator_scheduling"] = yield_to_load()
        dribblers = Dribblers(loop, proxy.port, dribble_head(origin_port))
        names = [None if cpu is None else str(cpu) for cpu in (proxy_cpu, load_cpu)]
        rig = Rig(opts, loop, proxy, origin_port, client_pipe, dribblers, names[0], names[1])
        print(
            f"slowloris: trace-proxy pid {proxy.pid} on 127.0.0.1:{proxy.port} (CPU {proxy_cpu}), origin "
            f"127.0.0.1:{origin_port}, client and origin on CPU {load_cpu}, {opts.dribblers} dribblers on CPU "
            f"{proxy_cpu if opts.dribblers_on == 'proxy' else load_cpu}",
            flush=True,
        )
        report["rounds"] = await run_rounds(rig)
        return rig.errors
    finally:
        if dribblers is not None:
            dribblers.close_all()
            dribblers.stop()
        with contextlib.suppress(OSError):
            client_pipe.send(None)
        client_pipe.close()
        origin_pipe.close()
        for child in (client, origin):
            if child.pid is not None:
                child.join(5.0)
                if child.is_alive():
                    child.terminate()
                    child.join(5.0)
        if proxy is not None:
            report["proxy_exit_status"] = proxy.stop()
            if "Traceback" in proxy.stderr:
                report["proxy_traceback"] = proxy.stderr[-4000:]


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    soft, hard = raise_nofile()
    if soft < opts.dribblers * 3 + 256:
        print(f"slowloris: warning: RLIMIT_NOFILE {soft} may be too low for {opts.dribblers} dribblers", flush=True)
    report: dict[str, Any] = {
        "schema": 1,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "settings": {
            "rounds": opts.rounds,
            "dribblers": opts.dribblers,
            "dribble": "one byte per second per connection, spread over a 1 ms timer wheel",
            "conns": opts.conns,
            "requests_per_conn": opts.requests,
            "warmup_per_conn": opts.warmup,
            "interval_ms": opts.interval_ms,
            "body_bytes": opts.body_bytes,
            "control": opts.control,
            "dribblers_on": opts.dribblers_on,
            "rlimit_nofile": [soft, hard],
            "trace_proxy": "tests/helpers/proxy_process.DEFAULT_CONFIG (rate 1.0, DSN), admin off",
        },
        "machine": machine_info(),
        "versions": {
            "python": platform.python_version(),
            "python_executable": os.path.realpath(sys.executable),
            "trace_proxy_build": trace_proxy_build(),
            "uvloop": importlib.metadata.version("uvloop"),
        },
    }
    errors: list[str]
    with tempfile.TemporaryDirectory(prefix="trace-proxy-slowloris-") as tmp:
        try:
            errors = uvloop.run(amain(opts, Path(tmp), report))
        except KeyboardInterrupt:
            print("slowloris: interrupted; everything it started is stopped", file=sys.stderr)
            return 130
        except RuntimeError as exc:
            errors = [str(exc)]
    rounds = report.get("rounds", [])
    if rounds:
        summary = summarize(rounds)
        report["summary"] = summary
        text = table(rounds, summary)
        report["table"] = text
        print()
        print(
            f"trace-proxy under slow clients: {opts.dribblers} dribblers (1 byte/s each); {opts.conns} conns x "
            f"{opts.requests} GETs per phase, {opts.interval_ms:g} ms apart, {opts.body_bytes} B bodies; "
            f"{len(rounds)} rounds; latencies in µs; Python {platform.python_version()}, "
            f"{report['versions']['trace_proxy_build']}"
        )
        print(text)
    for warning in disturbed(rounds):
        print(f"slowloris: warning: {warning}")
        report.setdefault("warnings", []).append(warning)
    if report.get("proxy_traceback"):
        errors.append("the proxy logged a traceback (see proxy_traceback in the JSON)")
    report["errors"] = errors
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"\nresults: {opts.output}")
    for error in errors:
        print(f"slowloris: ERROR: {error}", file=sys.stderr)
    return 1 if errors or not rounds else 0


if __name__ == "__main__":
    sys.exit(main())
