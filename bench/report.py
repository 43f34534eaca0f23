"""The results of a run, as read: medians over the rounds, trace-proxy's ratios, the table, the targets' verdicts.

Everything here works on the rounds' recorded points (``round_values``) and nothing measures: the table is printed
and kept in the JSON file as markdown, the PASS/FAIL lines judge the medians and show the per-round ratios next to
them (how much of a verdict near its limit is the machine's drift), and an A/B run's summary gives new ÷ baseline.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from options import Baseline, Options
from peers import BASE, DIRECT, LABELS, NGINX, SQUID, TINY, TP, TP2
from points import core_bench_figures

DASH, TIMES = "\u2013", "\u00d7"  # "not measured" in the table, and "times"


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


METRICS = (
    "c1_rps",
    "c1_p50_us",
    "c1_p99_us",
    "c50_1k_rps",
    "c50_64k_rps",
    "c50_1k_cpu_us",
    "c50_64k_cpu_us",
    "idle_kib",
    "connect_mbps",
)


def round_values(rounds: list[dict[str, Any]]) -> dict[str, dict[str, list[float | None]]]:
    """Each target's figures per metric, one entry per round (None where that round has none)."""
    values: dict[str, dict[str, list[float | None]]] = {}

    def put(target: str, metric: str, index: int, value: float | None) -> None:
        values.setdefault(target, {}).setdefault(metric, [None] * len(rounds))[index] = value

    for index, rnd in enumerate(rounds):
        for p in rnd["points"]:
            if "error" in p:
                continue
            target, r = p["target"], p["result"]
            if p["point"] == "c1_1k":
                put(target, "c1_rps", index, r["rps"])
                put(target, "c1_p50_us", index, r["p50_us"])
                put(target, "c1_p99_us", index, r["p99_us"])
            elif p["point"] in ("c50_1k", "c50_64k"):
                put(target, f"{p['point']}_rps", index, r["rps"])
                put(target, f"{p['point']}_cpu_us", index, r.get("cpu_us_per_req"))
            elif p["point"] == "connect":
                put(target, "connect_mbps", index, r["mb_per_s"])
            elif p["point"] == "idle":
                kept = r["still_open"] >= 0.99 * r["count"]
                put(target, "idle_kib", index, r["kib_per_conn"] if kept else None)
    return values


def summarize(values: dict[str, dict[str, list[float | None]]]) -> dict[str, dict[str, float | None]]:
    """The median over the rounds of each of `round_values`' figures."""
    return {t: {m: _median(v) for m, v in ms.items()} for t, ms in values.items()}


def paired_ratios(values: dict[str, dict[str, list[float | None]]], metric: str, other: str) -> list[float]:
    """trace-proxy's figure ÷ `other`'s, round by round (from `round_values`): each pair was measured within the
    same minute, so the drift of the machine's speed between rounds, which moves both, cancels out of it."""
    mine, theirs = values.get(TP, {}).get(metric, []), values.get(other, {}).get(metric, [])
    return [a / b for a, b in zip(mine, theirs, strict=False) if a is not None and b]


def ratios(medians: dict[str, dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
    tp = medians.get(TP, {})
    out: dict[str, dict[str, float | None]] = {}
    for other in (DIRECT, NGINX, SQUID, TINY, *((BASE,) if BASE in medians else ())):
        ref = medians.get(other, {})
        row: dict[str, float | None] = {}
        for metric in METRICS:
            a, b = tp.get(metric), ref.get(metric)
            row[metric] = a / b if a is not None and b else None
        out[other] = row
    return out


# The figures an A/B run compares, by line of the summary (`baseline_summary`): heading, then (metric, name).
AB_LINES = (
    ("CPU-µs/req at c=50", (("c50_1k_cpu_us", "1 KiB"), ("c50_64k_cpu_us", "64 KiB"))),
    ("req/s at c=50", (("c50_1k_rps", "1 KiB"), ("c50_64k_rps", "64 KiB"))),
    ("c=1, 1 KiB", (("c1_rps", "req/s"), ("c1_p50_us", "p50"), ("c1_p99_us", "p99"))),
)


def baseline_ratios(values: dict[str, dict[str, list[float | None]]]) -> dict[str, dict[str, Any]]:
    """trace-proxy ÷ baseline for each figure both have: the ratio of the medians and the ratios round by round.

    The two builds are measured back to back in each round, so a round's ratio is hardly touched by the machine's
    drift between rounds; the median of those ratios is the A/B's answer, and their range is its noise.
    """
    medians = summarize(values)
    tp, base = medians.get(TP, {}), medians.get(BASE, {})
    out: dict[str, dict[str, Any]] = {}
    for metric in METRICS:
        a, b = tp.get(metric), base.get(metric)
        pairs = paired_ratios(values, metric, BASE)
        if a is None or not b or not pairs:
            continue
        out[metric] = {
            "trace_proxy": a,
            "baseline": b,
            "ratio_of_medians": a / b,
            "per_round": pairs,
            "median": statistics.median(pairs),
            "min": min(pairs),
            "max": max(pairs),
        }
    return out


def baseline_summary(ab: dict[str, dict[str, Any]], baseline: Baseline) -> str:
    """The A/B's answer: new ÷ baseline per figure, the median of the per-round ratios and their range."""
    if not ab:
        return f"trace-proxy ÷ baseline {baseline.short}: not measured"
    rounds = max(len(r["per_round"]) for r in ab.values())

    def part(metric: str, name: str) -> str:
        r = ab.get(metric)
        if r is None:
            return f"{name} {DASH}"
        spread = f" ({r['min']:.3f}{DASH}{r['max']:.3f})" if len(r["per_round"]) > 1 else ""
        return f"{name} {r['median']:.3f}{spread}"

    lines = [
        f"trace-proxy ÷ baseline {baseline.short} ({baseline.ref}): median of the per-round ratios"
        + (f" (their range over {rounds} rounds)" if rounds > 1 else " (1 round)")
    ]
    width = max(len(heading) for heading, _ in AB_LINES) + 1
    for heading, metrics in AB_LINES:
        lines.append(f"  {heading + ':':{width}} " + ", ".join(part(m, n) for m, n in metrics))
    return "\n".join(lines)


def _rate(v: float | None) -> str:
    if v is None:
        return DASH
    return f"{v / 1000:.1f} k" if v >= 1000 else f"{v:.0f}"


def _num(v: float | None, digits: int = 1) -> str:
    if v is None:
        return DASH
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.{digits}f}"


def _ratio(v: float | None) -> str:
    return DASH if v is None else f"{v:.2f}"


def table(
    medians: dict[str, dict[str, float | None]],
    rat: dict[str, dict[str, float | None]],
    labels: dict[str, str] = LABELS,
    refs: Sequence[str] = (DIRECT, NGINX, SQUID),
) -> str:
    """The medians of every target measured, then trace-proxy's ratios to each of `refs` that is in `rat`."""
    head = (
        "| path | c=1 req/s | c=1 p50 / p99 µs | c=50 req/s 1 KiB (÷ direct) | c=50 req/s 64 KiB (÷ direct) "
        "| CPU-µs/req c=50 1 KiB / 64 KiB | KiB/idle conn | CONNECT MB/s (÷ direct) |"
    )
    lines = [head, "|" + "---|" * 8]
    direct = medians.get(DIRECT, {})

    def of(v: float | None, ref: float | None) -> str:
        return f" ({v / ref:.2f})" if v is not None and ref else ""

    for target in (DIRECT, TP, BASE, NGINX, SQUID, TINY, TP2):
        m = medians.get(target)
        if m is None:
            continue
        idle = DASH if target == DIRECT else _num(m.get("idle_kib"))
        if target == TINY and m.get("idle_kib") is None:
            idle = "n/a (closes)"
        cpu = DASH if target == DIRECT else f"{_num(m.get('c50_1k_cpu_us'))} / {_num(m.get('c50_64k_cpu_us'))}"
        cells = [
            labels[target],
            _rate(m.get("c1_rps")),
            f"{_num(m.get('c1_p50_us'))} / {_num(m.get('c1_p99_us'))}" if "c1_p50_us" in m else DASH,
            _rate(m.get("c50_1k_rps")) + of(m.get("c50_1k_rps"), direct.get("c50_1k_rps")),
            _rate(m.get("c50_64k_rps")) + of(m.get("c50_64k_rps"), direct.get("c50_64k_rps")),
            cpu,
            idle,
            _num(m.get("connect_mbps")) + of(m.get("connect_mbps"), direct.get("connect_mbps"))
            if m.get("connect_mbps") is not None
            else DASH,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for other in refs:
        r = rat.get(other)
        if r is None:
            continue
        cells = [
            f"**trace-proxy ÷ {'baseline' if other == BASE else other}**",
            _ratio(r["c1_rps"]),
            f"{_ratio(r['c1_p50_us'])} / {_ratio(r['c1_p99_us'])}",
            _ratio(r["c50_1k_rps"]),
            _ratio(r["c50_64k_rps"]),
            f"{_ratio(r['c50_1k_cpu_us'])} / {_ratio(r['c50_64k_cpu_us'])}",
            _ratio(r["idle_kib"]),
            _ratio(r["connect_mbps"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class Check:
    name: str
    value: float | None
    limit: float | None
    passed: bool | None
    detail: str
    per_round_ratios: list[float] = field(default_factory=list)

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "N/A "}[self.passed]
        return f"{verdict}  {self.name}: {self.detail}"


def checks(
    values: dict[str, dict[str, list[float | None]]], rss: dict[str, Any] | None, core: dict[str, Any] | None
) -> list[Check]:
    """The targets, judged on the medians over the rounds (the ratio of trace-proxy's median to the other's).

    Each line also gives the median and range of the per-round ratios: when the machine's speed drifts between
    rounds, they show how much of a verdict near its limit is the drift.
    """
    medians = summarize(values)
    tp = medians.get(TP, {})
    out: list[Check] = []

    def compare(name: str, metric: str, other: str, factor: float, most: bool, unit: str) -> None:
        a, b = tp.get(metric), medians.get(other, {}).get(metric)
        if a is None or b is None:
            out.append(Check(name, a, None, None, "not measured"))
            return
        limit = factor * b
        ok = a <= limit if most else a >= limit
        sign = "≤" if most else "≥"
        detail = f"{_num(a)} {unit} {sign} {factor:g} {TIMES} {_num(b)} = {_num(limit)} {unit} (ratio {a / b:.2f})"
        pairs = paired_ratios(values, metric, other)
        if len(pairs) > 1:
            detail += (
                f"; per round {statistics.median(pairs):.2f} ({min(pairs):.2f}{DASH}{max(pairs):.2f}, "
                f"{sum(p <= factor if most else p >= factor for p in pairs)} of {len(pairs)} rounds within)"
            )
        out.append(Check(name, a, limit, ok, detail, pairs))

    compare("CPU/request, c=50, 1 KiB ≤ 1.5 x nginx-fwd", "c50_1k_cpu_us", NGINX, 1.5, True, "µs")
    compare("CPU/request, c=50, 1 KiB ≤ 0.4 x squid", "c50_1k_cpu_us", SQUID, 0.4, True, "µs")
    compare("throughput, c=50, 1 KiB ≥ 0.85 x direct", "c50_1k_rps", DIRECT, 0.85, False, "req/s")
    compare("throughput, c=50, 1 KiB ≥ 3 x squid", "c50_1k_rps", SQUID, 3, False, "req/s")
    compare("throughput, c=50, 64 KiB ≥ 0.85 x direct", "c50_64k_rps", DIRECT, 0.85, False, "req/s")
    compare("latency, c=1, p50 ≤ 1.3 x nginx-fwd", "c1_p50_us", NGINX, 1.3, True, "µs")
    compare("latency, c=1, p99 ≤ 2 x nginx-fwd", "c1_p99_us", NGINX, 2, True, "µs")
    compare("CONNECT tunnel ≥ 0.75 x direct", "connect_mbps", DIRECT, 0.75, False, "MB/s")
    compare("CONNECT tunnel ≥ squid", "connect_mbps", SQUID, 1, False, "MB/s")
    idle = tp.get("idle_kib")
    name = "RSS per idle client connection ≤ 10 KiB"
    out.append(
        Check(name, idle, 10, None, "not measured")
        if idle is None
        else Check(name, idle, 10, idle <= 10, f"{idle:.1f} KiB")
    )
    name = "RSS at the end of the long run within 5 % of after warm-up"
    if rss is None or "growth_pct" not in rss:
        out.append(Check(name, None, 5, None, "not measured"))
    else:
        g = rss["growth_pct"]
        detail = f"{rss['rss_start_kib']} → {rss['rss_end_kib']} KiB over {rss['seconds']} s ({g:+.1f} %)"
        out.append(Check(name, g, 5, abs(g) <= 5, detail))
    if core is not None:
        figures = core_bench_figures(core.get("result"))
        for case in ("continue", "start"):
            name = f"propagation core ({case}) ≤ 5 µs per request"
            v = figures.get(case)
            if v is None:
                out.append(Check(name, None, 5, None, "not found in core_bench.py's JSON (see the JSON file)"))
            else:
                out.append(Check(name, v, 5, v <= 5, f"{v:.2f} µs"))
    return out


def write_results(report: dict[str, Any], opts: Options, mode: str) -> Path:
    """The whole report, every raw round included, to ``--output`` and to a dated copy beside it (returned)."""
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    blob = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    opts.output.write_text(blob)
    archive = opts.output.parent / f"{stamp}-{mode}.json"
    archive.write_text(blob)
    return archive


def print_summary(
    report: dict[str, Any],
    opts: Options,
    mode: str,
    base_info: dict[str, Any] | None,
    text: str,
    ab: dict[str, dict[str, Any]] | None,
    medians: dict[str, dict[str, float | None]],
    verdicts: list[Check],
) -> None:
    """The run's summary on stdout: what ran, the table, the A/B summary, the RSS, workers and core lines, the
    verdicts."""
    baseline = opts.baseline
    print()
    print(f"trace-proxy benchmark ({mode}; medians of {opts.rounds} round(s); {report['date']})")
    print(
        f"trace-proxy on Python {platform.python_version()} at {os.path.realpath(sys.executable)}, "
        f"hot path {report['versions'].get('trace_proxy_build', '?')}"
    )
    if baseline is not None and base_info is not None:
        build = base_info["trace_proxy_build"]
        print(f"baseline {baseline.ref} = {baseline.commit} on the same Python, hot path {build}")
    print()
    print(text)
    if baseline is not None and ab is not None:
        print()
        print(baseline_summary(ab, baseline))
    rss = report.get("rss_run") or {}
    if "growth_pct" in rss:
        print(
            f"\ntrace-proxy RSS: {rss['rss_start_kib']} KiB after warm-up, {rss['rss_end_kib']} KiB after "
            f"{rss['seconds']} s at 50 connections ({rss['growth_pct']:+.1f} %; {rss['rps']:.0f} req/s)"
        )
    w1, w2 = medians.get(TP, {}).get("c50_1k_rps"), medians.get(TP2, {}).get("c50_1k_rps")
    if w1 and w2:
        print(
            f"trace-proxy c=50 1 KiB: workers = 1 {w1:.0f} req/s, workers = 2 {w2:.0f} req/s ({w2 / w1:.2f} {TIMES}); "
            "with 2 workers the proxy shares CPU 1 with wrk and the origin"
        )
    core = report.get("core_bench")
    if core is not None:
        figures = core_bench_figures(core.get("result"))
        shown = ", ".join(f"{k} {v:.2f} µs" for k, v in figures.items()) or json.dumps(core.get("result"))[:300]
        print(f"propagation core (bench/core_bench.py): {shown}")
    print()
    if opts.quick:
        print("(quick run: the lines below are not a measurement, one short round only)")
    for check in verdicts:
        print(check.line())
    print()
