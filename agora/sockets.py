"""The one way agora makes a ZeroMQ socket, so every socket gets the same safety settings.

- ``LINGER 0``: closing a socket never waits for unsent messages (no hang at exit).
- ``MAXMSGSIZE``: libzmq drops, and disconnects, a peer that sends a larger *frame* before
  it reaches Python. It bounds each frame, not the message: a message of a thousand 256 KiB
  frames passes it. :func:`recv_bounded` (and :func:`recv_rest`) is the one way our receive
  loops take a message: at most MAX_MESSAGE_FRAMES frames and MAX_MESSAGE_SIZE bytes in all,
  checked frame by frame before any work; the rest of a larger message is discarded
  uncopied and the message is dropped (``None``).
- optional send and receive timeouts, so no call blocks forever.

- :class:`ConnectionGuard`: a bound socket's connections, watched through a socket monitor:
  the live count is bounded (a connection past ``max_connections`` is shut at once, as a full
  listen backlog would), and the memory libzmq frees when connections close (about 27 KiB
  each: pipes, codec buffers) or when an oversized message is dropped is given back to the
  operating system, so it cannot pile up round after round.

Only construction and these receive-side bounds live here; what a socket does stays with the
module that uses it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import socket
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from agora.protocol import MAX_CONNECTIONS, MAX_MESSAGE_FRAMES, MAX_MESSAGE_SIZE

log = logging.getLogger("agora.sockets")

#: How long bind_router waits for a port that a just-closed socket still holds.
BIND_RETRY = 2.0
#: Freed memory is given back at most this often (malloc_trim walks the whole heap).
TRIM_INTERVAL = 2.0


def make_socket(context: zmq.Context, kind: int, *, max_size: int = MAX_MESSAGE_SIZE,
                send_timeout: float | None = None,
                receive_timeout: float | None = None) -> zmq.Socket:
    """A socket of ``kind`` (zmq.REQ, zmq.ROUTER...); timeouts in seconds."""
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_size)
    if send_timeout is not None:
        sock.setsockopt(zmq.SNDTIMEO, int(send_timeout * 1000))
    if receive_timeout is not None:
        sock.setsockopt(zmq.RCVTIMEO, int(receive_timeout * 1000))
    return sock


def bind_router(context: zmq.Context, endpoint: str,
                send_timeout: float = 1.0) -> tuple[zmq.Socket, str]:
    """A bound ROUTER (a service's front door) and the endpoint it really got."""
    sock = make_socket(context, zmq.ROUTER, send_timeout=send_timeout)
    # A just-stopped process (or socket) on the same port lets it go a moment after it
    # closed (libzmq closes asynchronously): a restart waits that moment, bounded.
    deadline = time.monotonic() + BIND_RETRY
    while True:
        try:
            sock.bind(endpoint)
            break
        except zmq.ZMQError as exc:
            if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                sock.close(0)
                raise
            time.sleep(0.05)
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def recv_rest(sock: zmq.Socket, *, frames: int = 1, size: int = 0,
              max_frames: int = MAX_MESSAGE_FRAMES, max_size: int = MAX_MESSAGE_SIZE,
              guard: ConnectionGuard | None = None,
              origin: zmq.Frame | None = None) -> list[bytes] | None:
    """The remaining frames of a message whose first ``frames`` (``size`` bytes) were read.

    ``None`` if the whole message is over either bound: its other frames are then read
    without being copied into Python and thrown away, so an oversized message costs no more
    than one frame of our memory; with a ``guard``, the connection it came from is shut (as
    libzmq does for a frame over ZMQ_MAXMSGSIZE), which drops whatever else it queued.
    ``origin`` is the last frame read, received uncopied: it knows its connection, and
    whether more frames follow (without it, the socket is asked).

    Each frame is received uncopied and its ``more`` flag read from it: one call into libzmq
    per frame, where asking the socket (``RCVMORE``) would be a second one.
    """
    rest: list[bytes] = []
    more = origin.more if origin is not None else sock.getsockopt(zmq.RCVMORE)
    last = origin
    while more:
        if frames >= max_frames or size > max_size:
            _discard(sock)
            break
        last = sock.recv(copy=False)
        more = last.more
        data = last.bytes
        rest.append(data)
        frames += 1
        size += len(data)
    else:
        if size <= max_size:
            return rest
    if guard is not None:
        guard.oversized(_source_fd(last))
    return None


def recv_routed(sock: zmq.Socket, flags: int = 0, *, max_frames: int = MAX_MESSAGE_FRAMES,
                max_size: int = MAX_MESSAGE_SIZE, guard: ConnectionGuard | None = None,
                ) -> tuple[bytes, list[bytes] | None, zmq.Frame]:
    """One message from a ROUTER: ``(identity, other frames, last frame)``.

    A ROUTER puts the sender's identity first, and never alone (every message has a frame
    of its own after it), so the identity is received copied and the rest by
    :func:`recv_rest` (``None`` if over the bounds: dropped, its connection shut). The last
    frame is the one received uncopied, for the message's metadata (``Peer-Address``).
    Raises ``zmq.Again`` as ``recv`` does when ``NOBLOCK`` finds nothing.
    """
    identity = sock.recv(flags)
    last = sock.recv(copy=False)
    data = last.bytes
    rest = recv_rest(sock, frames=2, size=len(data), max_frames=max_frames,
                     max_size=max_size, guard=guard, origin=last)
    return identity, None if rest is None else [data, *rest], last


def recv_bounded(sock: zmq.Socket, flags: int = 0, *, max_frames: int = MAX_MESSAGE_FRAMES,
                 max_size: int = MAX_MESSAGE_SIZE,
                 guard: ConnectionGuard | None = None) -> list[bytes] | None:
    """Like ``recv_multipart(flags)``, but ``None`` for a message over the bounds (dropped).

    Raises ``zmq.Again`` as ``recv_multipart`` does when ``NOBLOCK`` finds nothing.
    """
    first = sock.recv(flags, copy=False)  # uncopied: it knows the connection it came on
    rest = recv_rest(sock, size=len(first), max_frames=max_frames, max_size=max_size,
                     guard=guard, origin=first)
    return None if rest is None else [first.bytes, *rest]


def _discard(sock: zmq.Socket) -> None:
    """Throw away the rest of a message, uncopied."""
    while sock.recv(copy=False).more:
        pass


def _source_fd(frame: zmq.Frame | None) -> int | None:
    """The descriptor of the connection ``frame`` came on (libzmq's ZMQ_SRCFD), if known."""
    if frame is None:
        return None
    try:
        return frame.get(zmq.SRCFD)
    except (zmq.ZMQError, AttributeError):
        return None


def _load_trim():  # glibc's malloc_trim, or None (other C libraries return memory anyway)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _load_trim()


def release_freed_memory() -> None:
    """Give memory that C code (libzmq) freed back to the OS (glibc keeps it otherwise)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


class ConnectionGuard:
    """Bounds the connections of one bound socket and returns their memory when they go.

    Call :meth:`service` from the owner's loop (its timer tick); it reads the socket
    monitor's events without blocking. Not thread-safe: the thread that owns ``sock``.
    """

    EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED

    def __init__(self, sock: zmq.Socket, max_connections: int = MAX_CONNECTIONS) -> None:
        self.max_connections = max_connections
        self.live = 0
        self.refused = 0
        self.shut_oversized = 0
        self.trims = 0
        self._socket = sock
        self._monitor = sock.get_monitor_socket(self.EVENTS)
        self._freed = False
        self._last_trim = 0.0

    def oversized(self, fd: int | None) -> None:
        """The connection on ``fd`` sent a message over the bound: shut it, free memory."""
        self._freed = True
        self.shut_oversized += 1
        if fd is not None and fd >= 0:
            _shutdown(fd)

    def service(self, now: float) -> None:
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            if event["event"] == zmq.EVENT_ACCEPTED:
                self.live += 1
                if self.live > self.max_connections:
                    self._shut(event["value"])
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self.live = max(0, self.live - 1)
                self._freed = True
        if self._freed and now - self._last_trim >= TRIM_INTERVAL:
            self._freed, self._last_trim = False, now
            self.trims += 1
            release_freed_memory()

    def _shut(self, fd: int) -> None:
        # The connection was accepted a moment ago; shutting its TCP socket makes libzmq
        # see it end (EVENT_DISCONNECTED follows) and free everything it held for it.
        self.refused += 1
        if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
            log.warning("more than %d connections: refused %d so far", self.max_connections,
                        self.refused)
        _shutdown(fd)

    def close(self) -> None:
        """Stop watching; call it before closing the socket (so its port is let go)."""
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(0)


def _shutdown(fd: int) -> None:
    """Shut a TCP connection libzmq owns: libzmq sees it end and frees all it held for it.

    Only the connection is shut (``shutdown``, on a duplicate descriptor), never libzmq's
    descriptor closed, so libzmq's own bookkeeping stays right.
    """
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return  # already gone
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()
