"""The one way agora makes a ZeroMQ socket, so every socket gets the same safety settings.

- ``LINGER 0``: closing a socket never waits for unsent messages (no hang at exit).
- ``MAXMSGSIZE``: libzmq drops, and disconnects, a peer that sends a larger message before
  it reaches Python, so oversized input costs no memory.
- optional send and receive timeouts, so no call blocks forever.

Only construction lives here; what a socket does stays with the module that uses it.
"""

from __future__ import annotations

import zmq

from agora.protocol import MAX_MESSAGE_SIZE


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
    try:
        sock.bind(endpoint)
    except zmq.ZMQError:
        sock.close(0)
        raise
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)
