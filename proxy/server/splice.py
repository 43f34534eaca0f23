"""Bytes relayed inside the kernel with splice(2), on Linux: CONNECT tunnels, and the bodies of responses.

A tunnel carries bytes the proxy never looks at (TLS, mostly). Relayed through the transports, each byte is copied
out of the kernel, into a Python bytes object and back into the kernel: at bulk rates those copies are most of the
proxy's CPU, and they hold the tunnel below what the two ends could do directly. splice(2) moves the bytes from one
socket through a pipe into the other as page references, so a tunnel costs two system calls per pipe-full and no
copies.

The sockets stay owned by their asyncio transports, which keep their protocols' bookkeeping (connection_lost, the
drain on shutdown): reading is paused on both, so the loop never reads them, and the relay works on duplicates of
their descriptors (the event loop refuses a reader on a descriptor that a transport owns). When the relay ends it
closes its duplicates first, then the transports.

Where splice(2) is missing, or a pipe or descriptor cannot be had, `SpliceTunnel.start` returns None and the tunnel
stays on the transports.

A response body with a Content-Length is the same situation for the bytes after its head: the proxy only needs to
count them. `BodyPipe.relay` moves what the origin's socket holds of such a body to the client's socket through one
pipe, inside the callback in which the origin's socket was found readable, and leaves the pipe empty when it returns:
so one pipe serves every connection of the process, the sockets' own descriptors can be used (nothing waits on them
but their transports), and no descriptor is duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sys

log = logging.getLogger(__name__)

# Each direction's pipe holds this much in flight (the kernel's default is 64 KiB; a bigger pipe means fewer system
# calls per byte). Pipe memory is only used while bytes are in it; a refused size keeps the default.
_PIPE_BYTES = 256 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
# The least a body pipe must hold: what `relay` is given to send ahead of the spliced bytes fits into it. Past the
# user's pipe quota (/proc/sys/fs/pipe-user-pages-soft: about 128 spliced tunnels) new pipes hold only two pages.
MIN_BODY_PIPE_BYTES = 64 * 1024

if sys.platform == "linux":
    AVAILABLE = hasattr(os, "splice")
    _FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK

    def _splice(src: int, dst: int, count: int) -> int:
        return os.splice(src, dst, count, flags=_FLAGS)

else:  # pragma: no cover - the relay is Linux only
    AVAILABLE = False

    def _splice(src: int, dst: int, count: int) -> int:
        raise OSError("splice(2) is Linux only")


def socket_fd(transport: asyncio.BaseTransport) -> int:
    """The descriptor of `transport`'s socket, or -1 when it has none. The number is only valid while the transport
    is not closing: once it is, the descriptor may be closed, and its number reused."""
    sock = transport.get_extra_info("socket")
    return -1 if sock is None else int(sock.fileno())


class _Direction:
    """One way through the tunnel: bytes read from `src` wait in the pipe until `dst` takes them."""

    __slots__ = ("blocked", "dst", "dst_transport", "eof", "moved", "pending", "pipe_r", "pipe_w", "side", "src")

    def __init__(
        self, src: int, dst: int, dst_transport: asyncio.Transport, pipe: tuple[int, int], moved: list[int], side: int
    ) -> None:
        self.src = src
        self.moved = moved  # the process's tunnel byte counters; `side` is this direction's index in it
        self.side = side
        self.dst = dst
        self.dst_transport = dst_transport
        self.pipe_r, self.pipe_w = pipe
        self.pending = 0  # bytes in the pipe
        self.eof = False  # src sent FIN
        self.blocked = False  # dst's socket buffer is full: waiting for it to take more, src not read meanwhile


class SpliceTunnel:
    """Relays an established tunnel between two transports' sockets until both sides have finished."""

    __slots__ = ("_closed", "_down", "_fds", "_loop", "_transports", "_up")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transports: tuple[asyncio.Transport, asyncio.Transport],
        fds: list[int],
        moved: list[int],
    ) -> None:
        self._loop = loop
        self._transports = transports
        self._fds = fds  # every descriptor this relay opened: two socket duplicates, then two pipes
        self._closed = False
        client_fd, origin_fd = fds[0], fds[1]
        self._up = _Direction(client_fd, origin_fd, transports[1], (fds[2], fds[3]), moved, 0)
        self._down = _Direction(origin_fd, client_fd, transports[0], (fds[4], fds[5]), moved, 1)

    @classmethod
    def start(
        cls, loop: asyncio.AbstractEventLoop, client: asyncio.Transport, origin: asyncio.Transport, moved: list[int]
    ) -> SpliceTunnel | None:
        """Take over relaying between `client` and `origin`, or None when this tunnel cannot be spliced. The bytes
        taken from each side are added to `moved` ([to the origin, to the client]).

        Both transports must have nothing left to write (the relay's bytes must not overtake theirs) and no end
        may have half-closed yet; the caller checks the latter, which only it knows.
        """
        if not AVAILABLE or client.get_write_buffer_size() or origin.get_write_buffer_size():
            return None
        client_fd = socket_fd(client)
        origin_fd = socket_fd(origin)
        if client_fd < 0 or origin_fd < 0:
            return None
        fds: list[int] = []
        try:
            fds.append(os.dup(client_fd))
            fds.append(os.dup(origin_fd))
            for _ in range(2):
                read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                fds += (read_end, write_end)
                with contextlib.suppress(OSError):
                    fcntl.fcntl(write_end, _F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError:  # out of descriptors, a closed socket: the transports relay this tunnel instead
            for fd in fds:
                os.close(fd)
            return None
        tunnel = cls(loop, (client, origin), fds, moved)
        client.pause_reading()
        origin.pause_reading()
        loop.add_reader(tunnel._up.src, tunnel._readable, tunnel._up)
        loop.add_reader(tunnel._down.src, tunnel._readable, tunnel._down)
        return tunnel

    # -- relaying -------------------------------------------------------------------------------------------------

    def _readable(self, way: _Direction) -> None:
        try:
            self._read(way)
        except Exception:
            log.exception("internal error relaying a spliced tunnel: both ends are cut")
            self._end(abort=True)

    def _read(self, way: _Direction) -> None:
        if self._closed:
            return
        try:
            moved = _splice(way.src, way.pipe_w, _PIPE_BYTES)
        except BlockingIOError:
            return  # woken for nothing
        except OSError:
            self._end(abort=True)  # reset by the peer, and the like: both ends go, as with the transports
            return
        if moved == 0:
            way.eof = True
            self._loop.remove_reader(way.src)
            self._finish(way)
            return
        way.pending += moved
        way.moved[way.side] += moved
        self._flush(way)

    def _writable(self, way: _Direction) -> None:
        try:
            if not self._closed:
                self._flush(way)
        except Exception:
            log.exception("internal error relaying a spliced tunnel: both ends are cut")
            self._end(abort=True)

    def _flush(self, way: _Direction) -> None:
        while way.pending:
            try:
                moved = _splice(way.pipe_r, way.dst, way.pending)
            except BlockingIOError:
                if not way.blocked:
                    # Back-pressure: stop reading the sender until the receiver's socket takes what is in the pipe.
                    way.blocked = True
                    self._loop.remove_reader(way.src)
                    self._loop.add_writer(way.dst, self._writable, way)
                return
            except OSError:
                self._end(abort=True)
                return
            way.pending -= moved
        if way.blocked:
            way.blocked = False
            self._loop.remove_writer(way.dst)
            if not way.eof:
                self._loop.add_reader(way.src, self._readable, way)
        if way.eof:
            self._finish(way)

    def _finish(self, way: _Direction) -> None:
        """`way`'s sender has finished and its pipe is empty (the sender is only read while it is): pass the
        half-close on; end when both have."""
        transport = way.dst_transport
        if transport.can_write_eof() and not transport.is_closing():
            transport.write_eof()
        if self._up.eof and self._down.eof and not self._up.pending and not self._down.pending:
            self._end(abort=False)

    # -- ending ---------------------------------------------------------------------------------------------------

    def _end(self, *, abort: bool) -> None:
        self.close()
        for transport in self._transports:
            if abort:
                transport.abort()
            else:
                transport.close()

    def close(self) -> None:
        """Stop relaying and release the relay's descriptors (the transports are their owners' to close)."""
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        for way in (self._up, self._down):
            loop.remove_reader(way.src)
            if way.blocked:
                loop.remove_writer(way.dst)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)


class BodyPipe:
    """The one pipe through which a process splices response bodies (see the module's docstring)."""

    __slots__ = ("_r", "_w", "capacity")

    def __init__(self, pipe: tuple[int, int], capacity: int) -> None:
        self._r, self._w = pipe
        self.capacity = capacity  # bytes the pipe holds, as the kernel reported it

    @classmethod
    def open(cls) -> BodyPipe | None:
        """A new pipe, or None where splice(2) is missing, no descriptor is left, or the pipe the kernel gives holds
        less than MIN_BODY_PIPE_BYTES (bodies are then copied, as without splice)."""
        if not AVAILABLE:
            return None
        try:
            pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe[1], _F_SETPIPE_SZ, _PIPE_BYTES)
        try:
            capacity = fcntl.fcntl(pipe[1], _F_GETPIPE_SZ)
        except OSError:
            capacity = 0
        if capacity < MIN_BODY_PIPE_BYTES:
            for fd in pipe:
                os.close(fd)
            return None
        return cls(pipe, capacity)

    def relay(self, src: int, dst: int, count: int, prefix: bytes) -> tuple[int, bytes]:
        """Send `prefix`, then move up to `count` bytes that `src` already holds to `dst`, without waiting for
        either: the prefix and the first pipe-full go out in one send.

        Returns how many bytes were taken from `src`, and the last bytes that `dst` could not take at once (its
        socket buffer is full): the caller writes those through dst's transport, which waits for it. A prefix the
        empty pipe cannot hold whole is handed back at once, with nothing taken. Raises OSError when either end
        failed, EOFError when `src` ended first; the pipe may then hold bytes, and must be closed.
        """
        pending = 0
        if prefix:
            pending = os.write(self._w, prefix) if len(prefix) <= self.capacity else 0
            if pending < len(prefix):  # a pipe smaller than it said: take nothing back from it but the prefix
                if pending:
                    self._read(pending)
                return 0, prefix
        capacity = self.capacity
        taken = 0
        while taken < count:
            want = min(count - taken, capacity - pending)
            try:
                moved = _splice(src, self._w, want)
            except BlockingIOError:
                break  # nothing more has arrived yet
            except OSError:
                self._salvage(dst, pending)
                raise
            if moved == 0:
                self._salvage(dst, pending)
                raise EOFError
            taken += moved
            left = self._drain(dst, pending + moved)
            if left:
                return taken, left
            pending = 0
            if moved < want:
                break  # src had less than asked: a further call would most likely find it empty
        if pending:
            return taken, self._drain(dst, pending)
        return taken, b""

    def _salvage(self, dst: int, count: int) -> None:
        """The origin failed: the prefix still in the pipe goes to `dst` as far as it takes it at once, so the client
        sees the response begin and then cut off, as when the same bytes were copied before the failure."""
        with contextlib.suppress(OSError):
            while count:
                count -= _splice(self._r, dst, count)

    def _drain(self, dst: int, count: int) -> bytes:
        """Splice the pipe's `count` bytes to `dst`; what dst cannot take now is read back and returned."""
        while count:
            try:
                count -= _splice(self._r, dst, count)
            except BlockingIOError:
                return self._read(count)
        return b""

    def _read(self, count: int) -> bytes:
        chunks = []
        while count:
            chunk = os.read(self._r, count)
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)
