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
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import functools
import importlib.metadata
import importlib.util
import json
import os
import platform
import pwd
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
LUA = BENCH_DIR / "absform.lua"
IDLE_CLIENT = BENCH_DIR / "idle_conns.py"
CORE_BENCH = BENCH_DIR / "core_bench.py"
RESULTS = BENCH_DIR / "results"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")  # = `getconf CLK_TCK`
DSN = "https://pk123@o42.ingest.sentry.io/7"
# The header the C peers add: a fixed span id, the trace id varies per request where the peer can (nginx).
FIXED_SENTRY_TRACE = "0123456789abcdef0123456789abcdef-0123456789abcdef-1"
DASH, TIMES = "\u2013", "\u00d7"  # "not measured" in the table, and "times"

DIRECT, TP, NGINX, SQUID, TINY, TP2 = "direct", "trace-proxy", "nginx-fwd", "squid", "tinyproxy", "trace-proxy-w2"
BASE = "trace-proxy-baseline"  # another commit's trace-proxy (bench/run.sh --baseline REF), set up like TP
PROXIES = (TP, NGINX, SQUID, TINY)
TARGETS = (DIRECT, *PROXIES)
TUNNELS = (DIRECT, TP, SQUID, TINY)  # nginx-fwd does not do CONNECT
LABELS = {
    DIRECT: "direct to the origin",
    TP: "trace-proxy (workers = 1)",
    NGINX: "nginx-fwd (C, fixed upstream)",
    SQUID: "squid",
    TINY: "tinyproxy",
    TP2: "trace-proxy (workers = 2, both CPUs)",
    BASE: "trace-proxy (baseline)",
}
# Environment variables that would change what the children do: proxies for curl, settings for trace-proxy.
_SCRUB = re.compile(r"^(https?_proxy|all_proxy|no_proxy|TRACE_PROXY_.*|SENTRY_.*)$", re.IGNORECASE)


class PointError(Exception):
    """One measurement could not be taken; the run goes on and exits 1 at the end."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived (SIGINT raises KeyboardInterrupt); not an Exception, so nothing swallows it."""


# ---------------------------------------------------------------------------------------------------------------
# /proc: process trees, CPU ticks, RSS, listening sockets


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (index 0 = field 3, the state), or None if the process is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _proc_stat(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if _proc_stat(pid) is not None:
            tree.append(pid)
            todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_ticks(root: int) -> int:
    """utime + stime (fields 14 and 15 of /proc/PID/stat, clock ticks) summed over the process tree."""
    total = 0
    for pid in process_tree(root):
        fields = _proc_stat(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total


def tree_rss_kib(root: int) -> int:
    """VmRSS summed over the process tree, in KiB."""
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
    return total


def listen_sockets(port: int) -> int:
    """How many IPv4 sockets listen on 127.0.0.1:`port` (one per SO_REUSEPORT worker)."""
    wanted = f"0100007F:{port:04X}"
    count = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) > 3 and parts[1] == wanted and parts[3] == "0A":
                count += 1
    return count


def cpu_stat() -> dict[str, list[int]]:
    """/proc/stat's per-CPU lines: "cpu0" -> [user, nice, system, idle, iowait, irq, softirq, steal], in ticks."""
    out: dict[str, list[int]] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu"):
                name, *values = line.split()
                out[name] = [int(v) for v in values[:8]]
    return out


def cpu_usage(
    before: dict[str, list[int]], after: dict[str, list[int]], cpu: str | None, own_ticks: int | None
) -> dict[str, float] | None:
    """How busy one CPU was between two `cpu_stat` readings, in % of the interval.

    `other_pct` is user+nice+system time not spent by the process tree that `own_ticks` belongs to (the proxy,
    pinned there, or wrk and the origin on the load CPU): other processes, which disturb the measurement.
    """
    key = "cpu" if cpu is None or "," in cpu else f"cpu{cpu}"
    if key not in before or key not in after:
        return None
    d = [b - a for a, b in zip(before[key], after[key], strict=True)]
    total = sum(d) or 1
    user_sys = d[0] + d[1] + d[2]
    usage = {
        "busy_pct": round((total - d[3] - d[4]) * 100 / total, 1),
        "softirq_pct": round(d[6] * 100 / total, 1),
        "steal_pct": round(d[7] * 100 / total, 1),
    }
    if own_ticks is not None:
        usage["other_pct"] = round(max(0, user_sys - own_ticks) * 100 / total, 1)
    return usage


# ---------------------------------------------------------------------------------------------------------------
# processes


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


def _nginx_prologue(work: Path) -> str:
    """The part every nginx of the rig shares: one worker, foreground, its files under `work`."""
    return f"""worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 16384; }}
"""


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
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "stdout-stderr.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 15.0) -> None:
        with self.log.open("ab") as log:
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
def _line_reader(proc: subprocess.Popen[bytes]) -> Iterator[Callable[[float], str]]:
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


# ---------------------------------------------------------------------------------------------------------------
# wrk and curl

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


# ---------------------------------------------------------------------------------------------------------------
# the benchmark


@dataclass(frozen=True)
class Baseline:
    """The build an A/B run compares this checkout's trace-proxy with: bench/run.sh installs it (``--baseline``)."""

    program: str  # its trace-proxy console script, in its own venv on the same interpreter
    commit: str
    ref: str

    @property
    def short(self) -> str:
        return self.commit[:7]

    @property
    def label(self) -> str:
        return f"trace-proxy (baseline {self.short})"


@dataclass
class Options:
    quick: bool
    rounds: int
    warmup: int
    window: int
    idle_count: int
    big_mib: int
    transfers: int
    rss_seconds: int
    output: Path
    core_bench: bool
    wait_quiet: int
    only_trace_proxy: bool = False
    baseline: Baseline | None = None


@dataclass
class Bench:
    opts: Options
    tmp: Path
    proxy_cpu: str | None
    load_cpu: str | None
    both_cpus: str | None
    bins: dict[str, str]
    ports: set[int] = field(default_factory=set)
    servers: list[Server] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    origin: Server | None = None
    big_name: str = ""

    # -- setup -----------------------------------------------------------------------------------------------

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        print(f"bench: warning: {text}", flush=True)

    def error(self, text: str) -> None:
        self.errors.append(text)
        print(f"bench: ERROR: {text}", flush=True)

    def _dir(self, tag: str, owner: str | None = None) -> Path:
        path = self.tmp / tag
        path.mkdir(mode=0o755)
        if owner is not None and os.geteuid() == 0:
            entry = pwd.getpwnam(owner)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return path

    def _start(self, server: Server) -> Server:
        self.servers.append(server)
        try:
            server.start()
        finally:
            self._sync_pgids()
        return server

    def stop(self, server: Server) -> None:
        server.stop()
        self._sync_pgids()

    @property
    def pgids_file(self) -> Path:
        return self.tmp / "pgids"

    def _sync_pgids(self) -> None:
        """List the process groups still running, for the watchdog (`start_watchdog`)."""
        text = "".join(f"{s.proc.pid}\n" for s in self.servers if s.proc is not None)
        with contextlib.suppress(OSError):
            self.pgids_file.write_text(text)

    def start_watchdog(self) -> None:
        """A shell in its own session that kills the servers' process groups if bench.py dies without cleaning up.

        Covers SIGKILL (e.g. `timeout --kill-after`), which no finally clause sees and which the parent-death signal
        does not reach through privilege drops (squid, tinyproxy) or forks (trace-proxy's workers).
        """
        script = (  # POSIX sh (dash): no `kill --`; a zombie bench.py counts as gone
            "while :; do s=$(sed -n 's/.*) \\(.\\).*/\\1/p' \"/proc/$1/stat\" 2>/dev/null); "
            '[ -n "$s" ] && [ "$s" != Z ] || break; sleep 1; done; '
            '[ -f "$2" ] && while read -r g; do kill -9 "-$g" 2>/dev/null; done < "$2"; exit 0'
        )
        subprocess.Popen(
            ["sh", "-c", script, "bench-watchdog", str(os.getpid()), str(self.pgids_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def make_files(self) -> Path:
        www = self._dir("www")
        (www / "1k").write_bytes(b"a" * 1024)
        (www / "64k").write_bytes(b"b" * 65536)
        self.big_name = f"{self.opts.big_mib}m"
        block = os.urandom(1 << 20)
        with (www / self.big_name).open("wb") as file:
            for _ in range(self.opts.big_mib):
                file.write(block)
        for path in www.iterdir():
            path.chmod(0o644)
        return www

    def start_origin(self, www: Path) -> None:
        work = self._dir("origin")
        port = free_port(self.ports)
        conf = work / "nginx.conf"
        conf.write_text(
            _nginx_prologue(work)
            + f"""http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000000;
    keepalive_timeout 3600s;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    server {{
        listen {HOST}:{port} backlog=4096;
        root {www};
        # What the origin received: the set-up check that every proxy adds its trace header.
        location = /echo {{
            default_type text/plain;
            return 200 "sentry-trace=$http_sentry_trace\\nbaggage=$http_baggage\\n";
        }}
    }}
}}
"""
        )
        argv = [self.bins["nginx"], "-p", str(work), "-e", f"{work}/error.log", "-c", str(conf)]
        self.origin = self._start(Server("origin (nginx)", argv, port, self.load_cpu, work))

    @property
    def origin_port(self) -> int:
        assert self.origin is not None
        return self.origin.port

    def make_trace_proxy(self, tag: str, workers: int = 1, cpus: str | None = None, program: str = TP) -> Server:
        """A trace-proxy instance; `program` names the build in `bins` (this checkout's, or the baseline's)."""
        work = self._dir(tag)
        port = free_port(self.ports)
        conf = work / "trace-proxy.toml"
        conf.write_text(
            f"""[forward]
listen = "{HOST}:{port}"
connect_ports = []
idle_timeout = 3600.0
shutdown_grace = 0.0
workers = {workers}

[sentry]
dsn = "{DSN}"
traces_sample_rate = 1.0

[admin]
listen = ""
"""
        )
        argv = [self.bins[program], "--config", str(conf), "--log-level", "warning"]
        return Server(tag, argv, port, cpus or self.proxy_cpu, work, listeners=workers)

    def make_nginx_fwd(self, tag: str) -> Server:
        work = self._dir(tag)
        port = free_port(self.ports)
        conf = work / "nginx.conf"
        conf.write_text(
            _nginx_prologue(work)
            + f"""http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 3600s;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    upstream origin {{
        server {HOST}:{self.origin_port};
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 3600s;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header sentry-trace "${{request_id}}-0123456789abcdef-1";
            proxy_buffering off;
        }}
    }}
}}
"""
        )
        argv = [self.bins["nginx"], "-p", str(work), "-e", f"{work}/error.log", "-c", str(conf)]
        return Server(tag, argv, port, self.proxy_cpu, work)

    def make_squid(self, tag: str) -> Server:
        root = os.geteuid() == 0
        work = self._dir(tag, owner="proxy" if root else None)
        port = free_port(self.ports)
        conf = work / "squid.conf"
        conf.write_text(
            f"""# squid 5: a memory-only forward proxy, nothing cached, one worker.
http_port {HOST}:{port}
workers 1
{"cache_effective_user proxy" if root else ""}
pid_filename {work}/squid.pid
cache_log {work}/cache.log
access_log none
coredump_dir {work}
cache deny all
cache_mem 0 MB
shutdown_lifetime 0 seconds
pinger_enable off
icp_port 0
htcp_port 0
netdb_filename none
max_filedescriptors 65536
client_idle_pconn_timeout 3600 seconds
visible_hostname trace-proxy-bench
http_access allow localhost
http_access deny all
request_header_add sentry-trace "{FIXED_SENTRY_TRACE}"
"""
        )
        argv = [self.bins["squid"], "-N", "-f", str(conf)]
        return Server(tag, argv, port, self.proxy_cpu, work)

    def make_tinyproxy(self, tag: str) -> Server:
        root = os.geteuid() == 0
        work = self._dir(tag, owner="nobody" if root else None)
        port = free_port(self.ports)
        conf = work / "tinyproxy.conf"
        conf.write_text(
            f"""{"User nobody" if root else ""}
{"Group nogroup" if root else ""}
Port {port}
Listen {HOST}
Timeout 3600
PidFile "{work}/tinyproxy.pid"
LogFile "{work}/tinyproxy.log"
LogLevel Critical
MaxClients 4096
Allow {HOST}
ConnectPort {self.origin_port}
DisableViaHeader Yes
AddHeader "sentry-trace" "{FIXED_SENTRY_TRACE}"
"""
        )
        argv = [self.bins["tinyproxy"], "-d", "-c", str(conf)]
        return Server(tag, argv, port, self.proxy_cpu, work)

    def make(self, target: str, tag: str) -> Server:
        if target == TP:
            return self.make_trace_proxy(tag)
        if target == TP2:
            return self.make_trace_proxy(tag, workers=2, cpus=self.both_cpus)
        if target == BASE:
            return self.make_trace_proxy(tag, program=BASE)
        if target == NGINX:
            return self.make_nginx_fwd(tag)
        if target == SQUID:
            return self.make_squid(tag)
        if target == TINY:
            return self.make_tinyproxy(tag)
        raise ValueError(target)

    # -- load ------------------------------------------------------------------------------------------------

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
            with _line_reader(client) as read:
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

    def stop_all(self) -> None:
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.stop()
        self._sync_pgids()


# ---------------------------------------------------------------------------------------------------------------
# information about the machine and the software


def _first_line(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (done.stdout.strip() or done.stderr.strip()).splitlines()
    return text[0] if text else "unknown"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpus": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "clk_tck": CLK_TCK,
        "loadavg_at_start": os.getloadavg(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["mem_total_kib"] = int(line.split()[1])
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                info["os"] = line.split("=", 1)[1].strip('"')
    return info


def trace_proxy_build() -> str:
    """Whether the installed trace-proxy runs its hot path compiled (mypyc, TRACE_PROXY_MYPYC=1) or interpreted."""
    spec = importlib.util.find_spec("proxy.server.forward")
    origin = spec.origin if spec is not None else None
    if origin is None:
        return "not installed"
    return "compiled (mypyc)" if not origin.endswith(".py") else "interpreted"


# Run by the baseline's interpreter: trace_proxy_build() and the package versions of its venv.
_BASELINE_PROBE = """
import importlib.metadata as metadata, importlib.util as util, json
spec = util.find_spec("proxy.server.forward")
origin = spec.origin if spec is not None else None
build = "not installed" if origin is None else "interpreted" if origin.endswith(".py") else "compiled (mypyc)"
out = {"trace_proxy_build": build}
for package in ("trace-proxy", "uvloop", "httptools", "aiohttp", "pydantic"):
    try:
        out[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
        out[package] = None
print(json.dumps(out))
"""


def baseline_info(baseline: Baseline) -> dict[str, Any]:
    """The baseline's commit and what its venv holds, so that an A/B shows it compared like with like.

    Asked of the baseline's own interpreter in isolated mode (``-I``): with the checkout's directory on its path, the
    checkout's ``proxy`` sources would answer instead of the baseline's install.
    """
    python = Path(baseline.program).parent / "python"
    info: dict[str, Any] = {"ref": baseline.ref, "commit": baseline.commit, "program": baseline.program}
    info["python_executable"] = os.path.realpath(python)
    try:
        done = subprocess.run(
            [str(python), "-I", "-c", _BASELINE_PROBE], capture_output=True, text=True, timeout=30, check=False
        )
        info.update(json.loads(done.stdout))
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        info["trace_proxy_build"] = f"unknown ({type(exc).__name__}: {exc})"
    return info


def versions(bins: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "nginx": _first_line([bins["nginx"], "-v"]),
        "squid": _first_line([bins["squid"], "-v"]),
        "tinyproxy": _first_line([bins["tinyproxy"], "-v"]),
        "wrk": _first_line([bins["wrk"], "-v"]),
        "curl": _first_line([bins["curl"], "-V"]),
        "python": sys.version.split()[0],
        "python_executable": os.path.realpath(sys.executable),
        "trace_proxy_build": trace_proxy_build(),
    }
    for package in ("trace-proxy", "uvloop", "httptools", "aiohttp", "pydantic"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    git_env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        status = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True, timeout=10, env=git_env
        )
        if head.returncode == 0:
            out["git_commit"] = head.stdout.strip()
            out["git_dirty"] = bool(status.stdout.strip())
    return out


def find_bins() -> dict[str, str]:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    bins: dict[str, str] = {}
    missing = []
    for name in ("nginx", "squid", "tinyproxy", "wrk", "curl", "taskset"):
        found = shutil.which(name, path=path)
        if found is None:
            missing.append(name)
        else:
            bins[name] = found
    script = Path(sys.executable).parent / "trace-proxy"
    if script.exists():
        bins["trace-proxy"] = str(script)
    else:
        missing.append("trace-proxy (in this Python's environment)")
    if missing:
        raise SystemExit(f"bench: missing {', '.join(missing)}: run bench/run.sh, which installs them")
    return bins


# ---------------------------------------------------------------------------------------------------------------
# core micro-benchmark (bench/core_bench.py, a colleague's)


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


# ---------------------------------------------------------------------------------------------------------------
# summary: medians, ratios, the table, the targets


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


# ---------------------------------------------------------------------------------------------------------------
# main


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
    )


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


def wait_quiet(limit: float, cpus: Sequence[str | None]) -> float:
    """Wait up to `limit` seconds until `cpus` were each under 10 % busy for 2 s in a row; return the wait."""
    started = time.monotonic()
    quiet = 0
    keys = [f"cpu{c}" if c is not None else "cpu" for c in cpus]
    while time.monotonic() - started < limit:
        before = cpu_stat()
        time.sleep(1.0)
        after = cpu_stat()
        busy = [cpu_usage(before, after, key.removeprefix("cpu") or None, None) for key in keys]
        quiet = quiet + 1 if all(b is not None and b["busy_pct"] < 10 for b in busy) else 0
        if quiet >= 2:
            break
    return round(time.monotonic() - started, 1)


def _warn_disturbed(bench: Bench, rounds: list[dict[str, Any]]) -> None:
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


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, PointError) else f"{type(exc).__name__}: {exc}"


def _record(
    bench: Bench, points: list[dict[str, Any]], rnd: int, target: str, point: str, run: Callable[[], dict[str, Any]]
) -> None:
    """Take one measurement into `points`; a PointError is recorded, and the run goes on."""
    entry: dict[str, Any] = {"target": target, "point": point}
    started = time.monotonic()
    try:
        entry["result"] = run()
    except Exception as exc:  # PointError, or a bug: recorded, and the other measurements go on
        entry["error"] = _describe(exc)
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
            bench.error(f"cannot start or use {target}: {_describe(exc)}")
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
            report["rss_run"] = {"error": _describe(exc)}
            bench.error(f"RSS run: {_describe(exc)}")
        report["durations_s"]["rss_run"] = round(time.monotonic() - phase, 1)

    if opts.core_bench and CORE_BENCH.exists():
        phase = time.monotonic()
        print("  bench/core_bench.py --json", flush=True)
        core = run_core_bench(bench.proxy_cpu, 120 if opts.quick else 600)
        report["core_bench"] = core
        if core is not None and "error" in core:
            bench.error(f"core_bench.py: {core['error']}")
        report["durations_s"]["core_bench"] = round(time.monotonic() - phase, 1)


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
    if base_info is not None:
        report["baseline"] = base_info
    interrupted: str | None = None
    try:
        measure(bench, report)
    except Exception as exc:  # set-up failed (or a bug): report what there is, exit 1
        bench.error(_describe(exc))
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
    _warn_disturbed(bench, report["rounds"])
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

    opts.output.parent.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    blob = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    opts.output.write_text(blob)
    archive = opts.output.parent / f"{stamp}-{mode}.json"
    archive.write_text(blob)

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
