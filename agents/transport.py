"""A request socket to the broker that survives a broker that is down or restarting.

This is the ZeroMQ guide's "Lazy Pirate" client: send on a REQ socket, poll with a timeout,
and on silence close the socket (a REQ socket cannot send twice in a row), open a new one and
send the same bytes again, a bounded number of times. The broker answers an exact
retransmission with its cached reply, so a retry never acts twice.
"""

from __future__ import annotations

import zmq

from agora.errors import BrokerUnreachable, MessageTooLarge
from agora.protocol import MAX_MESSAGE_SIZE
from agora.sockets import make_socket

DEFAULT_TIMEOUT = 2.5
DEFAULT_RETRIES = 3


class BrokerConnection:
    def __init__(self, endpoint: str, context: zmq.Context | None = None,
                 timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES) -> None:
        self.endpoint = endpoint
        self.context = context or zmq.Context.instance()
        self.timeout_ms = int(timeout * 1000)
        self.retries = max(1, retries)
        self._socket: zmq.Socket | None = None

    def _connect(self) -> zmq.Socket:
        sock = make_socket(self.context, zmq.REQ, receive_timeout=self.timeout_ms / 1000)
        sock.connect(self.endpoint)
        return sock

    def request(self, frames: list[bytes]) -> list[bytes]:
        """Send ``frames`` and return the reply; BrokerUnreachable after all retries."""
        one = frames[0] if len(frames) == 1 else None  # a session request: one frame
        size = len(one) if one is not None else sum(len(f) for f in frames)
        if size > MAX_MESSAGE_SIZE:
            raise MessageTooLarge(f"message is over the {MAX_MESSAGE_SIZE // 1024} KiB limit")
        for _ in range(self.retries):
            sock = self._socket
            if sock is None:
                sock = self._socket = self._connect()
            if one is not None:
                sock.send(one)
            else:
                sock.send_multipart(frames)
            try:
                # RCVTIMEO rather than poll + recv: one system call less per request.
                return receive(sock)
            except zmq.Again:
                sock.close(0)  # the REQ state machine is stuck; start over
                self._socket = None
        raise BrokerUnreachable(
            f"broker unreachable at {self.endpoint} "
            f"(no answer in {self.timeout_ms / 1000:g}s, {self.retries} tries)")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None


def receive(sock: zmq.Socket) -> list[bytes]:
    """One whole message; each frame received uncopied for its ``more`` flag (one call into
    libzmq per frame, where ``recv_multipart`` also asks the socket for RCVMORE)."""
    frame = sock.recv(copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = sock.recv(copy=False)
        frames.append(frame.bytes)
    return frames
