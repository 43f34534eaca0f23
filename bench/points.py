"""What one measurement is: a wrk run, a CONNECT transfer, a crowd of idle connections, the long RSS run.

A point warms a target up, then reads the proxy's process tree (CPU ticks, RSS) and both CPUs' counters around one
measured window of load, and returns the figures, the raw tool output included, for the JSON file; a point that
cannot be taken raises ``PointError``, and the run goes on without it. The set-up check (``probe``: the origin saw
the trace headers) and the propagation core's micro-benchmark (``core_bench.py``, run pinned like the proxy) are
measurements here too.
"""

from __future__ import annotations

import contextlib
import json
import re
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from peers import BASE, TP, TP2, Rig
from procfs import CLK_TCK, cpu_stat, cpu_usage, tree_cpu_ticks, tree_rss_kib
from servers import HOST, PointError, Server, clean_env, line_reader, pinned

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
LUA = BENCH_DIR / "absform.lua"
IDLE_CLIENT = BENCH_DIR / "idle_conns.py"
CORE_BENCH = BENCH_DIR / "core_bench.py"

_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def _latency_us(text: str, percentile: str) -> float | None:
    m = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.MULTILINE)
    return float(m.group(1)) * _UNITS_US[m.group(2)] if m else None


def parse_wrk(text: str) -> dict[str, Any]:
    requests = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text, re.MULTILINE)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    if requests is None or rps is None:
        raise PointError(f"cannot parse wrk output: {text.strip()[-300:]!r}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {
        "requests": int(requests.group(1)),
        "seconds": float(requests.group(2)) * _UNITS_US[requests.group(3)] / 1e6,
        "rps": float(rps.group(1)),
        "p50_us": _latency_us(text, "50"),
        "p99_us": _latency_us(text, "99"),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True))
        if errors
        else {},
    }


class Bench(Rig):
    """The rig, and the load it puts on each target: every point is one of its methods."""

    def _via(self, target: str, server: Server | None, path: str) -> tuple[str, dict[str, str]]:
        """wrk's URL and environment for `path` on the origin, through `server` unless direct."""
        origin = f"{HOST}:{self.origin_port}"
        if server is None:
            return f"http://{origin}/", clean_env(BENCH_URL=path, BENCH_HOST=origin)
        return f"http://{HOST}:{server.port}/", clean_env(BENCH_URL=f"http://{origin}{path}", BENCH_HOST=origin)

    def wrk(self, url: str, env: dict[str, str], conns: int, seconds: int) -> tuple[dict[str, Any], str]:
        options = ["-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s", "--latency", "-s", str(LUA)]
        argv = pinned(self.load_cpu, [self.bins["wrk"], *options, url])
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 30, check=False)
        except subprocess.TimeoutExpired as exc:
            raise PointError(f"wrk did not finish within {seconds + 30}s") from exc
        if done.returncode != 0:
            raise PointError(f"wrk exited {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")
        return parse_wrk(done.stdout), done.stdout

    def wrk_point(self, target: str, server: Server | None, path: str, conns: int) -> dict[str, Any]:
        url, env = self._via(target, server, path)
        if server is not None and not server.alive():
            raise PointError(f"{server.name} is not running: {server.log_tail()}")
        self.wrk(url, env, conns, self.opts.warmup)
        assert self.origin is not None
        pid = server.pid if server is not None else None
        before = tree_cpu_ticks(pid) if pid is not None else None
        origin_before = tree_cpu_ticks(self.origin.pid)
        stat_before = cpu_stat()
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result, raw = self.wrk(url, env, conns, self.opts.window)
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        stat_after = cpu_stat()
        after = tree_cpu_ticks(pid) if pid is not None else None
        origin_after = tree_cpu_ticks(self.origin.pid)
        point: dict[str, Any] = {**result, "conns": conns, "path": path}
        proxy_ticks = 0
        if pid is not None and before is not None and after is not None:
            proxy_ticks = after - before
            point["cpu_ticks"] = proxy_ticks
            point["cpu_us_per_req"] = proxy_ticks * 1e6 / CLK_TCK / max(result["requests"], 1)
            point["rss_kib"] = tree_rss_kib(pid)
        wrk_seconds = (children_after.ru_utime + children_after.ru_stime) - (
            children_before.ru_utime + children_before.ru_stime
        )
        load_ticks = round(wrk_seconds * CLK_TCK) + origin_after - origin_before  # wrk + origin, on the load CPU
        both = target == TP2  # the proxy runs on both CPUs: what is "other" cannot be told apart
        point["cpus"] = {
            "proxy_cpu": cpu_usage(stat_before, stat_after, self.proxy_cpu, None if both else proxy_ticks),
            "load_cpu": cpu_usage(stat_before, stat_after, self.load_cpu, None if both else load_ticks),
        }
        point["origin_cpu_us_per_req"] = (origin_after - origin_before) * 1e6 / CLK_TCK / max(result["requests"], 1)
        point["wrk_output"] = raw
        if result["requests"] == 0:
            raise PointError(f"{target} {path} c={conns}: no request completed")
        if result["non2xx"] > 0.001 * result["requests"]:
            raise PointError(f"{target} {path} c={conns}: {result['non2xx']} of {result['requests']} non-2xx")
        if result["non2xx"] or any(result["socket_errors"].values()):
            point["note"] = f"non-2xx {result['non2xx']}, socket errors {result['socket_errors']}"
        return point

    def probe(self, target: str, server: Server) -> dict[str, str]:
        """One request through `server` to the origin's /echo: the trace headers the origin received."""
        origin = f"{HOST}:{self.origin_port}"
        request = f"GET http://{origin}/echo HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n"
        data = b""
        try:
            with socket.create_connection((HOST, server.port), timeout=5) as s:
                s.sendall(request.encode())
                while chunk := s.recv(65536):
                    data += chunk
        except OSError as exc:
            raise PointError(f"{target}: request through it failed: {exc}") from exc
        head, _, body = data.decode("latin-1").partition("\r\n\r\n")
        if not head.startswith("HTTP/1.1 200") and not head.startswith("HTTP/1.0 200"):
            raise PointError(f"{target}: request through it got {head.splitlines()[:1]}")
        seen = dict(line.split("=", 1) for line in body.splitlines() if "=" in line)
        trace = seen.get("sentry-trace", "")
        if not re.fullmatch(r"[0-9a-f]{32}-[0-9a-f]{16}-1", trace):
            raise PointError(f"{target}: the origin received sentry-trace {trace!r}")
        if target in (TP, TP2, BASE):
            baggage = seen.get("baggage", "")
            for member in ("sentry-public_key=pk123", "sentry-org_id=42", "sentry-sampled=true"):
                if member not in baggage.split(","):
                    raise PointError(f"{target}: the origin received baggage {baggage!r}, without {member}")
        return seen

    def curl(self, server: Server | None, name: str, timeout: float) -> dict[str, Any]:
        argv = [self.bins["curl"], "-s", "-o", "/dev/null", "--max-time", f"{timeout:g}"]
        if server is not None:
            argv += ["-p", "-x", f"http://{HOST}:{server.port}"]
        argv += ["-w", "%{speed_download} %{http_code} %{size_download} %{http_connect}"]
        argv.append(f"http://{HOST}:{self.origin_port}/{name}")
        try:
            done = subprocess.run(
                pinned(self.load_cpu, argv),
                env=clean_env(),
                capture_output=True,
                text=True,
                timeout=timeout + 10,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PointError(f"curl did not finish within {timeout + 10:g}s") from exc
        fields = done.stdout.split()
        if done.returncode != 0 or len(fields) < 3 or fields[1] != "200":
            raise PointError(f"curl exit {done.returncode}, output {done.stdout!r} {done.stderr.strip()!r}")
        return {"bytes_per_s": float(fields[0]), "bytes": int(fields[2]), "connect_status": fields[3:]}

    def connect_point(self, target: str, server: Server | None) -> dict[str, Any]:
        if server is not None and not server.alive():
            raise PointError(f"{server.name} is not running: {server.log_tail()}")
        self.curl(server, "64k", 30)  # warms the tunnel path (and, direct, the connection set-up)
        # One transfer lasts a fraction of a second, far shorter than a wrk window, so a hiccup of the machine can
        # halve it: each round takes the median of a few back-to-back transfers.
        expected = self.opts.big_mib << 20
        speeds = []
        for _ in range(self.opts.transfers):
            result = self.curl(server, self.big_name, 120)
            if result["bytes"] != expected:
                raise PointError(f"{target}: CONNECT transfer got {result['bytes']} of {expected} bytes")
            speeds.append(result["bytes_per_s"] / 1e6)
        return {**result, "transfers_mb_per_s": speeds, "mb_per_s": statistics.median(speeds)}

    def idle_point(self, target: str, tag: str) -> dict[str, Any]:
        """RSS per idle client connection, on a fresh instance warmed up with a short 1 KiB run."""
        server = self._start(self.make(target, tag))
        client: subprocess.Popen[bytes] | None = None
        try:
            url, env = self._via(target, server, "/1k")
            self.wrk(url, env, 50, 1)
            time.sleep(0.25 if self.opts.quick else 0.5)
            idle = tree_rss_kib(server.pid)
            origin_url = f"http://{HOST}:{self.origin_port}/1k"
            argv = [sys.executable, str(IDLE_CLIENT), "--proxy", f"{HOST}:{server.port}", "--url", origin_url]
            argv += ["--count", str(self.opts.idle_count), "--hold", "60"]
            client = subprocess.Popen(
                pinned(self.load_cpu, argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=clean_env()
            )
            with line_reader(client) as read:
                ready = json.loads(read(60))
                time.sleep(0.5 if self.opts.quick else 1.0)
                loaded = tree_rss_kib(server.pid)
                assert client.stdin is not None
                client.stdin.write(b"done\n")
                client.stdin.flush()
                done = json.loads(read(15))
            result: dict[str, Any] = {
                "count": self.opts.idle_count,
                "rss_idle_kib": idle,
                "rss_with_conns_kib": loaded,
                "opened": ready["open"],
                "failed": ready["failed"],
                "client_errors": ready["errors"],
                "still_open": done["still_open"],
                "kib_per_conn": (loaded - idle) / self.opts.idle_count,
            }
            if ready["failed"] > 0.01 * self.opts.idle_count:
                raise PointError(f"{target}: {ready['failed']} idle connections failed: {ready['errors']}")
            if done["still_open"] < 0.99 * self.opts.idle_count:
                result["note"] = f"the proxy closed {self.opts.idle_count - done['still_open']} connections"
            return result
        finally:
            if client is not None and client.poll() is None:
                client.kill()
                client.wait(5)
            self.stop(server)

    def rss_run(self) -> dict[str, Any]:
        """trace-proxy's RSS after warm-up and at the end of a long 1 KiB, 50-connection run (a fresh instance)."""
        server = self._start(self.make_trace_proxy("trace-proxy-rss"))
        try:
            url, env = self._via(TP, server, "/1k")
            self.wrk(url, env, 50, self.opts.warmup)
            start = tree_rss_kib(server.pid)
            ticks0 = tree_cpu_ticks(server.pid)
            argv = pinned(
                self.load_cpu,
                [self.bins["wrk"], "-t1", "-c50", f"-d{self.opts.rss_seconds}s", "--latency", "-s", str(LUA), url],
            )
            samples: list[tuple[float, int]] = [(0.0, start)]
            began = time.monotonic()
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                step = max(1.0, self.opts.rss_seconds / 12)
                while proc.poll() is None and time.monotonic() - began < self.opts.rss_seconds + 30:
                    time.sleep(step)
                    if proc.poll() is None:
                        samples.append((round(time.monotonic() - began, 1), tree_rss_kib(server.pid)))
                out, _ = proc.communicate(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(5)
            end = tree_rss_kib(server.pid)
            ticks = tree_cpu_ticks(server.pid) - ticks0
            if proc.returncode != 0:
                raise PointError(f"wrk exited {proc.returncode}: {out.strip()[-300:]}")
            result = parse_wrk(out)
            samples.append((round(time.monotonic() - began, 1), end))
            return {
                "seconds": self.opts.rss_seconds,
                "rss_start_kib": start,
                "rss_end_kib": end,
                "growth_pct": (end - start) * 100 / start,
                "samples": samples,
                "rps": result["rps"],
                "requests": result["requests"],
                "non2xx": result["non2xx"],
                "cpu_us_per_req": ticks * 1e6 / CLK_TCK / max(result["requests"], 1),
                "wrk_output": out,
            }
        finally:
            self.stop(server)


def run_core_bench(cpu: str | None, timeout: float) -> dict[str, Any] | None:
    if not CORE_BENCH.exists():
        return None
    argv = pinned(cpu, [sys.executable, str(CORE_BENCH), "--json"])
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:g}s"}
    result: dict[str, Any] = {"exit": done.returncode, "seconds": round(time.monotonic() - started, 1)}
    parsed: Any = None
    with contextlib.suppress(ValueError):
        parsed = json.loads(done.stdout)
    if parsed is None:  # the JSON may follow other output: take the last line that parses
        for line in reversed(done.stdout.splitlines()):
            with contextlib.suppress(ValueError):
                parsed = json.loads(line)
                break
    if parsed is None or done.returncode != 0:
        result["error"] = f"exit {done.returncode}: {(done.stderr or done.stdout).strip()[-500:]}"
    result["result"] = parsed
    return result


def core_bench_figures(data: Any) -> dict[str, float]:
    """µs per call by case ("start", "continue", "continue_cold") from core_bench.py's ``--json`` object.

    That object is ``{"start_us": ..., "continue_us": ..., "continue_cold_us": ...}``; any other numeric
    ``*_us`` key is kept too, under its name without the suffix.
    """
    if not isinstance(data, dict):
        return {}
    return {
        key.removesuffix("_us"): float(value)
        for key, value in data.items()
        if key.endswith("_us") and isinstance(value, int | float) and not isinstance(value, bool)
    }
