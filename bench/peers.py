"""The peers on the rig and how each is configured: the nginx origin, and the targets measured in front of it.

``direct`` goes to the origin itself; ``trace-proxy`` (and its ``workers = 2`` and baseline variants),
``nginx-fwd``, ``squid`` and ``tinyproxy`` each get a configuration written here that makes them comparable:
keep-alive on both sides, nothing cached, no access log, a trace header added to every request. ``Rig`` owns the
work directory, the ports and the running servers (and the watchdog that kills them if the benchmark dies); the
measurements are ``points.Bench``'s, which extends it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from options import Options
from servers import HOST, Server, free_port

DSN = "https://pk123@o42.ingest.sentry.io/7"
# The header the C peers add: a fixed span id, the trace id varies per request where the peer can (nginx).
FIXED_SENTRY_TRACE = "0123456789abcdef0123456789abcdef-0123456789abcdef-1"

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


def _nginx_prologue(work: Path) -> str:
    """The part every nginx of the rig shares: one worker, foreground, its files under `work`."""
    return f"""worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 16384; }}
"""


@dataclass
class Rig:
    """The run's servers and their files: where each peer is configured, started and stopped."""

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
        access_log = self.opts.access_log if program == TP else None  # an older baseline may not know [log]
        if access_log is not None:
            # Every request writes a line (at INFO, whatever --log-level says); /dev/null takes them, so that the
            # run measures what the proxy spends on them, not the disk, and fills no file.
            with conf.open("a") as file:
                file.write(f'\n[log]\naccess = true\nformat = "{access_log}"\n')
        argv = [self.bins[program], "--config", str(conf), "--log-level", "warning"]
        return Server(
            tag, argv, port, cpus or self.proxy_cpu, work, listeners=workers, discard_output=access_log is not None
        )

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

    def stop_all(self) -> None:
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.stop()
        self._sync_pgids()
