"""The :class:`Agent`: one collaborator's client, the API the CLI is a thin shell over.

    agent = Agent(home, broker="tcp://127.0.0.1:5555")
    agent.register(username, one_time_id, broker_fingerprint, password)   # once
    info = agent.login(password)                                          # every session
    agent.call("echo", {"text": "hi"})
    agent.send("bob", "hello")                   # peer to peer, end-to-end encrypted
    for msg in agent.messages(stop=event): ...   # incoming peer messages
    agent.logout(); agent.close()

An Agent is not thread-safe: use it from one thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from agents.credentials import Credentials, CredentialsFile, check_new_password
from agents.notices import NoticeStream
from agents.peer import PeerNode, Receipt
from agents.peer_protocol import PeerMessage
from agents.transport import DEFAULT_RETRIES, DEFAULT_TIMEOUT, BrokerConnection
from agora.crypto import (
    Box,
    PrivateKey,
    SecretBox,
    b64,
    constant_time_equal,
    fingerprint,
    new_symmetric_key,
    normalize_fingerprint,
    open_sealed,
    public_key_from_bytes,
    seal,
    unb64,
)
from agora.errors import LocalError, ProtocolError, RemoteError
from agora.protocol import FRESHNESS_WINDOW, MAX_MESSAGE_SIZE, Command, ErrorCode, Kind
from agora.sockets import bind_router
from agora.wire import (
    decode_json,
    encode_call,
    encode_json,
    field,
    open_session_reply,
    parse_reply,
    request_frames,
    seal_session_request,
)

DEFAULT_BROKER = "tcp://127.0.0.1:5555"
CREDENTIALS_NAME = "credentials.json"


@dataclass(frozen=True)
class SessionInfo:
    username: str
    level: int
    kind: str
    session: str
    port: int

    def to_dict(self) -> dict[str, Any]:
        return {"username": self.username, "level": self.level, "kind": self.kind,
                "session": self.session, "port": self.port}


@dataclass
class _Session:
    sid: bytes
    key: bytes  # the session key's raw bytes: every request is sealed with it directly
    counter: int = 0
    worker_counter: int = 0  # the worker channel's own sequence (agents.worker)



class Agent:
    def __init__(self, home: Path, broker: str | None = None,
                 context: zmq.Context | None = None, timeout: float = DEFAULT_TIMEOUT,
                 retries: int = DEFAULT_RETRIES) -> None:
        self.home = Path(home)
        self.context = context or zmq.Context.instance()
        self.file = CredentialsFile(self.home / CREDENTIALS_NAME)
        self._broker_override = broker
        self._timeout, self._retries = timeout, retries
        self._conn: BrokerConnection | None = None
        self.credentials: Credentials | None = None
        self.session: _Session | None = None
        self.info: SessionInfo | None = None
        self._listen = True
        #: The socket this session listens on for peers; its port is reported at login.
        self.inbox: zmq.Socket | None = None
        self._inbox_endpoint = ""
        self._peer: PeerNode | None = None

    # -- plumbing -------------------------------------------------------------------------

    @property
    def broker(self) -> str:
        if self._broker_override:
            return self._broker_override
        if self.credentials is not None:
            return self.credentials.broker
        return DEFAULT_BROKER

    @property
    def connection(self) -> BrokerConnection:
        if self._conn is None:
            self._conn = BrokerConnection(self.broker, self.context, self._timeout,
                                          self._retries)
        return self._conn

    @property
    def username(self) -> str:
        if self.credentials is None:
            raise LocalError("credentials are not open")
        return self.credentials.username

    @property
    def private_key(self) -> PrivateKey:
        if self.credentials is None:
            raise LocalError("credentials are not open")
        return PrivateKey(self.credentials.private_key)

    def close(self) -> None:
        if self._peer is not None:
            self._peer.close()
            self._peer = None
        if self._conn is not None:
            self._conn.close()
        if self.inbox is not None:
            self.inbox.close(0)
            self.inbox = None

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- registration ---------------------------------------------------------------------

    def fetch_broker_key(self) -> bytes:
        body = parse_reply(self.connection.request(request_frames(Command.BROKER_KEY)),
                           Command.BROKER_KEY)
        if len(body) != 1 or len(body[0]) != 32:
            raise ProtocolError("broker key reply is malformed")
        return body[0]

    def register(self, username: str, one_time_id: str, broker_fingerprint: str,
                 password: str, force: bool = False) -> Credentials:
        """Register this agent as ``username``; creates the credentials file."""
        check_new_password(password, username, one_time_id)
        if self.file.exists() and not force:
            raise LocalError(f"{self.file.path} already holds a registration "
                             "(use --force to replace it)")
        broker_key = self.fetch_broker_key()
        # The fingerprint came face to face from the operator: it is the only thing that
        # tells the real broker from an impostor answering on the same address.
        if not constant_time_equal(normalize_fingerprint(broker_fingerprint).encode(),
                                   fingerprint(broker_key).encode()):
            raise LocalError(f"broker key fingerprint mismatch at {self.broker}: expected "
                             f"{normalize_fingerprint(broker_fingerprint)}, got "
                             f"{fingerprint(broker_key)}; not registering")
        private_key = PrivateKey.generate()
        symmetric_key = new_symmetric_key()
        plain = encode_json({"username": username, "one_time_id": one_time_id,
                             "symmetric_key": b64(symmetric_key), "ts": time.time()})
        sealed = seal(Box(private_key, public_key_from_bytes(broker_key)), plain)
        body = parse_reply(self.connection.request(request_frames(
            Command.REGISTER, bytes(private_key.public_key), sealed)), Command.REGISTER)
        answer = decode_json(open_sealed(SecretBox(symmetric_key), _one(body)))
        creds = Credentials(
            username=field(answer, "username", str), broker=self.broker,
            broker_public_key=broker_key, private_key=bytes(private_key),
            symmetric_key=symmetric_key, token=unb64(field(answer, "token", str), 32),
            level=field(answer, "level", int), kind=field(answer, "kind", str))
        with self.file.lock():
            self.file.create(password, creds)
        self.credentials = creds
        return creds

    # -- login ----------------------------------------------------------------------------

    def unlock(self, password: str) -> Credentials:
        """Authenticate the person locally: the password must open the credentials file."""
        self.credentials = self.file.open(password)
        return self.credentials

    def login(self, password: str | None = None, listen: bool | None = None) -> SessionInfo:
        """Open the credentials (if a password is given), then log in to the broker.

        ``listen=False`` says this session will not take peer conversations (a one-shot
        command, a service process), so the broker's directory keeps sending peers to a
        session that does. Left out, it stays what it was (True at first): a re-login after
        a broker restart keeps the choice.
        """
        if listen is None:
            listen = self._listen
        self._listen = listen
        if password is not None:
            self.unlock(password)
        elif not self.file.unlocked:
            raise LocalError("a password is needed to open the credentials")
        port = self._bind_inbox()
        with self.file.lock():
            creds = self.file.reload()
            self.credentials = creds
            recovered = False
            pending = creds.pending_login
            if pending and time.time() - pending["ts"] < FRESHNESS_WINDOW - 5:
                sealed, recovered = unb64(pending["sealed"]), True
            else:
                sealed = seal(SecretBox(creds.symmetric_key), encode_json(
                    {"token": b64(creds.token), "port": port, "listen": listen,
                     "ts": time.time()}))
                # Written before sending: if this process dies with the reply in flight, the
                # next one re-sends these exact bytes instead of presenting an old token.
                creds.pending_login = {"sealed": b64(sealed), "ts": time.time()}
                self.file.save(creds)
            try:
                body = parse_reply(self.connection.request(request_frames(
                    Command.LOGIN, creds.username.encode(), sealed)), Command.LOGIN)
            except RemoteError:
                creds.pending_login = None
                self.file.save(creds)
                raise
            answer = decode_json(open_sealed(SecretBox(creds.symmetric_key), _one(body)))
            creds.token = unb64(field(answer, "token", str), 32)
            creds.level = field(answer, "level", int)
            creds.pending_login = None
            self.file.save(creds)
        self.session = _Session(unb64(field(answer, "session", str), 16),
                                unb64(field(answer, "session_key", str), 32))
        self.info = SessionInfo(creds.username, creds.level, creds.kind,
                                self.session.sid.hex()[:8], port)
        if recovered:
            # The recovered reply recorded an earlier process's port: log in once more.
            return self.login(listen=listen)
        return self.info

    def _bind_inbox(self) -> int:
        if self.inbox is None:
            self.inbox, self._inbox_endpoint = bind_router(self.context, "tcp://127.0.0.1:*")
        return int(self._inbox_endpoint.rsplit(":", 1)[1])

    # -- session requests -----------------------------------------------------------------

    def request(self, kind: Kind, body: bytes = b"", relogin: bool = True) -> Any:
        """One request inside the session (an envelope of ``kind`` with ``body``); logs in
        again once if the broker says it does not know the session."""
        session = self.session
        if session is None:
            raise LocalError("not logged in")
        session.counter = counter = session.counter + 1
        sealed = seal_session_request(session.key, session.sid, counter, kind, body)
        try:
            return open_session_reply(session.key, self.connection.request([sealed]),
                                      session.sid, counter)
        except RemoteError as exc:
            # A clear unknown-session (the broker restarted, or the session expired) is not
            # authenticated: the only thing done on it is logging in again, which proves the
            # key to the broker and gives an unauthenticated sender nothing.
            if exc.code is ErrorCode.UNKNOWN_SESSION and relogin and kind != Kind.LOGOUT:
                self.login()
                return self.request(kind, body, relogin=False)
            raise

    def call(self, service: str, args: dict[str, Any] | None = None) -> Any:
        return self.request(Kind.CALL, encode_call(service, args))

    def whoami(self) -> dict[str, Any]:
        return self.call("whoami")

    def logout(self) -> None:
        if self.session is not None:
            try:
                self.request(Kind.LOGOUT)
            finally:
                self.session = None

    # -- notices (agents.notices) ---------------------------------------------------------

    def subscribe(self, membership: bool = False, timeout: float | None = None,
                  ) -> NoticeStream:
        """Subscribe to the notices the broker pushes to this session (session ended, new
        login, level changed; ``membership`` changes too for service principals). Returns
        once the broker acknowledged (BrokerUnreachable / RemoteError otherwise). The stream
        has its own socket: poll it from one thread while this agent is used from another.
        """
        if self.session is None:
            raise LocalError("not logged in")
        stream = NoticeStream(self, membership)
        try:
            stream.wait_subscribed(self._timeout if timeout is None else timeout)
        except BaseException:
            stream.close()
            raise
        return stream

    # -- peer messages (agents.peer) ------------------------------------------------------

    @property
    def peer(self) -> PeerNode:
        """This session's peer-to-peer node (conversations over PAIR sockets)."""
        if self._peer is None:
            self._peer = PeerNode(self, timeout=self._timeout)
        return self._peer

    def send(self, username: str, text: str, timeout: float | None = None,
             queue: bool = True) -> Receipt:
        """Send ``text`` to ``username``'s listening session; returns once acknowledged, or
        once left in the broker's mailbox if they are offline and ``queue`` is true."""
        return self.peer.send(username, text, timeout, queue)

    def messages(self, stop: threading.Event | None = None, timeout: float | None = None,
                 ) -> Iterator[PeerMessage]:
        """Incoming peer messages as they arrive, until ``stop`` is set or ``timeout``."""
        return self.peer.messages(stop, timeout)


def _one(body: list[bytes]) -> bytes:
    if len(body) != 1:
        raise ProtocolError("expected a one-frame reply")
    return body[0]


__all__ = ["Agent", "SessionInfo", "DEFAULT_BROKER", "MAX_MESSAGE_SIZE"]
