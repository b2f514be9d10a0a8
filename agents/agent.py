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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from agents.credentials import Credentials, CredentialsFile, check_new_password
from agents.notices import NoticeStream
from agents.peer import PeerNode, Receipt
from agents.peer_protocol import PeerMessage
from agents.pipeline import Pipeline
from agents.transport import DEFAULT_RETRIES, DEFAULT_TIMEOUT, BrokerConnection
from agora.crypto import (
    PrivateKey,
    b64,
    constant_time_equal,
    fingerprint,
    new_symmetric_key,
    normalize_fingerprint,
    unb64,
)
from agora.envelope import (
    box_key,
    header_prefix,
    peek,
    seal,
    seal_prefixed,
    timestamp_counter,
)
from agora.errors import LocalError, RemoteError, WrongPassword
from agora.protocol import MAX_MESSAGE_SIZE, Channel, ErrorCode, Kind, Sender
from agora.sockets import bind_router
from agora.wire import (
    broker_key_request,
    decode_grant,
    encode_call,
    encode_login,
    encode_register,
    encode_username,
    login_context,
    open_broker_key_reply,
    open_preauth_reply,
    open_session_reply,
    register_context,
    request_header,
    result_prefix,
)

DEFAULT_BROKER = "tcp://127.0.0.1:5555"
CREDENTIALS_NAME = "credentials.json"
#: A registration sent but not yet confirmed: its keys, kept until the broker answers.
PENDING_REGISTRATION_NAME = "registration.pending.json"


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
    #: Packed request headers but their counter, by kind (agora.envelope.header_prefix).
    heads: dict[int, bytes] = field(default_factory=dict)
    #: The same for the broker's RESULT answers (agora.wire.result_prefix).
    result_prefix: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.result_prefix = result_prefix(self.sid)

    def seal_request(self, kind: int, body: bytes) -> tuple[int, bytes]:
        """The next request counter and the request sealed on it: the same bytes as
        :func:`agora.wire.seal_session_request`, with the header packed once per kind."""
        prefix = self.heads.get(kind)
        if prefix is None:
            prefix = self.heads[kind] = header_prefix(Channel.CLIENT, kind, Sender.CLIENT,
                                                      self.sid)
        self.counter = counter = self.counter + 1
        return counter, seal_prefixed(self.key, prefix, counter, body)



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
        """The key the broker says is its own (unauthenticated: check its fingerprint)."""
        return open_broker_key_reply(self.connection.request(broker_key_request()))

    def register(self, username: str, one_time_id: str, broker_fingerprint: str,
                 password: str, force: bool = False) -> Credentials:
        """Register this agent as ``username``; creates the credentials file.

        The key pair and symmetric key are written (encrypted under the password, 0600,
        atomically) to a pending file *before* the request is sent and kept until the broker
        confirms: if its reply is lost, running this again with the same one-time ID and
        password re-sends the same keys and the broker completes the same registration.
        """
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
        pending_file = CredentialsFile(self.home / PENDING_REGISTRATION_NAME)
        with self.file.lock():
            pending = self._pending_registration(pending_file, password, username, broker_key)
            if pending is None:
                pending = Credentials(
                    username=username, broker=self.broker, broker_public_key=broker_key,
                    private_key=bytes(PrivateKey.generate()),
                    symmetric_key=new_symmetric_key(), token=b"", level=0)
                pending_file.create(password, pending)  # before anything is sent
            private_key = PrivateKey(pending.private_key)
            client_key = bytes(private_key.public_key)
            header = request_header(Kind.REGISTER, register_context(client_key),
                                    _next_counter(pending, "register_counter"))
            pending_file.save(pending)  # the counter, so a retry never reuses it
            box = box_key(pending.private_key, broker_key)
            envelope = seal(box, header, encode_register(pending.symmetric_key, username,
                                                         one_time_id))
            body = open_preauth_reply(self.connection.request([client_key, envelope]), header,
                                      pending.symmetric_key, box)
            token, _, _, info = decode_grant(body, with_session=False)
            pending.username, pending.token = info["username"], token
            pending.level, pending.kind = info["level"], info["kind"]
            pending.broker = self.broker
            pending_file.save(pending)
            self.file.take_over(pending_file)
        self.credentials = pending
        return pending

    @staticmethod
    def _pending_registration(pending_file: CredentialsFile, password: str, username: str,
                              broker_key: bytes) -> Credentials | None:
        """The keys of an earlier, unconfirmed registration of ``username`` at this broker."""
        if not pending_file.exists():
            return None
        try:
            pending = pending_file.open(password)
        except WrongPassword:
            # Its keys may be the ones the broker already accepted: never replaced silently.
            raise LocalError("an unfinished registration is waiting here under another "
                             "password: give the password you chose then (forgotten? delete "
                             f"{pending_file.path} and register again; if the broker had "
                             "accepted it, the operator must re-enroll you)") from None
        except LocalError:
            return None  # damaged: start afresh
        if pending.username != username or pending.broker_public_key != broker_key:
            return None
        return pending

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
            frames = _pending_frames(creds.pending_login)
            recovered = frames is not None
            if frames is None:
                frames = self._login_frames(creds, port, listen)
                # Written before sending and kept until the broker answers (however late):
                # if the reply is lost, the next try re-sends these exact bytes, which the
                # broker answers again, instead of presenting a token it already rotated.
                creds.pending_login = {"frames": [b64(f) for f in frames], "ts": time.time()}
                self.file.save(creds)
            header = peek(frames[-1])
            try:
                body = open_preauth_reply(self.connection.request(frames), header,
                                          creds.symmetric_key, creds.symmetric_key)
            except RemoteError as exc:
                if not exc.authenticated:
                    raise
                creds.pending_login = None  # the broker's own word: this request is finished
                self.file.save(creds)
                if not (recovered and exc.code in (ErrorCode.STALE, ErrorCode.REPLAYED)):
                    raise
                body = None  # the kept request never reached the broker in time
            if body is not None:
                token, sid, session_key, info = decode_grant(body, with_session=True)
                creds.token, creds.level = token, info["level"]
                creds.pending_login = None
                self.file.save(creds)
        if body is None:
            return self.login(listen=listen)  # a new request, once the file's lock is free
        self.session = _Session(sid, session_key)
        self.info = SessionInfo(creds.username, creds.level, creds.kind,
                                self.session.sid.hex()[:8], port)
        if recovered:
            # The recovered reply recorded an earlier process's port: log in once more.
            return self.login(listen=listen)
        return self.info

    def _login_frames(self, creds: Credentials, port: int, listen: bool) -> list[bytes]:
        header = request_header(Kind.LOGIN, login_context(creds.username),
                                _next_counter(creds, "login_counter"))
        return [encode_username(creds.username),
                seal(creds.symmetric_key, header, encode_login(creds.token, port, listen))]

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
        counter, sealed = session.seal_request(kind, body)
        try:
            return open_session_reply(session.key, self.connection.request([sealed]),
                                      session.sid, counter, session.result_prefix)
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

    def pipeline(self, depth: int = 8, timeout: float | None = None) -> Pipeline:
        """A :class:`~agents.pipeline.Pipeline`: up to ``depth`` requests of this session in
        flight at once over one DEALER socket (close it, or use it in a ``with``)."""
        return Pipeline(self, depth, timeout)

    def call_many(self, calls: Iterable[tuple[str, dict[str, Any] | None]], depth: int = 8,
                  ) -> list[Any]:
        """``(service, args)`` calls, ``depth`` in flight at a time; their answers in order,
        each a result or the AgoraError that call ended with (one refusal does not stop the
        others)."""
        with self.pipeline(depth) as pipe:
            return pipe.call_many(calls)

    def whoami(self) -> dict[str, Any]:
        return self.call("whoami")

    def logout(self) -> None:
        """End the session at the broker, then its peer conversations (BYE on each): in
        that order, so a peer told BYE already finds this session offline and leaves what
        it still had to send in the mailbox."""
        if self.session is not None:
            try:
                self.request(Kind.LOGOUT)
            finally:
                self.session = None
                if self._peer is not None:
                    self._peer.close()
                    self._peer = None

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


def _next_counter(creds: Credentials, name: str) -> int:
    """A request counter: the millisecond timestamp, but always above the last one this
    credentials file used (two logins in one millisecond must not look like a replay).
    The caller saves ``creds``, under the file's lock."""
    counter = max(timestamp_counter(time.time()), int(creds.extra.get(name, 0)) + 1)
    creds.extra[name] = counter
    return counter


def _pending_frames(pending: dict[str, Any] | None) -> list[bytes] | None:
    """The frames of a login sent but not answered (None if there is none, or if it was
    written by an AGORA/1 agent)."""
    if not pending or not isinstance(pending.get("frames"), list):
        return None
    return [unb64(f) for f in pending["frames"]]


__all__ = ["Agent", "SessionInfo", "DEFAULT_BROKER", "MAX_MESSAGE_SIZE"]
