"""`BodyPipe.relay` on real socket pairs: what it takes from the origin's socket, what reaches the client's, and
what it hands back when the client's socket is full."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator

import pytest

from proxy.server.splice import AVAILABLE, MIN_BODY_PIPE_BYTES, BodyPipe

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="splice(2) is Linux only")


@pytest.fixture
def pipe() -> Iterator[BodyPipe]:
    opened = BodyPipe.open()
    assert opened is not None
    yield opened
    opened.close()


def pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on 127.0.0.1 (splice(2) needs real sockets), both non-blocking."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname())
        b, _ = server.accept()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def read_available(sock: socket.socket, count: int) -> bytes:
    """Exactly `count` bytes from `sock` (they were all sent before: the loop only waits for loopback delivery)."""
    sock.setblocking(True)
    sock.settimeout(5)
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "connection closed early"
        data += chunk
    sock.setblocking(False)
    return bytes(data)


def send_all(sock: socket.socket, data: bytes) -> None:
    sock.setblocking(True)
    sock.sendall(data)
    sock.setblocking(False)


def relay_all(pipe: BodyPipe, src: socket.socket, dst: socket.socket, count: int, prefix: bytes) -> None:
    """Relay until `count` bytes were taken (loopback, or a small pipe, may hand them over in several pieces), each
    call handing back nothing (the client's socket has room)."""
    taken, left = pipe.relay(src.fileno(), dst.fileno(), count, prefix)
    for _ in range(1000):
        assert left == b""
        if taken == count:
            return
        moved, left = pipe.relay(src.fileno(), dst.fileno(), count - taken, b"")
        taken += moved
    raise AssertionError(f"took {taken} of {count} bytes")


def test_moves_the_prefix_then_at_most_count_bytes(pipe: BodyPipe) -> None:
    """Bytes past `count` (the next response, or garbage) stay in the origin's socket."""
    origin_out, origin_in = pair()
    client_in, client_out = pair()
    body = os.urandom(100_000)
    send_all(origin_out, body + b"NEXT")
    relay_all(pipe, origin_in, client_in, len(body), b"HEAD")
    assert read_available(client_out, 4 + len(body)) == b"HEAD" + body
    assert read_available(origin_in, 4) == b"NEXT"
    for sock in (origin_out, origin_in, client_in, client_out):
        sock.close()


def test_nothing_to_take_still_sends_the_prefix(pipe: BodyPipe) -> None:
    origin_out, origin_in = pair()
    client_in, client_out = pair()
    assert pipe.relay(origin_in.fileno(), client_in.fileno(), 1000, b"first bytes") == (0, b"")
    assert read_available(client_out, 11) == b"first bytes"
    for sock in (origin_out, origin_in, client_in, client_out):
        sock.close()


def test_origin_closed_before_the_body_ended(pipe: BodyPipe) -> None:
    origin_out, origin_in = pair()
    client_in, client_out = pair()
    origin_out.close()
    with pytest.raises(EOFError):
        pipe.relay(origin_in.fileno(), client_in.fileno(), 1000, b"")
    for sock in (origin_in, client_in, client_out):
        sock.close()


def test_origin_failing_still_lets_the_prefix_through(pipe: BodyPipe) -> None:
    """The head and the body's start, sent ahead, reach the client even when the origin ended or failed right
    after them: the client sees the response begin and break off (as on the copy relay), not nothing at all."""
    origin_out, origin_in = pair()
    client_in, client_out = pair()
    origin_out.close()
    with pytest.raises(EOFError):
        pipe.relay(origin_in.fileno(), client_in.fileno(), 1000, b"HTTP/1.1 200 OK\r\n\r\nstart")
    assert read_available(client_out, 24) == b"HTTP/1.1 200 OK\r\n\r\nstart"
    for sock in (origin_in, client_in, client_out):
        sock.close()


def test_full_client_socket_hands_back_what_it_could_not_take(pipe: BodyPipe) -> None:
    """A client that does not read: what its socket could not take comes back, in order, for the transport to
    write; nothing is lost or repeated."""
    origin_out, origin_in = pair()
    client_in, client_out = pair()
    client_in.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client_out.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = os.urandom(2_000_000)
    sender = origin_out.dup()
    sender.setblocking(True)
    received = bytearray()
    sent = 0
    taken = 0
    handed_back = b""
    for _ in range(10_000):
        if handed_back:
            break
        # Keep the origin's socket supplied until the client's is full.
        if sent < len(body):
            sent += sender.send(body[sent : sent + 65536])
        moved, handed_back = pipe.relay(origin_in.fileno(), client_in.fileno(), len(body) - taken, b"")
        taken += moved
        assert taken < len(body), "a client that never reads took 2 MB"
    delivered = taken - len(handed_back)
    received += read_available(client_out, delivered)
    assert bytes(received) + handed_back == body[:taken]
    for sock in (sender, origin_out, origin_in, client_in, client_out):
        sock.close()


def shrunk_pipe(claimed: int) -> BodyPipe:
    """A BodyPipe over a pipe of one page (what a process past its pipe quota gets), claiming `claimed` bytes."""
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    assert fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ) == 4096
    return BodyPipe((read_end, write_end), claimed)


@pytest.mark.parametrize("claimed", [4096, 65536], ids=["known-small", "smaller-than-claimed"])
def test_a_prefix_larger_than_the_pipe_comes_back_whole_and_nothing_is_taken(claimed: int) -> None:
    """A 16 KiB prefix and a one-page pipe (whether the pipe's size is known or not): the prefix comes back for the
    transport to write, the body stays in the origin's socket, and the pipe is left empty."""
    small = shrunk_pipe(claimed)
    origin_out, origin_in = pair()
    client_in, client_out = pair()
    prefix = os.urandom(16 * 1024)
    body = os.urandom(50_000)
    send_all(origin_out, body)
    assert small.relay(origin_in.fileno(), client_in.fileno(), len(body), prefix) == (0, prefix)
    assert read_available(origin_in, len(body)) == body
    assert small.relay(origin_in.fileno(), client_in.fileno(), 0, b"after") == (0, b"")
    assert read_available(client_out, 5) == b"after"  # nothing of the first prefix was left in the pipe
    small.close()
    for sock in (origin_out, origin_in, client_in, client_out):
        sock.close()


def test_a_pipe_smaller_than_claimed_moves_what_fits_and_loses_nothing() -> None:
    small = shrunk_pipe(65536)
    origin_out, origin_in = pair()
    client_in, client_out = pair()
    body = os.urandom(50_000)
    send_all(origin_out, body)
    relay_all(small, origin_in, client_in, len(body), b"HEAD")  # a page or less at a time
    assert read_available(client_out, 4 + len(body)) == b"HEAD" + body
    small.close()
    for sock in (origin_out, origin_in, client_in, client_out):
        sock.close()


def test_open_reports_what_the_pipe_holds(pipe: BodyPipe) -> None:
    assert pipe.capacity >= MIN_BODY_PIPE_BYTES
