"""trace-proxy's own cost per request, without sockets: one GET and its 1 KiB response through the client and origin
protocols, with stand-in transports, as the benchmark's wrk and nginx origin exchange them.

The load benchmark (bench.py) measures the whole proxy, kernel included, on a machine whose speed drifts; this
measures only trace-proxy's code and the libraries it calls, and with ``--instructions`` it counts instructions
(callgrind), which repeat to the last digit whatever else the machine is doing. Use it to judge a change to the hot
path before a full benchmark run:

    bench/.venv/bin/python bench/pipeline.py 200000          # µs per request (noisy)
    bench/.venv/bin/python bench/pipeline.py --instructions  # instructions per request (needs valgrind)

Run it with the interpreter and build to judge (bench/.venv holds the compiled build ``bench/run.sh`` installed);
``PYTHONPATH=.`` measures the sources of this checkout, interpreted.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REQUEST = b"GET http://127.0.0.1:8080/1k HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
# The head nginx sends for a 1 KiB file (only its Date changes, once a second).
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 15:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b"Last-Modified: Wed, 02 Dec 2026 14:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6746e0a0-400"\r\nAccept-Ranges: bytes\r\n\r\n' + b"a" * 1024
)
WARM_UP = 2000


class Transport:
    """What the protocols use of a uvloop transport; every write is taken whole, as a socket with room takes it."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default  # a client forward.allow_clients admits

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        raise AssertionError("the pipeline closed a connection: the exchange went wrong")

    abort = close


def run(count: int) -> float:
    """Seconds per exchange over `count` exchanges, after a warm-up."""
    import uvloop

    from proxy.app import build_propagator
    from proxy.config import SentrySettings, Settings
    from proxy.server.downstream import DownstreamConnection
    from proxy.server.http1 import RequestPolicy
    from proxy.server.listener import Listener
    from proxy.server.routing import ForwardRouter
    from proxy.server.services import ConnectionServices
    from proxy.server.upstream import UpstreamConnection

    loop = uvloop.new_event_loop()
    # As bench.py runs trace-proxy: a DSN and rate 1.0, so every request starts a trace with a full DSC.
    sentry = SentrySettings(dsn="https://pk123@o42.ingest.sentry.io/7", traces_sample_rate=1.0)
    policy = RequestPolicy.create(build_propagator(Settings(sentry=sentry), {}), ())
    services = ConnectionServices(loop, connect_timeout=5.0, idle_timeout=3600.0)
    router = ForwardRouter(policy, services.plan_cache)
    server = Listener(services, router, name="forward", host="127.0.0.1", port=3128, idle_timeout=3600.0)
    client_side, origin_side = Transport(), Transport()
    client = DownstreamConnection(services, router, server)
    client.connection_made(client_side)  # type: ignore[arg-type]
    origin = UpstreamConnection(server.pool, ("127.0.0.1", 8080))
    origin.connection_made(origin_side)  # type: ignore[arg-type]
    server.pool.release(origin)  # an idle pooled connection, as after the first request

    def exchange() -> None:
        client.data_received(REQUEST)
        # As uvloop reads into a BufferedProtocol: the buffer the connection hands out, then how much was read.
        buffer = origin.get_buffer(-1)
        buffer[: len(RESPONSE)] = RESPONSE
        origin.buffer_updated(len(RESPONSE))

    for _ in range(WARM_UP):
        exchange()
    started = time.perf_counter()
    for _ in range(count):
        exchange()
    elapsed = time.perf_counter() - started
    if server.stats.requests != WARM_UP + count or client_side.written != (WARM_UP + count) * len(RESPONSE):
        raise AssertionError(f"{server.stats.requests} exchanges completed, {client_side.written} bytes relayed")
    loop.close()
    return elapsed / count


def instructions() -> int:
    """Instructions per exchange: two runs under callgrind, 5,000 and 15,000 exchanges, subtracted (start-up,
    imports and warm-up cancel out)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("pipeline.py: --instructions needs valgrind (Debian package valgrind)")
    totals = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in (5000, 15000):
            out = Path(tmp) / f"callgrind.{count}"
            argv = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__, str(count)]
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            found = re.search(r"Collected : (\d+)", done.stderr)
            if done.returncode != 0 or found is None:
                raise SystemExit(f"pipeline.py: callgrind run failed:\n{done.stderr[-2000:]}")
            totals.append(int(found.group(1)))
    return round((totals[1] - totals[0]) / 10000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("count", nargs="?", type=int, default=200000, help="exchanges to time (default 200000)")
    parser.add_argument("--instructions", action="store_true", help="count instructions per exchange (callgrind)")
    args = parser.parse_args()
    import proxy.server.http1

    build = "compiled" if not proxy.server.http1.__file__.endswith(".py") else "interpreted"
    if args.instructions:
        print(f"{instructions()} instructions per request ({build}, Python {sys.version.split()[0]})")
    else:
        print(f"{run(args.count) * 1e6:.2f} µs per request ({build}, Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
