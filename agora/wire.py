"""Frame codecs for the client <-> broker protocol (see docs/PROTOCOL.md, section 3).

Plain functions, no sockets. A request is::

    Frame 0: "AGORA01C"          protocol signature
    Frame 1: command             one byte, agora.protocol.Command
    Frames 2+: command body

and a reply is ``[signature, command, status, body...]``. An ERROR body is a JSON object
``{"code": ..., "message": ...}``.

Inside a SESSION the body is one frame, ``SecretBox(session_key)`` of::

    counter (8 bytes, big endian) | op (1 byte) | JSON body        request
    counter (8 bytes, big endian) | status (1 byte) | JSON body    reply

The counter binds each request to its session and its place in it: the broker refuses a
counter it has seen, and the client refuses a reply whose counter is not its request's.

Worker messages (docs/PROTOCOL.md, section 4) are ``[WORKER_PROTOCOL, session id, sealed]``
from a worker and ``[WORKER_PROTOCOL, status, sealed-or-error]`` from the broker, where
sealed is ``SecretBox(session_key)`` of::

    counter (8 bytes, big endian) | direction (1 byte) | command (1 byte) | JSON body
"""

from __future__ import annotations

import json
import struct
from typing import Any

from agora.crypto import open_sealed, seal
from agora.errors import ProtocolError, RemoteError
from agora.protocol import (
    CLIENT_PROTOCOL,
    WORKER_PROTOCOL,
    Command,
    Direction,
    ErrorCode,
    SessionOp,
    Status,
    WorkerCommand,
)

_HEADER = struct.Struct(">QB")
_WORKER_HEADER = struct.Struct(">Qcc")


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")


def decode_json(data: bytes) -> dict[str, Any]:
    """Parse a JSON object from the wire; anything else is a ProtocolError."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProtocolError("body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("body must be a JSON object")
    return obj


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """Fetch a required field of a given type from a decoded body."""
    value = body.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"field {name!r} missing or of the wrong type")
    return value


# -- outer frames -------------------------------------------------------------------------

def request_frames(command: Command, *body: bytes) -> list[bytes]:
    return [CLIENT_PROTOCOL, command.value, *body]


def parse_request(frames: list[bytes]) -> tuple[Command, list[bytes]]:
    """Split a client request (without routing envelope) into command and body frames."""
    if len(frames) < 2 or frames[0] != CLIENT_PROTOCOL:
        raise ProtocolError("not an agora client message")
    try:
        command = Command(frames[1])
    except ValueError:
        raise ProtocolError("unknown command") from None
    return command, frames[2:]


def ok_reply(command: Command, *body: bytes) -> list[bytes]:
    return [CLIENT_PROTOCOL, command.value, Status.OK.value, *body]


def error_reply(command: Command | None, code: ErrorCode, message: str) -> list[bytes]:
    cmd = command.value if command is not None else b"\x00"
    return [CLIENT_PROTOCOL, cmd, Status.ERROR.value,
            encode_json({"code": code.value, "message": message})]


def parse_reply(frames: list[bytes], command: Command) -> list[bytes]:
    """Body frames of an OK reply to ``command``; raise RemoteError for an ERROR reply."""
    if len(frames) < 3 or frames[0] != CLIENT_PROTOCOL:
        raise ProtocolError("broker reply is not an agora message")
    if frames[2] == Status.ERROR.value:
        raise remote_error(frames[3] if len(frames) > 3 else b"{}")
    if frames[1] != command.value or frames[2] != Status.OK.value:
        raise ProtocolError("broker reply does not match the request")
    return frames[3:]


def remote_error(body: bytes) -> RemoteError:
    try:
        obj = decode_json(body)
        return RemoteError(str(obj.get("code", "internal")), str(obj.get("message", "error")))
    except ProtocolError:
        return RemoteError(ErrorCode.INTERNAL, "malformed error reply")


# -- sealed envelopes ---------------------------------------------------------------------

def open_with_header(box: Any, data: bytes, header: struct.Struct,
                     what: str) -> tuple[tuple[Any, ...], bytes]:
    """Decrypt ``data`` and split the plaintext into ``header``'s fields and the rest.

    Every sealed agora envelope is a fixed binary header then a body; this is the one place
    that checks the header fits. ProtocolError for anything that does not open or fit.
    """
    plain = open_sealed(box, data)
    if len(plain) < header.size:
        raise ProtocolError(f"{what} too short")
    return header.unpack_from(plain), plain[header.size :]


# -- session envelope ---------------------------------------------------------------------

def seal_session_request(box: Any, counter: int, op: SessionOp, body: dict[str, Any]) -> bytes:
    return seal(box, _HEADER.pack(counter, op) + encode_json(body))


def open_session_request(box: Any, data: bytes) -> tuple[int, SessionOp, dict[str, Any]]:
    (counter, op), body = open_with_header(box, data, _HEADER, "session request")
    try:
        op = SessionOp(op)
    except ValueError:
        raise ProtocolError("unknown session operation") from None
    return counter, op, decode_json(body)


def seal_session_reply(box: Any, counter: int, status: Status, body: dict[str, Any]) -> bytes:
    return seal(box, _HEADER.pack(counter, status.value[0]) + encode_json(body))


def session_reply_frames(box: Any, counter: int, status: Status, body: dict[str, Any],
                         ) -> list[bytes]:
    """The whole broker reply to session request ``counter``: outer frames and sealed body."""
    return ok_reply(Command.SESSION, seal_session_reply(box, counter, status, body))


def open_session_reply(box: Any, data: bytes, counter: int) -> dict[str, Any]:
    """Decrypt a session reply, check it answers request ``counter``; raise on ERROR."""
    (got, status), body = open_with_header(box, data, _HEADER, "session reply")
    if got != counter:
        raise ProtocolError("session reply does not answer this request")
    if status == Status.ERROR.value[0]:
        raise remote_error(body)
    return decode_json(body)


# -- worker messages ----------------------------------------------------------------------

def seal_worker_message(box: Any, counter: int, direction: Direction, command: WorkerCommand,
                        body: dict[str, Any]) -> bytes:
    return seal(box, _WORKER_HEADER.pack(counter, direction.value, bytes([command]))
                + encode_json(body))


def open_worker_message(box: Any, data: bytes, direction: Direction,
                        ) -> tuple[int, WorkerCommand, dict[str, Any]]:
    """Decrypt a worker message sealed for ``direction``; anything else is a ProtocolError."""
    (counter, got_direction, command), body = open_with_header(box, data, _WORKER_HEADER,
                                                                "worker message")
    if got_direction != direction.value:
        raise ProtocolError("worker message sealed for the other direction")
    try:
        command = WorkerCommand(command[0])
    except ValueError:
        raise ProtocolError("unknown worker command") from None
    return counter, command, decode_json(body)


def worker_frames(sid: bytes, sealed: bytes) -> list[bytes]:
    """A worker -> broker message."""
    return [WORKER_PROTOCOL, sid, sealed]


def parse_worker_frames(frames: list[bytes]) -> tuple[bytes, bytes]:
    """Session id and sealed body of a worker -> broker message."""
    if len(frames) != 3 or frames[0] != WORKER_PROTOCOL:
        raise ProtocolError("not an agora worker message")
    return frames[1], frames[2]


def to_worker_frames(sealed: bytes) -> list[bytes]:
    """A broker -> worker message."""
    return [WORKER_PROTOCOL, Status.OK.value, sealed]


def parse_to_worker_frames(frames: list[bytes]) -> bytes:
    """Sealed body of a broker -> worker message; RemoteError for a refusal in clear."""
    if len(frames) != 3 or frames[0] != WORKER_PROTOCOL:
        raise ProtocolError("not an agora worker message")
    if frames[1] == Status.ERROR.value:
        raise remote_error(frames[2])
    if frames[1] != Status.OK.value:
        raise ProtocolError("unknown status in a worker message")
    return frames[2]


def worker_error_frames(code: ErrorCode, message: str) -> list[bytes]:
    """A refusal the broker could not seal (the worker's session is unknown): in clear."""
    return [WORKER_PROTOCOL, Status.ERROR.value,
            encode_json({"code": code.value, "message": message})]
