"""Side-by-side benchmark of trace-proxy against direct access, nginx, squid and tinyproxy on one machine.

Run it through ``bash bench/run.sh [--quick]``, which installs what is missing first (options: ``--help``). The
rig:

- an nginx origin on 127.0.0.1 (one worker, keep-alive, access log off) serving fixed 1 KiB, 64 KiB and big files
  from a temporary directory; ``wrk`` (one thread) is the load generator, sending absolute-form request lines
  through the proxies (``bench/absform.lua``); origin, wrk, curl and the idle-connection client share CPU 1, the
  proxy under test runs alone on CPU 0 (``taskset``);
- targets: ``direct`` to the origin; ``trace-proxy`` (sample rate 1.0 and a DSN: every request starts a trace with a
  full DSC); ``nginx-fwd``, a second nginx with one fixed keep-alive upstream that adds a per-request
  ``sentry-trace`` (the C ceiling, not a general forward proxy); ``squid`` (no cache, ``request_header_add``);
  ``tinyproxy`` (``AddHeader``); and trace-proxy with ``workers = 2`` on both CPUs for the 1 KiB, 50-connection
  throughput only; with ``bench/run.sh --baseline REF``, also ``trace-proxy-baseline``, REF's trace-proxy built
  the same way in its own venv, configured like ``trace-proxy`` and pinned to the same CPU, measured next to it in
  every round (``--only-trace-proxy`` leaves out nginx-fwd, squid, tinyproxy, workers = 2 and the RSS run);
- each point: a warm-up, then a measured window; the targets are interleaved within each round, and every figure
  reported is the median over the rounds. CPU time is utime+stime of the proxy's whole process tree
  (``/proc/PID/stat``), read just before and after the measured window, divided by the requests wrk completed.

Prints one table (absolute figures, then trace-proxy's ratios to direct, nginx-fwd and squid, and to the baseline
in an A/B run, which also gets a summary of the per-round ratios) and the PASS/FAIL lines of the performance
targets, and writes everything, every raw round included, to ``bench/results/latest.json`` (and a dated copy). The
exit status says whether every measurement ran (0) or not (1), never whether the targets were met: ``--quick`` is
CI's smoke run.

This file is the command line (its options, and ``main``: set up, measure, report, clean up); the rest is split by
concern, each module importable on its own from this directory: ``procfs`` (CPU ticks, RSS and CPU load from
/proc), ``servers`` (pinned child processes, stopped for sure), ``options`` (the settings of a run), ``peers`` (the
origin and the targets' configurations), ``points`` (what one measurement is), ``rounds`` (their order within a
run), ``machine`` (what ran it) and ``report`` (medians, ratios, the table, the verdicts, the JSON file).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from machine import baseline_info, find_bins, machine_info, versions
from options import Baseline, Options
from peers import BASE, DIRECT, DSN, LABELS, NGINX, SQUID
from points import Bench
from report import baseline_ratios, checks, print_summary, ratios, round_values, summarize, table, write_results
from rounds import describe, measure, warn_disturbed
from servers import PointError

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived (SIGINT raises KeyboardInterrupt); not an Exception, so nothing swallows it."""


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description="Side-by-side benchmark of trace-proxy (run it through bench/run.sh).",
        epilog="Full run: 5 rounds of 2 s warm-up + 8 s windows, 1,000 idle connections, three 256 MiB CONNECT "
        "transfers (their median) and a 60 s RSS run (about 17 minutes). --quick: 1 round of 1 s + 1 s, one 32 MiB "
        "transfer and a 3 s RSS run (about a minute).",
    )
    parser.add_argument("--quick", action="store_true", help="CI's smoke run: one short round")
    parser.add_argument("--rounds", type=int, help="rounds of interleaved targets (default 5, quick 1)")
    parser.add_argument("--warmup", type=int, help="seconds of warm-up before each point (default 2, quick 1)")
    parser.add_argument("--window", type=int, help="seconds of each measured window (default 8, quick 1)")
    parser.add_argument("--idle-conns", type=int, default=1000, help="idle client connections (default 1000)")
    parser.add_argument("--rss-seconds", type=int, help="length of trace-proxy's RSS run (default 60, quick 5)")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json", help="JSON results file")
    parser.add_argument("--no-core-bench", action="store_true", help="skip bench/core_bench.py")
    parser.add_argument(
        "--wait-quiet",
        type=int,
        default=0,
        metavar="SECONDS",
        help="before each round, wait up to SECONDS for both CPUs to be idle (other jobs on the machine)",
    )
    parser.add_argument(
        "--only-trace-proxy",
        action="store_true",
        help="measure direct, trace-proxy and its baseline only: no nginx-fwd, squid, tinyproxy, workers = 2 or RSS "
        "run (an A/B of two builds in a few minutes)",
    )
    parser.add_argument(
        "--access-log",
        choices=("text", "json"),
        help="run this checkout's trace-proxy (workers = 1 and 2, not the baseline) with [log] access = true in this "
        "format, its log written to /dev/null: with --baseline on the same commit, the A/B is the access log's cost",
    )
    ab = parser.add_argument_group(
        "A/B against another commit",
        "`bash bench/run.sh --baseline REF` installs REF's trace-proxy (a git commit-ish), built the same way, into "
        "bench/.venv-baseline and passes the three options below, which measure it next to this checkout's in every "
        "round.",
    )
    ab.add_argument("--baseline", metavar="REF", help="bench/run.sh's option (it builds REF first), not bench.py's")
    ab.add_argument("--baseline-trace-proxy", type=Path, metavar="PATH", help="the baseline's trace-proxy script")
    ab.add_argument("--baseline-commit", metavar="SHA", help="the commit it was built from")
    ab.add_argument("--baseline-ref", metavar="REF", help="how that commit was named (default: the commit)")
    a = parser.parse_args(argv)
    if a.baseline is not None:
        parser.error(f"--baseline is bench/run.sh's: run `bash bench/run.sh --baseline {a.baseline}`")
    baseline = None
    if a.baseline_trace_proxy is not None or a.baseline_commit is not None:
        if a.baseline_trace_proxy is None or a.baseline_commit is None:
            parser.error("--baseline-trace-proxy and --baseline-commit go together")
        if not os.access(a.baseline_trace_proxy, os.X_OK):
            parser.error(f"--baseline-trace-proxy {a.baseline_trace_proxy}: not an executable")
        program = str(a.baseline_trace_proxy.absolute())
        baseline = Baseline(program, a.baseline_commit, a.baseline_ref or a.baseline_commit)
    quick = bool(a.quick)
    return Options(
        quick=quick,
        rounds=a.rounds or (1 if quick else 5),
        warmup=a.warmup or (1 if quick else 2),
        window=a.window or (1 if quick else 8),
        idle_count=a.idle_conns,
        big_mib=32 if quick else 256,
        transfers=1 if quick else 3,
        rss_seconds=a.rss_seconds or (3 if quick else 60),
        output=a.output,
        core_bench=not a.no_core_bench,
        wait_quiet=a.wait_quiet,
        only_trace_proxy=bool(a.only_trace_proxy),
        baseline=baseline,
        access_log=a.access_log,
    )


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    started = time.monotonic()
    bins = find_bins()
    labels = dict(LABELS)
    if opts.baseline is not None:
        bins[BASE] = opts.baseline.program
        labels[BASE] = opts.baseline.label
    nofile = _raise_nofile(65536)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGHUP, _raise_interrupted)
    cpus = sorted(os.sched_getaffinity(0))
    tmp = Path(tempfile.mkdtemp(prefix="trace-proxy-bench-"))
    tmp.chmod(0o755)  # nginx workers and squid/tinyproxy run as other users when started by root
    bench = Bench(
        opts,
        tmp,
        proxy_cpu=str(cpus[0]) if len(cpus) >= 2 else None,
        load_cpu=str(cpus[1]) if len(cpus) >= 2 else None,
        both_cpus=f"{cpus[0]},{cpus[1]}" if len(cpus) >= 2 else None,
        bins=bins,
    )
    bench.start_watchdog()
    if len(cpus) < 2:
        bench.warn("fewer than 2 CPUs: nothing is pinned, proxy and load share the CPU")
    if nofile < opts.idle_count * 3 + 256:
        bench.warn(f"open files limit {nofile} may be too low for {opts.idle_count} idle connections")
    mode = "quick" if opts.quick else "full"
    print(
        f"bench: {mode} run, {opts.rounds} round(s) of {opts.warmup} s warm-up + {opts.window} s windows; "
        f"proxy on CPU {bench.proxy_cpu}, origin + load on CPU {bench.load_cpu}; work dir {tmp}",
        flush=True,
    )
    software = versions(bins)
    baseline = opts.baseline
    base_info = baseline_info(baseline) if baseline is not None else None
    if baseline is not None and base_info is not None:
        print(f"bench: A/B against {baseline.ref} = {baseline.commit}, hot path {base_info['trace_proxy_build']}")
        # Like with like: the same build mode and the same dependencies (each venv resolved its own).
        for key in ("trace_proxy_build", "uvloop", "httptools", "aiohttp", "pydantic"):
            if base_info.get(key) != software.get(key):
                bench.warn(
                    f"{key}: the baseline's venv has {base_info.get(key)}, this checkout's {software.get(key)}; "
                    "the A/B measures that difference too"
                )
    report: dict[str, Any] = {
        "schema": 1,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "settings": {
            "rounds": opts.rounds,
            "warmup_s": opts.warmup,
            "window_s": opts.window,
            "idle_conns": opts.idle_count,
            "connect_file_bytes": opts.big_mib << 20,
            "rss_run_s": opts.rss_seconds,
            "proxy_cpu": bench.proxy_cpu,
            "load_cpu": bench.load_cpu,
            "wrk": "1 thread, --latency, absolute-form request lines (bench/absform.lua)",
            "trace_proxy": {"traces_sample_rate": 1.0, "dsn": DSN, "connect_ports": [], "admin": "off"},
        },
        "machine": machine_info(),
        "versions": software,
        "rounds": [],
        "durations_s": {},
    }
    if opts.only_trace_proxy:
        report["settings"]["only_trace_proxy"] = True
    if opts.access_log is not None:
        report["settings"]["trace_proxy"]["access_log"] = f"{opts.access_log}, to /dev/null (not the baseline)"
    if base_info is not None:
        report["baseline"] = base_info
    interrupted: str | None = None
    try:
        measure(bench, report)
    except Exception as exc:  # set-up failed (or a bug): report what there is, exit 1
        bench.error(describe(exc))
        if not isinstance(exc, PointError):
            traceback.print_exc()
    except KeyboardInterrupt:
        interrupted = "SIGINT"
    except Interrupted as exc:
        interrupted = str(exc)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        bench.stop_all()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if interrupted:
        print(f"bench: interrupted ({interrupted}); every server stopped; logs kept in {tmp}", file=sys.stderr)
        with contextlib.suppress(OSError):
            (tmp / "www" / bench.big_name).unlink()
        return 130

    values = round_values(report["rounds"])
    medians = summarize(values)
    warn_disturbed(bench, report["rounds"])
    rat = ratios(medians)
    refs = (DIRECT, BASE) if opts.only_trace_proxy else (DIRECT, NGINX, SQUID, BASE)
    text = table(medians, rat, labels, refs)
    ab = baseline_ratios(values) if baseline is not None else None
    verdicts = checks(values, report.get("rss_run"), report.get("core_bench"))
    report["medians"] = medians
    report["ratios_trace_proxy_to"] = rat
    report["table_markdown"] = text
    if ab is not None:
        report["ratios_to_baseline"] = ab
    report["checks"] = [c.__dict__ for c in verdicts]
    report["warnings"] = bench.warnings
    report["errors"] = bench.errors
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    report["durations_s"]["total"] = round(time.monotonic() - started, 1)

    archive = write_results(report, opts, mode)
    print_summary(report, opts, mode, base_info, text, ab, medians, verdicts)
    for warning in bench.warnings:
        print(f"warning: {warning}")
    print(f"results: {opts.output} (and {archive.name}); took {report['durations_s']['total']:.0f} s")
    if bench.errors:
        print(f"bench: {len(bench.errors)} measurement(s) failed; logs kept in {tmp}:", file=sys.stderr)
        for error in bench.errors:
            print(f"  {error}", file=sys.stderr)
        with contextlib.suppress(OSError):
            (tmp / "www" / bench.big_name).unlink()
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
