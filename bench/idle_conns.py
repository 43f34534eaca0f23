"""Hold many idle keep-alive client connections open through a forward proxy.

Opens ``--count`` connections to the proxy; each sends one absolute-form GET, as a proxy client does, reads the
whole response and then stays open and idle. Once every connection has done its request it prints one JSON line
``{"event": "ready", "open": N, "failed": M, "errors": {...}}`` and waits until a line arrives on stdin (or stdin
closes, or ``--hold`` seconds pass). Then it prints ``{"event": "done", "still_open": K}``, K being the connections
the proxy had not closed meanwhile, closes them all and exits 0.

bench.py reads the proxy's RSS between the two lines. By hand:

    python bench/idle_conns.py --proxy 127.0.0.1:3128 --url http://127.0.0.1:8080/1k --count 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
from collections import Counter
from urllib.parse import urlsplit

_HEAD_LIMIT = 65536


class Conn:
    """One client connection through the proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer


async def _read_response(reader: asyncio.StreamReader) -> bool:
    """Read one response; return whether the connection may stay open (False: the proxy closes it)."""
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > _HEAD_LIMIT:
        raise ValueError("response head too large")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[1].startswith("2"):
        raise ValueError(f"status {lines[0]!r}")
    length: int | None = None
    close = lines[0].startswith("HTTP/1.0")
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name in ("connection", "proxy-connection"):
            if "close" in value:
                close = True
            elif "keep-alive" in value:
                close = False
        elif name == "transfer-encoding" and "chunked" in value:
            raise ValueError("chunked response: the benchmark's origin serves fixed-length files")
    if length is None:
        await reader.read()  # delimited by the close
        return False
    await reader.readexactly(length)
    return not close


async def _one(host: str, port: int, request: bytes, timeout: float) -> Conn:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(request)
        await asyncio.wait_for(_read_response(reader), timeout)
    except BaseException:
        writer.close()
        raise
    return Conn(reader, writer)


async def _wait_stdin(hold: float) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reader.readline(), hold)


async def run(proxy: str, url: str, count: int, parallel: int, timeout: float, hold: float) -> int:
    proxy_host, _, proxy_port = proxy.rpartition(":")
    target = urlsplit(url)
    request = f"GET {url} HTTP/1.1\r\nHost: {target.netloc}\r\nUser-Agent: idle-conns\r\nAccept: */*\r\n\r\n".encode()
    gate = asyncio.Semaphore(parallel)

    async def limited() -> Conn:
        async with gate:
            return await _one(proxy_host, int(proxy_port), request, timeout)

    results = await asyncio.gather(*(limited() for _ in range(count)), return_exceptions=True)
    conns = [r for r in results if isinstance(r, Conn)]
    errors = Counter(type(r).__name__ + (f": {r}" if str(r) else "") for r in results if isinstance(r, BaseException))
    print(
        json.dumps({"event": "ready", "open": len(conns), "failed": count - len(conns), "errors": dict(errors)}),
        flush=True,
    )
    await _wait_stdin(hold)
    await asyncio.sleep(0.05)  # let EOFs that already arrived be seen
    still_open = sum(1 for c in conns if not c.reader.at_eof() and not c.writer.is_closing())
    print(json.dumps({"event": "done", "still_open": still_open}), flush=True)
    for c in conns:
        c.writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*(c.writer.wait_closed() for c in conns), return_exceptions=True), 5)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--proxy", required=True, help="HOST:PORT of the forward proxy")
    parser.add_argument("--url", required=True, help="absolute http:// URL each connection requests once")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=100, help="connections being opened at once")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds for one connect + request")
    parser.add_argument("--hold", type=float, default=60.0, help="longest time to stay idle waiting for stdin")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard))
    return asyncio.run(run(args.proxy, args.url, args.count, args.parallel, args.timeout, args.hold))


if __name__ == "__main__":
    sys.exit(main())
