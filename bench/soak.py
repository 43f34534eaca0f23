"""Soak test of trace-proxy: minutes of mixed traffic with injected faults, then the proxy must be back to idle.

    .venv/bin/python bench/soak.py --minutes 10        # or --seconds 30; --help for the rest

It starts the real proxy (`python -m proxy --config FILE`, through tests/helpers/proxy_process.py, on 127.0.0.1,
`idle_timeout` 2 s so that idle pooled connections age out quickly, `connect_ports = []`, no admin listener) in
front of local origins (bench/soak_traffic.py: an aiohttp origin and a TCP echo target for CONNECT), and keeps 50
client connections busy with a mix of keep-alive GETs (small, ~100 KB, chunked; bodies checked byte for byte),
POSTs (the origin answers the body's hash), CONNECT tunnels (echo round trips), client aborts in the middle of an
upload or a download, and origin resets before or during a response. Every request is counted by kind and outcome;
an outcome the injected faults explain (`aborted`, `cut`, `502`) is expected, any other error is a failure.

Every `--interval` seconds it prints and records one sample of the proxy, all read from /proc:

- `fds`: its open descriptors (/proc/PID/fd), and of them sockets and pipes (splice(2) uses pipes); `rest`
  (`fds_rest`): those beyond one per open connection and six more per spliced tunnel (duplicates of its two sockets,
  two pipes), which stays at the baseline's count unless descriptors leak;
- `rss`: its resident set size (VmRSS of /proc/PID/status);
- `clients`: its TCP sockets whose local port is the proxy's listen port (the listening socket not counted);
- `upstream`: its TCP sockets whose remote port is one of the origins' (`http` to the HTTP origin, `tunnels` to the
  echo target);
- `pool`: the idle pooled origin connections, as far as they can be seen from outside: the proxy's sockets to the
  HTTP origin minus the requests the origin is handling at that moment (`origin_busy`: a connection that carries no
  request is one waiting in the pool). During the load an estimate: a request still on its way to the origin counts
  as pooled, and one the origin still waits on after the proxy dropped its connection counts against the pool.
  Right after the load stopped (`after_load`) no client request is in flight, so it is the pool, give or take the
  uploads that clients abandoned and the proxy has not yet given up on;
- `closing`: its TCP sockets in a state other than ESTABLISHED or LISTEN (CLOSE_WAIT: a peer closed and the proxy
  has not yet; lasting ones are a leak), with every socket state counted in `states`;
- `cpu_s`: its CPU time so far (utime + stime), from which each line shows the CPU share of the interval.

At the end it stops the load and waits, polling /proc with a deadline (`idle_timeout` twice plus 5 s), for the proxy
to return to the idle level measured before the load: no more descriptors than then, no client or upstream
connection. It then stops the proxy with SIGTERM (it must exit 0 without waiting out its shutdown grace), writes a
JSON summary (`--output`, default bench/results/soak.json) and exits 1 if: the proxy did not return to idle, any
request failed in a way the faults do not explain, the proxy died or logged a Traceback, no request completed, or
(`--flatness`; on by default for runs of 3 minutes or more) its descriptors or RSS grew by more than `--max-growth`
(5) percent from the first samples after the warm-up (`--warmup`, 60 s) to the last (medians of `--flat-window`
samples; for descriptors, net of the connections open at each moment: see `flatness`). In a run of less than a
few minutes RSS still grows while the proxy warms up, so the check is off there by default.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))  # for tests.helpers; run as a script, bench/ is sys.path[0] (soak_traffic)

import uvloop  # noqa: E402
from soak_traffic import FAULT_OUTCOMES, KINDS, REQUEST_TIMEOUT, Client, Origins, Tally  # noqa: E402

from tests.helpers.proxy_process import ProxyProcess, launch_proxy, stop_and_check, tcp_sockets  # noqa: E402

DEFAULT_OUTPUT = BENCH_DIR / "results" / "soak.json"
FLATNESS_AUTO_SECONDS = 180.0  # `--flatness auto` checks runs at least this long
IDLE_POLL = 0.25
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Options:
    seconds: float
    interval: float
    connections: int
    idle_timeout: float
    warmup: float
    flatness: bool
    max_growth_pct: float
    flat_window: int
    seed: int
    output: Path
    quiet: bool = False


@dataclass
class Sample:
    """The proxy as /proc shows it at one moment (see the module docstring)."""

    t_s: float
    fds: int
    sockets: int
    pipes: int
    socket_dups: int
    fds_rest: int
    rss_kib: int
    cpu_s: float
    clients: int
    upstream: int
    upstream_http: int
    tunnels: int
    origin_busy: int
    pool: int
    closing: int
    states: dict[str, int]
    requests: int
    unexpected: int

    def line(self, before: Sample | None = None) -> str:
        """One line for the terminal; with the sample `before` it, the request rate and the proxy's CPU use."""
        rates = ""
        if before is not None and self.t_s > before.t_s:
            span = self.t_s - before.t_s
            rate, cpu = (self.requests - before.requests) / span, (self.cpu_s - before.cpu_s) / span
            rates = f"  {rate:.0f} req/s, proxy cpu {cpu:.0%}"
        return (
            f"{self.t_s:6.0f} s  fds {self.fds:4d} (sockets {self.sockets}, pipes {self.pipes}, rest {self.fds_rest})  "
            f"rss {self.rss_kib / 1024:6.1f} MiB  clients {self.clients:3d}  upstream {self.upstream:3d} "
            f"(http {self.upstream_http}, tunnels {self.tunnels})  pool ~{self.pool:3d}  closing {self.closing:3d}  "
            f"requests {self.requests}  unexpected {self.unexpected}{rates}"
        )


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise OSError(f"no VmRSS for pid {pid}")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of the process, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return round((int(fields[11]) + int(fields[12])) / CLK_TCK, 2)


def take_sample(proxy: ProxyProcess, origins: Origins, tally: Tally, t: float) -> Sample:
    """One sample of the proxy process; OSError when it is gone."""
    pid = proxy.pid
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed in between
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    tcp = tcp_sockets(pid)
    clients = sum(1 for s in tcp if s.local_port == proxy.port and s.state != "LISTEN")
    upstream_http = sum(1 for s in tcp if s.remote_port == origins.http_port)
    tunnels = sum(1 for s in tcp if s.remote_port == origins.echo_port)
    states = Counter(s.state for s in tcp)
    sockets = [target for target in targets if target.startswith("socket:")]
    dups = len(sockets) - len(set(sockets))  # a spliced tunnel holds a duplicate of each of its two sockets
    return Sample(
        t_s=round(t, 1),
        fds=len(targets),
        sockets=len(sockets),
        pipes=sum(1 for target in targets if target.startswith("pipe:")),
        socket_dups=dups,
        # one descriptor per connection, and per spliced tunnel 2 duplicates and 2 pipes (4 descriptors) more
        fds_rest=len(targets) - clients - upstream_http - tunnels - 3 * dups,
        rss_kib=_rss_kib(pid),
        cpu_s=_cpu_seconds(pid),
        clients=clients,
        upstream=upstream_http + tunnels,
        upstream_http=upstream_http,
        tunnels=tunnels,
        origin_busy=origins.busy,
        pool=max(0, upstream_http - origins.busy),
        closing=sum(n for state, n in states.items() if state not in ("ESTABLISHED", "LISTEN")),
        states=dict(sorted(states.items())),
        requests=tally.total(),
        unexpected=tally.by_class()["unexpected"],
    )


def _free_port() -> int:
    """A port free on 127.0.0.1 right now (launch_proxy retries with another if it is taken before the proxy binds)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def growth_pct(first: float, last: float) -> float:
    return (last - first) / first * 100 if first else 0.0


@dataclass
class Run:
    """What one soak run found; `failures` empty means it passed."""

    opts: Options
    baseline: Sample | None = None
    samples: list[Sample] = field(default_factory=list)
    after_load: Sample | None = None
    idle: dict[str, Any] = field(default_factory=dict)
    flatness: dict[str, Any] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)
    origin: dict[str, int] = field(default_factory=dict)
    proxy_log: list[str] = field(default_factory=list)
    proxy_exit: int | None = None
    load_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def report(self) -> dict[str, Any]:
        by_kind = {kind: dict(sorted(c.items())) for kind, c in sorted(self.tally.counts.items())}
        return {
            "schema": 1,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "passed": self.passed,
            "failures": self.failures,
            "settings": {**asdict(self.opts), "output": str(self.opts.output)},
            "load_seconds": round(self.load_seconds, 1),
            "baseline": asdict(self.baseline) if self.baseline else None,
            "samples": [asdict(s) for s in self.samples],
            "after_load": asdict(self.after_load) if self.after_load else None,
            "idle": self.idle,
            "flatness": self.flatness,
            "requests": {"total": self.tally.total(), "by_class": self.tally.by_class(), "by_kind": by_kind},
            "kinds": list(KINDS),
            "fault_outcomes": sorted(FAULT_OUTCOMES),
            "unexpected_examples": self.tally.examples,
            "origin": self.origin,
            "proxy_exit": self.proxy_exit,
            "proxy_log": self.proxy_log,
        }


class Soak:
    """One run: origins, the proxy, the clients, the sampling and the end checks."""

    def __init__(self, opts: Options, workdir: Path) -> None:
        self.opts = opts
        self.workdir = workdir
        self.run = Run(opts)
        self.origins = Origins()
        self.proxy: ProxyProcess | None = None
        self.started = 0.0

    def say(self, text: str) -> None:
        if not self.opts.quiet:
            print(text, flush=True)

    def sample(self) -> Sample:
        assert self.proxy is not None
        return take_sample(self.proxy, self.origins, self.run.tally, time.monotonic() - self.started)

    async def main(self) -> Run:
        run = self.run
        await self.origins.start()
        try:
            overrides = {"forward": {"idle_timeout": self.opts.idle_timeout, "shutdown_grace": 5.0}}
            self.proxy = launch_proxy(self.workdir, _free_port, overrides, admin=False)
            try:
                await self._load_and_settle()
            finally:
                self._stop_proxy()
        finally:
            run.origin = {"uploads_cut": self.origins.uploads_cut, "resets": self.origins.resets}
            await self.origins.close()
        self._judge()
        return run

    async def _load_and_settle(self) -> None:
        run, opts, proxy = self.run, self.opts, self.proxy
        assert proxy is not None
        self.started = time.monotonic()
        run.baseline = self.sample()
        self.say(
            f"soak: trace-proxy pid {proxy.pid} on 127.0.0.1:{proxy.port}, origins {self.origins.http_port} (http) "
            f"and {self.origins.echo_port} (echo); {opts.connections} connections for {opts.seconds:g} s, "
            f"idle_timeout {opts.idle_timeout:g} s"
        )
        self.say(f"baseline {run.baseline.line()}")

        stop = asyncio.Event()
        rng = random.Random(opts.seed)
        clients = [
            Client(proxy.port, self.origins, run.tally, random.Random(rng.getrandbits(64)), self._clock)
            for _ in range(opts.connections)
        ]
        self.started = time.monotonic()
        tasks = [asyncio.create_task(c.run(stop)) for c in clients]
        try:
            await self._sample_until(self.started + opts.seconds)
        finally:
            stop.set()
            run.load_seconds = time.monotonic() - self.started
            _, pending = await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 10)
            for task in pending:
                task.cancel()
            if pending:
                run.failures.append(f"{len(pending)} clients did not finish their last request in time")
        if not proxy.alive():
            return
        run.after_load = after = self.sample()
        self.say(
            f"load stopped: pool {after.pool} (origin connections {after.upstream_http}, of which {after.origin_busy} "
            f"carry a request the origin still handles)"
        )
        self.say(f"after load {after.line()}")
        await self._wait_idle()

    def _clock(self) -> float:
        return time.monotonic() - self.started

    async def _sample_until(self, end: float) -> None:
        """Sample every interval until `end` (and once at `end`), checking each second that the proxy is alive."""
        assert self.proxy is not None
        next_at = self.started + self.opts.interval
        last: Sample | None = self.run.baseline
        while True:
            now = time.monotonic()
            if not self.proxy.alive():
                self.run.failures.append(f"the proxy died during the load (status {self.proxy.process.poll()})")
                return
            if now >= min(next_at, end):
                try:
                    sample = self.sample()
                except OSError:  # it died in between: the next round says so
                    await asyncio.sleep(0.1)
                    continue
                self.run.samples.append(sample)
                self.say(sample.line(last))
                last = sample
                next_at += self.opts.interval
                if now >= end:
                    return
            await asyncio.sleep(max(0.0, min(1.0, next_at - now, end - now)))

    async def _wait_idle(self) -> None:
        """Poll /proc (there is no event to wait on) until the proxy is back at the baseline, or the deadline."""
        run = self.run
        assert run.baseline is not None and self.proxy is not None
        base = run.baseline
        limit = self.opts.idle_timeout * 2 + 5.0
        begun = time.monotonic()
        while True:
            try:
                sample = self.sample()
            except OSError:
                run.idle = {"reached": False, "proxy_died": True}
                run.failures.append("the proxy died after the load")
                return
            idle = sample.fds <= base.fds and sample.clients <= base.clients and sample.upstream <= base.upstream
            waited = time.monotonic() - begun
            if idle or waited > limit or not self.proxy.alive():
                break
            await asyncio.sleep(IDLE_POLL)
        run.idle = {"reached": idle, "waited_s": round(waited, 2), "limit_s": limit, "final": asdict(sample)}
        if idle:
            self.say(f"back to idle after {waited:.1f} s: {sample.line()}")
        else:
            run.failures.append(
                f"not back to idle {limit:g} s after the load: fds {sample.fds} (baseline {base.fds}), clients "
                f"{sample.clients} ({base.clients}), upstream {sample.upstream} ({base.upstream}), "
                f"closing {sample.closing}"
            )
            self.say(f"NOT back to idle after {waited:.1f} s: {sample.line()}")

    def _stop_proxy(self) -> None:
        proxy = self.proxy
        if proxy is None:
            return
        try:
            stop_and_check(proxy)
        except AssertionError as exc:
            self.run.failures.append(f"proxy: {str(exc).splitlines()[0]}")
        finally:
            proxy.kill()
        self.run.proxy_exit = proxy.process.returncode
        self.run.proxy_log = proxy.stderr.splitlines()[-200:]
        if "Traceback" in proxy.stderr and not any("Traceback" in f for f in self.run.failures):
            self.run.failures.append("the proxy logged a Traceback")

    def _judge(self) -> None:
        run, opts = self.run, self.opts
        classes = run.tally.by_class()
        if classes["unexpected"]:
            errors = {f"{kind} {outcome}": n for kind, c in run.tally.counts.items() for outcome, n in c.items()}
            shown = {k: n for k, n in errors.items() if " error" in k}
            run.failures.append(f"{classes['unexpected']} unexpected errors: {shown}")
        if run.tally.total() == 0:
            run.failures.append("no request completed")
        after = [s for s in run.samples if s.t_s >= opts.warmup]
        run.flatness = flatness(after, opts.flat_window) | {"checked": opts.flatness, "limit_pct": opts.max_growth_pct}
        if not opts.flatness:
            return
        if len(after) < 2:
            run.failures.append(f"flatness: fewer than 2 samples after the {opts.warmup:g} s warm-up")
            return
        f = run.flatness
        for name, figures in (("descriptors", f["fds"]), ("RSS", f["rss_kib"])):
            if figures["growth_pct"] > opts.max_growth_pct:
                run.failures.append(
                    f"{name} grew {figures['growth_pct']:.1f} % after the warm-up ({figures['how']}; "
                    f"limit {opts.max_growth_pct:g} %)"
                )


def flatness(samples: list[Sample], window: int) -> dict[str, Any]:
    """Growth of descriptors and RSS over `samples` (those after the warm-up), from the median of the first `window`
    samples to the median of the last `window`.

    RSS is taken as it is. The descriptor count of one sample moves by +-20 % with the connections and tunnels open
    at that instant, so that comparing two samples would say nothing; what is compared instead is `fds_rest`, the
    descriptors beyond one per open connection and six more per spliced tunnel (duplicates of its two sockets, and
    two pipes): at idle it is the baseline, and a descriptor leaked during the load stays in it. Its growth is given as
    a percentage of all descriptors (the median of the first samples): "descriptors grew by 5 %" net of the
    connections. The plain counts are recorded too."""
    if len(samples) < 2:
        return {"window": 0}
    window = max(1, min(window, len(samples) // 2))

    def medians(key: str) -> tuple[float, float]:
        values = [getattr(s, key) for s in samples]
        return statistics.median(values[:window]), statistics.median(values[-window:])

    fds = [s.fds for s in samples]
    rss = [s.rss_kib for s in samples]
    fds_first, fds_last = medians("fds")
    rest_first, rest_last = medians("fds_rest")
    rss_first, rss_last = medians("rss_kib")
    fds_growth = (rest_last - rest_first) / fds_first * 100 if fds_first else 0.0
    return {
        "from_s": samples[0].t_s,
        "to_s": samples[-1].t_s,
        "window": window,
        "fds": {
            "growth_pct": round(fds_growth, 2),
            "rest_first": rest_first,
            "rest_last": rest_last,
            "first": fds_first,
            "last": fds_last,
            "plain_growth_pct": round(growth_pct(fds_first, fds_last), 2),
            "min": min(fds),
            "max": max(fds),
            "how": f"descriptors beyond the open connections {rest_first:g} -> {rest_last:g}, of {fds_first:g} in all",
        },
        "rss_kib": {
            "growth_pct": round(growth_pct(rss_first, rss_last), 2),
            "first": rss_first,
            "last": rss_last,
            "min": min(rss),
            "max": max(rss),
            "how": f"{rss_first:g} -> {rss_last:g} KiB",
        },
    }


def print_summary(run: Run) -> None:
    outcomes = ["ok", *sorted(FAULT_OUTCOMES)]
    print()
    print(f"{'kind':<16}" + "".join(f"{o:>10}" for o in outcomes) + "  errors")
    for kind in KINDS:
        counts = run.tally.counts.get(kind, {})
        errors = {o: n for o, n in counts.items() if o not in outcomes}
        print(f"{kind:<16}" + "".join(f"{counts.get(o, 0):>10}" for o in outcomes) + f"  {errors or ''}")
    classes = run.tally.by_class()
    print(
        f"requests: {run.tally.total()} in {run.load_seconds:.0f} s ({run.tally.total() / max(run.load_seconds, 1):.0f}"
        f"/s): {classes['ok']} ok, {classes['fault']} ended by injected faults, {classes['unexpected']} unexpected"
    )
    for example in run.tally.examples[:10]:
        print(f"  unexpected at {example['at_s']} s: {example['kind']} {example['outcome']}: {example['detail']}")
    if run.samples:
        fds = [s.fds for s in run.samples]
        rss = [s.rss_kib for s in run.samples]
        print(
            f"fds first/last/min/max {fds[0]}/{fds[-1]}/{min(fds)}/{max(fds)}; RSS KiB first/last/min/max "
            f"{rss[0]}/{rss[-1]}/{min(rss)}/{max(rss)}"
        )
    f = run.flatness
    if f.get("window"):
        print(
            f"after the warm-up ({f['from_s']:g} s to {f['to_s']:g} s, medians of {f['window']} samples): "
            f"descriptors {f['fds']['growth_pct']:+.1f} % ({f['fds']['how']}; plain count {f['fds']['first']:g} -> "
            f"{f['fds']['last']:g}), RSS {f['rss_kib']['growth_pct']:+.1f} % ({f['rss_kib']['how']}); "
            + (f"checked, limit {f['limit_pct']:g} %" if f["checked"] else "not checked (--flatness)")
        )
    print("PASS" if run.passed else "FAIL:\n  " + "\n  ".join(run.failures))


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="length of the load (default 10 minutes)")
    length.add_argument("--seconds", type=float, help="length of the load in seconds")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--connections", type=int, default=50, help="concurrent client connections (default 50)")
    parser.add_argument("--idle-timeout", type=float, default=2.0, help="the proxy's idle_timeout (default 2 s)")
    parser.add_argument(
        "--warmup", type=float, help="seconds of load before the flatness baseline (default 60, at most a third)"
    )
    parser.add_argument(
        "--flatness",
        choices=("auto", "on", "off"),
        default="auto",
        help=f"check that descriptors and RSS stay flat after the warm-up (auto: runs >= {FLATNESS_AUTO_SECONDS:g} s)",
    )
    parser.add_argument("--max-growth", type=float, default=5.0, help="flatness limit in percent (default 5)")
    parser.add_argument(
        "--flat-window", type=int, default=3, help="samples whose median the flatness check compares (default 3)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the clients' random choices")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON summary (default {DEFAULT_OUTPUT})")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (args.minutes if args.minutes is not None else 10) * 60
    if seconds <= 0 or args.interval <= 0 or args.connections <= 0:
        parser.error("--seconds/--minutes, --interval and --connections must be positive")
    warmup = args.warmup if args.warmup is not None else min(60.0, seconds / 3)
    flatness = args.flatness == "on" or (args.flatness == "auto" and seconds >= FLATNESS_AUTO_SECONDS)
    return Options(
        seconds=seconds,
        interval=args.interval,
        connections=args.connections,
        idle_timeout=args.idle_timeout,
        warmup=warmup,
        flatness=flatness,
        max_growth_pct=args.max_growth,
        flat_window=args.flat_window,
        seed=args.seed,
        output=args.output,
        quiet=args.quiet,
    )


def run_soak(opts: Options) -> Run:
    """Run the soak with `opts`, write the JSON summary, and return what it found."""
    with tempfile.TemporaryDirectory(prefix="trace-proxy-soak-") as workdir:
        run = uvloop.run(Soak(opts, Path(workdir)).main())
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(json.dumps(run.report(), indent=2) + "\n")
    return run


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    run = run_soak(opts)
    print_summary(run)
    print(f"summary: {opts.output}")
    return 0 if run.passed else 1


if __name__ == "__main__":
    sys.exit(main())
