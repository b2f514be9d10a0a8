"""UDP multicast sockets for auction announcements: the one socket helper in ``agora``.

Shared because the auctioneer (sender), the agents (receivers) and the benchmark must set
the very same options. Defaults keep traffic on this host: ``IP_MULTICAST_IF=127.0.0.1``
and TTL 0. Receivers bind the group address and set ``IP_MULTICAST_ALL=0`` so that a
socket gets only its own group's datagrams even when another group uses the same port.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import socket

from agora.errors import LocalError
from agora.protocol import (
    DEFAULT_MULTICAST_INTERFACE,
    DEFAULT_MULTICAST_TTL,
    MAX_DATAGRAM,
)

log = logging.getLogger("agora.multicast")

#: Linux value; Python's socket module does not export it.
IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)
_ADMIN_SCOPED = ipaddress.ip_network("239.255.0.0/16")


def check_group(group: str) -> str:
    """Only organisation-local groups (239.255.0.0/16) are allowed."""
    try:
        address = ipaddress.ip_address(group)
    except ValueError:
        raise LocalError(f"{group!r} is not an IPv4 address") from None
    if address not in _ADMIN_SCOPED:
        raise LocalError(f"multicast group {group} is outside 239.255.0.0/16")
    return group


def open_sender(interface: str = DEFAULT_MULTICAST_INTERFACE,
                ttl: int = DEFAULT_MULTICAST_TTL) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    sock.setblocking(False)
    return sock


def open_receiver(group: str, port: int,
                  interface: str = DEFAULT_MULTICAST_INTERFACE) -> socket.socket:
    """A non-blocking socket that receives ``group:port`` only; several may share a port."""
    check_group(group)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((group, port))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                    socket.inet_aton(group) + socket.inet_aton(interface))
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
    except OSError:  # not Linux: binding the group address already filters
        pass
    sock.setblocking(False)
    return sock


def send_datagram(sock: socket.socket, data: bytes, group: str, port: int) -> bool:
    """Send one datagram; False (logged) if the kernel refused it, never an exception."""
    try:
        sock.sendto(data, (group, port))
        return True
    except OSError as exc:
        log.warning("multicast send failed: %s", exc.strerror)
        return False


def recv_datagram(sock: socket.socket) -> bytes | None:
    """One datagram, or None when none is waiting or it was oversized (logged, dropped)."""
    try:
        data = sock.recv(MAX_DATAGRAM + 1)
    except (BlockingIOError, InterruptedError):
        return None
    if len(data) > MAX_DATAGRAM:
        log.warning("dropped an oversized datagram (over %d bytes)", MAX_DATAGRAM)
        return None
    return data


def free_udp_port(interface: str = DEFAULT_MULTICAST_INTERFACE) -> int:
    """A UDP port the OS says is free now (for tests and the demo; racy by nature)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((interface, 0))
        return s.getsockname()[1]


def random_group() -> str:
    """A random group in 239.255.0.0/16, so parallel runs on one host do not collide."""
    return f"239.255.{secrets.randbelow(254) + 1}.{secrets.randbelow(254) + 1}"
