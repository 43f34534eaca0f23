"""The order of a run: set-up, the interleaved rounds of points, the RSS run, the core micro-benchmark.

Within a round every target gets each point back to back, in an order rotated from round to round (the baseline
next to trace-proxy, alternately before and after it), so that the machine's drift in speed, which on a shared VM is
tens of percent within seconds, spreads over all targets instead of favouring whichever goes first. A point that
fails is recorded with its error and the run goes on.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

from peers import BASE, DIRECT, NGINX, PROXIES, SQUID, TARGETS, TINY, TP, TP2, TUNNELS
from points import CORE_BENCH, Bench, run_core_bench
from procfs import wait_quiet
from servers import PointError, Server


def warn_disturbed(bench: Bench, rounds: list[dict[str, Any]]) -> None:
    """Warn when other processes used the rig's CPUs during measured windows (other jobs on the machine)."""
    for cpu, role in (("proxy_cpu", "the proxy's CPU"), ("load_cpu", "the CPU of wrk and the origin")):
        other = [
            p["result"]["cpus"][cpu]["other_pct"]
            for rnd in rounds
            for p in rnd["points"]
            if "other_pct" in ((p.get("result") or {}).get("cpus", {}).get(cpu) or {})
        ]
        disturbed = [v for v in other if v > 10]
        if disturbed:
            bench.warn(
                f"other processes used more than 10 % of {role} during {len(disturbed)} of {len(other)} measured "
                f"windows (up to {max(disturbed):.0f} %): the machine was not quiet, the figures are disturbed"
            )


def describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, PointError) else f"{type(exc).__name__}: {exc}"


def _progress(r: dict[str, Any] | None) -> str:
    """One measurement, for the progress lines."""
    if r is None:
        return "error"
    if "rps" in r:
        cpu = f", {r['cpu_us_per_req']:.1f} CPU-µs/req" if "cpu_us_per_req" in r else ""
        return f"{r['rps']:.0f} req/s{cpu}"
    if "mb_per_s" in r:
        return f"{r['mb_per_s']:.0f} MB/s"
    return f"{r['kib_per_conn']:.1f} KiB/conn, {r['still_open']} of {r['count']} kept open"


def _record(
    bench: Bench, points: list[dict[str, Any]], rnd: int, target: str, point: str, run: Callable[[], dict[str, Any]]
) -> None:
    """Take one measurement into `points`; a PointError is recorded, and the run goes on."""
    entry: dict[str, Any] = {"target": target, "point": point}
    started = time.monotonic()
    try:
        entry["result"] = run()
    except Exception as exc:  # PointError, or a bug: recorded, and the other measurements go on
        entry["error"] = describe(exc)
        bench.error(f"round {rnd}, {target}, {point}: {entry['error']}")
    entry["seconds"] = round(time.monotonic() - started, 2)
    points.append(entry)
    print(f"  round {rnd}  {point:8} {target:15} {_progress(entry.get('result'))}", flush=True)


def measure(bench: Bench, report: dict[str, Any]) -> None:
    """Every measurement, in order; results go into `report` as they arrive."""
    opts = bench.opts
    phase = time.monotonic()
    www = bench.make_files()
    bench.start_origin(www)
    servers: dict[str, Server | None] = {DIRECT: None}
    report["probe"] = {}
    # What this run measures: every target, or (--only-trace-proxy) direct and trace-proxy; plus the baseline.
    skipped = {NGINX, SQUID, TINY, TP2} if opts.only_trace_proxy else set()
    extra = (BASE,) if opts.baseline is not None else ()
    for target in (*(t for t in (*PROXIES, TP2) if t not in skipped), *extra):
        try:
            server = bench._start(bench.make(target, target))
            report["probe"][target] = bench.probe(target, server)
            servers[target] = server
        except Exception as exc:
            bench.error(f"cannot start or use {target}: {describe(exc)}")
    # Page cache and sanity: one direct transfer of the big file.
    bench.curl(None, bench.big_name, 60)
    report["durations_s"]["setup"] = round(time.monotonic() - phase, 1)

    plan: list[tuple[str, str, int]] = [("c1_1k", "/1k", 1), ("c50_1k", "/1k", 50), ("c50_64k", "/64k", 50)]
    rounds: list[dict[str, Any]] = report["rounds"]
    for index in range(opts.rounds):
        waited = 0.0
        if opts.wait_quiet:
            print(f"  round {index + 1}: waiting up to {opts.wait_quiet} s for quiet CPUs", flush=True)
            waited = wait_quiet(opts.wait_quiet, [bench.proxy_cpu, bench.load_cpu])
        phase = time.monotonic()
        points: list[dict[str, Any]] = []
        start = dt.datetime.now(dt.UTC).isoformat()
        rounds.append({"round": index + 1, "started": start, "waited_for_quiet_s": waited, "points": points})

        def rotate(names: Sequence[str], n: int = index) -> list[str]:
            """`names` this run measures, rotated by the round. The baseline goes next to trace-proxy, after it in
            odd rounds and before it in even ones: the pair is measured within the same half minute, neither build
            always first."""
            names = [t for t in names if t not in skipped]
            names = [*names[n % len(names) :], *names[: n % len(names)]]
            if extra and TP in names:
                at = names.index(TP)
                names.insert(at + 1 if n % 2 == 0 else at, BASE)
            return names

        for point, path, conns in plan:
            names = rotate([*TARGETS, TP2] if point == "c50_1k" else TARGETS)
            for target in names:
                if target != DIRECT and servers.get(target) is None:
                    continue
                run = functools.partial(bench.wrk_point, target, servers[target], path, conns)
                _record(bench, points, index + 1, target, point, run)
        for target in rotate(TUNNELS):
            if target != DIRECT and servers.get(target) is None:
                continue
            run = functools.partial(bench.connect_point, target, servers[target])
            _record(bench, points, index + 1, target, "connect", run)
        for target in rotate(PROXIES):
            run = functools.partial(bench.idle_point, target, f"{target}-idle-{index + 1}")
            _record(bench, points, index + 1, target, "idle", run)
        report["durations_s"][f"round_{index + 1}"] = round(time.monotonic() - phase, 1)

    for running in servers.values():
        if running is not None:
            bench.stop(running)
    if not opts.only_trace_proxy:
        phase = time.monotonic()
        print(f"  trace-proxy RSS run: {opts.rss_seconds} s at 50 connections", flush=True)
        try:
            report["rss_run"] = bench.rss_run()
        except Exception as exc:
            report["rss_run"] = {"error": describe(exc)}
            bench.error(f"RSS run: {describe(exc)}")
        report["durations_s"]["rss_run"] = round(time.monotonic() - phase, 1)

    if opts.core_bench and CORE_BENCH.exists():
        phase = time.monotonic()
        print("  bench/core_bench.py --json", flush=True)
        core = run_core_bench(bench.proxy_cpu, 120 if opts.quick else 600)
        report["core_bench"] = core
        if core is not None and "error" in core:
            bench.error(f"core_bench.py: {core['error']}")
        report["durations_s"]["core_bench"] = round(time.monotonic() - phase, 1)
