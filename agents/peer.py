"""The socket shell of peer messages: one :class:`PeerNode` per logged-in agent.

How a listener accepts conversations from many peers over one-to-one PAIR sockets: the
port reported at login is a ROUTER (``agent.inbox``) that takes conversation requests only.
For each HELLO it accepts, the node binds a new PAIR on 127.0.0.1 with an OS-chosen port
and answers WELCOME with that port; the initiator connects its own PAIR there, and every
message and acknowledgement of the conversation travels on that pair of sockets. A PAIR is
used in both directions, so a reply in a chat rides on the conversation the other side
opened.

Everything runs in the agent's thread around one :class:`zmq.Poller` (inbox + every PAIR);
directory look-ups are broker requests made from that same thread. The protocol decisions
live in :mod:`agents.peer_protocol`; this module receives, calls it, and sends.

Nothing blocks without a bound: HELLO waits ``timeout``, an ACK waits ``timeout``; a
conversation that does not answer is closed, and one new conversation (fresh look-up, new
PAIR) is tried before the send fails. Idle conversations are closed after ``idle_timeout``.

A collaborator who is offline (or whose session does not answer HELLO) gets the message as a
*letter* in the broker's mailbox (:mod:`broker.mailbox`), still sealed end to end; a node
fetches its letters when it starts receiving and every MAILBOX_POLL_INTERVAL seconds, and
remembers the ids of the letters it showed (``letters_seen.json`` in the agent's home) so
the broker cannot show one twice.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import zmq

from agents.peer_protocol import (
    MESSAGE_ID_SIZE,
    Closed,
    Conversation,
    PeerEndpoint,
    PeerMessage,
    Refused,
    encode_text,
)
from agora.crypto import b64, unb64
from agora.errors import (
    AgoraError,
    LocalError,
    PeerClosed,
    PeerError,
    PeerOffline,
    PeerTimeout,
    ProtocolError,
    RemoteError,
    UnauthenticatedRefusal,
)
from agora.files import atomic_write
from agora.jsontext import loads
from agora.protocol import ErrorCode
from agora.sockets import make_socket, recv_bounded, recv_rest

if TYPE_CHECKING:
    from agents.agent import Agent

log = logging.getLogger("agora.peer")

DEFAULT_PEER_TIMEOUT = 2.5
IDLE_TIMEOUT = 600.0
MAX_CONVERSATIONS = 256
#: Conversation requests handled per poll, so a flood of them cannot starve conversations.
DRAIN_LIMIT = 100
LOOPBACK = ("127.0.0.1", "::1")
#: How often a receiving node asks the broker for letters left while it was away.
MAILBOX_POLL_INTERVAL = 30.0
LETTERS_SEEN_NAME = "letters_seen.json"
#: Messages :meth:`PeerNode.send_many` keeps unacknowledged at most: enough to keep both
#: ends busy, and far below the message ids a receiver remembers per peer
#: (RECENT_IDS_PER_PEER), so a stream sent again on a new conversation is shown once.
SEND_WINDOW = 32
#: Idle conversations are looked for at most this often (not on every poll: a hot path).
TICK_INTERVAL = 1.0
# Plain ints on the hot path: pyzmq's flags are enums (IntFlag operations cost µs).
_NOBLOCK, _RCVTIMEO = int(zmq.NOBLOCK), int(zmq.RCVTIMEO)


class Receipt(NamedTuple):
    """What became of a message: ``delivered`` (the peer's session acknowledged message
    ``seq``) or ``queued`` in the broker's mailbox because of ``reason``."""

    # A NamedTuple rather than a frozen dataclass: it is built on every send once the ACK
    # is in, while the caller waits, and costs a quarter as much (0.2 against 0.8 µs).

    to: str
    seq: int
    conversation: str
    round_trip: float
    delivered: bool = True
    reason: str = ""

    @property
    def queued(self) -> bool:
        return not self.delivered

    def to_dict(self) -> dict[str, Any]:
        return {"to": self.to, "delivered": self.delivered, "queued": self.queued,
                "reason": self.reason, "seq": self.seq, "conversation": self.conversation,
                "round_trip_ms": self.round_trip * 1000}


class Listener:
    """Receives for a logged-in agent until ``stop`` is set: in a thread, or as the main
    loop of a process (``agora listen``). Each message goes to ``on_message``."""

    def __init__(self, agent: Agent, on_message: Callable[[PeerMessage], None],
                 stop: threading.Event | None = None) -> None:
        self.agent = agent
        self.on_message = on_message
        self.stop = stop or threading.Event()
        agent.peer  # noqa: B018 - the node (and its poller) exists before anyone writes

    def run(self) -> None:
        for msg in self.agent.messages(stop=self.stop):
            self.on_message(msg)


def tcp_endpoint(address: str, port: int) -> str:
    return f"tcp://[{address}]:{port}" if ":" in address else f"tcp://{address}:{port}"


class PeerNode:
    """Sends to and receives from peers for one logged-in :class:`~agents.agent.Agent`."""

    def __init__(self, agent: Agent, timeout: float = DEFAULT_PEER_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT,
                 max_conversations: int = MAX_CONVERSATIONS) -> None:
        if agent.inbox is None or agent.session is None:
            raise PeerError("log in before sending or receiving peer messages")
        self.agent = agent
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.max_conversations = max_conversations
        self.core = PeerEndpoint(agent.username, agent.private_key)
        self.inbox = agent.inbox
        self.poller = zmq.Poller()
        self.poller.register(self.inbox, zmq.POLLIN)
        self.conversations: dict[zmq.Socket, Conversation] = {}
        #: The PAIRs of each peer's conversations (usually one), for send's look-up.
        self._by_peer: dict[str, list[zmq.Socket]] = {}
        #: The receive timeout (ms) each PAIR has now; send waits for its ACK in recv().
        self._wait_ms: dict[zmq.Socket, int] = {}
        self.incoming: deque[PeerMessage] = deque()
        #: Messages dropped as bad input (garbage, wrong key, replay...); each was logged.
        self.dropped = 0
        self.letters_path = agent.home / LETTERS_SEEN_NAME
        self.core.seen_letters = self._load_seen_letters()
        self._next_fetch = 0.0  # the first wait() fetches letters left while we were away
        self._next_tick = 0.0

    # -- sockets ----------------------------------------------------------------------------

    def _pair(self) -> zmq.Socket:
        return make_socket(self.agent.context, zmq.PAIR, send_timeout=self.timeout)

    def _add(self, sock: zmq.Socket, conversation: Conversation, now: float) -> None:
        if len(self.conversations) >= self.max_conversations:
            oldest = min(self.conversations, key=lambda s: self.conversations[s].last_active)
            self._close(oldest, say_bye=True, now=now)
        self.conversations[sock] = conversation
        self._by_peer.setdefault(conversation.peer, []).append(sock)
        self.poller.register(sock, zmq.POLLIN)

    def _close(self, sock: zmq.Socket, say_bye: bool, now: float) -> None:
        conversation = self.conversations.pop(sock, None)
        if conversation is None:
            return  # closed already (the peer said BYE while we waited)
        socks = self._by_peer[conversation.peer]
        socks.remove(sock)
        if not socks:
            del self._by_peer[conversation.peer]
        self._wait_ms.pop(sock, None)
        if say_bye:
            try:
                sock.send(conversation.bye(now)[0], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the peer is gone already; nothing to tell it
        self.poller.unregister(sock)
        sock.close(0)

    def close(self) -> None:
        """Say goodbye on every conversation and close its PAIR (the inbox is the agent's)."""
        now = time.time()
        for sock in list(self.conversations):
            self._close(sock, say_bye=True, now=now)

    def _latest(self, peer: str) -> zmq.Socket | None:
        socks = self._by_peer.get(peer)
        if not socks:
            return None
        if len(socks) == 1:
            return socks[0]
        return max(socks, key=lambda s: self.conversations[s].last_active)

    # -- receiving --------------------------------------------------------------------------

    def poll(self, timeout: float) -> list[PeerMessage]:
        """Wait up to ``timeout`` seconds for peer traffic; handle it; return new messages."""
        return self.wait(timeout)[0]

    def wait(self, timeout: float, watch: tuple[int, ...] = (),
             ) -> tuple[list[PeerMessage], set[int]]:
        """Like :meth:`poll`, also watching file descriptors (a chat's stdin).

        Returns the new messages and which of ``watch`` are readable.
        """
        for fd in watch:
            self.poller.register(fd, zmq.POLLIN)
        try:
            ready = self.poller.poll(0 if self.incoming else int(timeout * 1000))
        finally:
            for fd in watch:
                self.poller.unregister(fd)
        self._handle_ready(ready)
        now = time.time()
        if now >= self._next_tick:
            self._next_tick = now + TICK_INTERVAL
            self.tick(now)
        if now >= self._next_fetch:
            self._next_fetch = now + MAILBOX_POLL_INTERVAL
            self.fetch_letters(now)
        messages = list(self.incoming)
        self.incoming.clear()
        return messages, {fd for fd, _ in ready if fd in watch} if watch else set()

    def _handle_ready(self, ready: list[tuple[Any, int]]) -> None:
        # The inbox comes first (registered first). One message per ready conversation per
        # wake-up: the poll is level-triggered, so the next one reports what is still
        # waiting (busy peers take turns), and nothing pays for a receive that finds the
        # socket empty.
        conversations = self.conversations
        for sock, _ in ready:
            if sock is self.inbox:
                self._drain_inbox()
                continue
            conversation = conversations.get(sock)
            if conversation is None:
                continue  # a watched descriptor, or closed by a BYE just handled
            try:
                frame = sock.recv(_NOBLOCK, copy=False)
            except zmq.Again:
                continue  # reported ready, yet nothing to read after all
            self._on_pair(sock, conversation, frame)

    def _drain_inbox(self) -> None:
        for _ in range(DRAIN_LIMIT):
            try:
                frames = recv_bounded(self.inbox, zmq.NOBLOCK)
            except zmq.Again:
                break
            if frames is not None:  # None: over the whole-message bound, dropped
                self._on_inbox(frames)

    def _drop(self, what: str, exc: Exception) -> None:
        self.dropped += 1
        log.warning("dropped %s: %s", what, exc)

    def _on_inbox(self, frames: list[bytes]) -> None:
        """A conversation request: verify it against the directory, open a PAIR, WELCOME."""
        identity, body = frames[0], frames[1:]
        now = time.time()
        try:
            hello = self.core.parse_hello(body)
        except ProtocolError as exc:
            self._drop("a bad conversation request", exc)
            self._reply(identity, self.core.refuse(ErrorCode.BAD_REQUEST, str(exc)))
            return
        what = f"a conversation request from {hello.sender[:64]!r}"
        try:
            entry = self.agent.call("lookup", {"username": hello.sender})
            directory_key = unb64(entry["public_key"], 32)
        except AgoraError as exc:  # refused before the HELLO proved anything: in clear
            self._drop(what, exc)
            if isinstance(exc, RemoteError):  # the directory refused (unknown, revoked...)
                code, message = exc.code, exc.message
            elif isinstance(exc, ProtocolError):
                code, message = ErrorCode.BAD_REQUEST, str(exc)
            else:  # the broker is unreachable: the key cannot be checked
                code, message = ErrorCode.SERVICE_UNAVAILABLE, "directory unavailable; try again"
            self._reply(identity, self.core.refuse(code, message, hello.header.context,
                                                   hello.header.counter))
            return
        try:
            conversation = self.core.accept(hello, directory_key, now)
        except Refused as exc:
            self._drop(what, exc)
            self._reply(identity, exc.frames)
            return
        sock = self._pair()
        sock.bind("tcp://127.0.0.1:*")
        port = int(sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
        self._add(sock, conversation, now)
        self._reply(identity, self.core.welcome(conversation, hello, port))
        log.info("conversation %s with %s opened on port %d", conversation.short_id,
                 conversation.peer, port)

    def _reply(self, identity: bytes, frames: list[bytes]) -> None:
        try:
            self.inbox.send_multipart([identity, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.info("could not answer a conversation request: %s", exc.strerror)

    def _on_pair(self, sock: zmq.Socket, conversation: Conversation, frame: zmq.Frame) -> None:
        """Handle one message received on a conversation PAIR (its first frame, uncopied):
        acknowledge it first, then keep what it says (the sender waits only for the ACK)."""
        if frame.more:  # not a conversation message: read it within the bounds, then refuse
            rest = recv_rest(sock, size=len(frame), origin=frame)
            if rest is None:  # over the whole-message bound: dropped, uncopied
                return
            frames = [frame.bytes, *rest]
        else:
            frames = [frame.bytes]
        try:
            ack, arrival = conversation.receive(frames, time.time())
        except ProtocolError as exc:
            self._drop(f"a message on conversation {conversation.short_id} with "
                       f"{conversation.peer}", exc)
            return
        if ack is not None:
            try:
                sock.send(ack, _NOBLOCK)
            except zmq.ZMQError as exc:
                log.info("could not acknowledge %s: %s", conversation.peer, exc.strerror)
        for event in conversation.settle(arrival):
            if isinstance(event, PeerMessage):
                self.incoming.append(event)
            elif isinstance(event, Closed):
                log.info("conversation %s with %s closed by the peer",
                         conversation.short_id, conversation.peer)
                self._close(sock, say_bye=False, now=arrival.at)
            # Acked: conversation.acked moved; send() waits on it

    def tick(self, now: float) -> None:
        """Close conversations idle for longer than ``idle_timeout``."""
        for sock, conversation in list(self.conversations.items()):
            if now - conversation.last_active > self.idle_timeout:
                log.info("conversation %s with %s idle; closed", conversation.short_id,
                         conversation.peer)
                self._close(sock, say_bye=True, now=now)

    def messages(self, stop: threading.Event | None = None, timeout: float | None = None,
                 poll_interval: float = 0.1) -> Iterator[PeerMessage]:
        """Yield messages as they arrive, until ``stop`` is set or ``timeout`` seconds pass."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (stop is not None and stop.is_set()):
            wait = poll_interval
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return
            yield from self.poll(wait)

    # -- sending ----------------------------------------------------------------------------

    def send(self, peer: str, text: str, timeout: float | None = None,
             queue: bool = True) -> Receipt:
        """Deliver ``text`` to ``peer``'s listening session and wait for its acknowledgement.

        If ``peer`` is offline or their session does not answer, the message is left
        (sealed end to end) in the broker's mailbox when ``queue`` is true, else PeerOffline
        or PeerTimeout is raised. Other failures: RemoteError (unknown-user, revoked,
        refused, mailbox-full), PeerTimeout (no acknowledgement), PeerClosed (the peer
        ended the conversation first) or MessageTooLarge. At most two conversations are
        tried (the one open, if any, and new ones: PROTOCOL.md 5.5), so it waits for the
        peer at most four times ``timeout`` (HELLO and ACK on each), plus the broker
        requests.
        """
        # The hot path of one message: send_many's stream bookkeeping, run for a single
        # text, cost about 3 % of a loopback round trip (measured), so one message on a
        # conversation already open goes its own short way; the steps are the same.
        if peer == self.agent.username:
            raise LocalError("that is you: peer messages go to another collaborator")
        timeout = self.timeout if timeout is None else timeout
        # One id for every attempt: if a first copy did arrive before the conversation went
        # stale, the receiver acknowledges the retransmission but shows it only once.
        msg_id = os.urandom(MESSAGE_ID_SIZE)
        sock = self._latest(peer)
        if sock is not None:
            try:
                return self._deliver(sock, text, msg_id, timeout)
            except PeerError as exc:  # no answer, or the peer said BYE
                self._stale(peer, sock, exc)
        # At most two conversations per send (PROTOCOL.md 5.5): one that just failed counts.
        return self._on_new_conversation(peer, [text], [msg_id], [], timeout, 1, queue,
                                         attempts=1 if sock is not None else 2)[0]

    def send_many(self, peer: str, texts: Sequence[str], timeout: float | None = None,
                  queue: bool = True, window: int = SEND_WINDOW,
                  on_receipt: Callable[[Receipt], None] | None = None) -> list[Receipt]:
        """Deliver ``texts`` to ``peer`` in order, as :meth:`send` delivers one, keeping up to
        ``window`` of them unacknowledged: a stream costs about one round trip in all, not
        one per message. Returns their receipts in order; ``on_receipt`` is called with
        each as it settles (so a caller knows how far a stream got when it raises).

        Every text is checked first (MessageTooLarge: nothing is sent). PeerTimeout when
        the peer acknowledges nothing for ``timeout``. If the conversation stops
        answering, the texts not yet acknowledged go again, with the same message ids
        (shown once), on a new conversation (at most two conversations in all, as
        :meth:`send`); if none can be opened they are left in the mailbox when ``queue`` is
        true. Errors as :meth:`send`.
        """
        if peer == self.agent.username:
            raise LocalError("that is you: peer messages go to another collaborator")
        if window < 1:
            raise ValueError("window must be at least 1")
        if not texts:
            return []  # no conversation is opened for nothing
        for text in texts:
            encode_text(text)  # all or nothing: no stream stops half-way on a long line
        timeout = self.timeout if timeout is None else timeout
        ids = [os.urandom(MESSAGE_ID_SIZE) for _ in texts]  # one per text, as send's
        receipts: list[Receipt] = []
        sock = self._latest(peer)
        if sock is not None:
            try:
                self._stream(sock, texts, ids, receipts, timeout, window, on_receipt)
                return receipts
            except PeerError as exc:
                self._stale(peer, sock, exc)
        return self._on_new_conversation(peer, texts, ids, receipts, timeout, window, queue,
                                         on_receipt, attempts=1 if sock is not None else 2)

    def _on_new_conversation(self, peer: str, texts: Sequence[str], ids: list[bytes],
                             receipts: list[Receipt], timeout: float, window: int,
                             queue: bool, on_receipt: Callable[[Receipt], None] | None = None,
                             *, attempts: int) -> list[Receipt]:
        """The texts from ``len(receipts)`` on, streamed on a new conversation with ``peer``
        (or left as letters: :meth:`_reopen`); ``receipts`` with theirs added.

        A send uses at most two conversations (PROTOCOL.md 5.5): ``attempts`` is 1 after
        the conversation it had failed, else 2. So when a new conversation fails too (the
        peer said BYE: it logged out; or it stopped acknowledging: its process died), the
        rest go once more, from a fresh look-up: to a peer that is offline or does not
        answer by then, they become letters rather than being lost.
        """
        attempt = 1
        while True:  # bounded: a failure on the last attempt is raised
            started = time.monotonic()
            sock, entry, unreachable = self._reopen(peer, timeout, queue)
            if sock is None:
                return self._leave_letters(peer, entry, texts, ids, receipts, unreachable,
                                           started, on_receipt)
            try:
                self._stream(sock, texts, ids, receipts, timeout, window, on_receipt)
                return receipts
            except (PeerClosed, PeerTimeout) as exc:
                if attempt >= attempts:
                    raise
                attempt += 1
                self._stale(peer, sock, exc)

    def _stale(self, peer: str, sock: zmq.Socket, why: PeerError) -> None:
        """Close a conversation that failed (``why``); the caller opens a new one."""
        log.info("conversation with %s failed (%s); opening a new one", peer, why)
        self._close(sock, say_bye=False, now=time.time())

    def _reopen(self, peer: str, timeout: float, queue: bool,
                ) -> tuple[zmq.Socket | None, dict[str, Any], str]:
        """A new conversation with ``peer``, from a fresh directory look-up: (its PAIR, the
        entry, ""); or, when ``peer`` is offline or does not answer and ``queue`` allows
        letters, (None, the entry, why). Raises otherwise."""
        entry = self.agent.call("lookup", {"username": peer})
        try:
            return self._open(peer, entry, timeout), entry, ""
        except (PeerOffline, PeerTimeout) as exc:
            if not queue:
                raise
            return None, entry, str(exc)

    def _leave_letters(self, peer: str, entry: dict[str, Any], texts: Sequence[str],
                       ids: list[bytes], receipts: list[Receipt], reason: str,
                       started: float, on_receipt: Callable[[Receipt], None] | None = None,
                       ) -> list[Receipt]:
        """Deposit the texts from ``len(receipts)`` on as letters (5.7), sealed end to end
        to the key the directory ``entry`` gives; ``receipts`` with theirs added."""
        key = unb64(entry["public_key"], 32)
        for text, msg_id in zip(texts[len(receipts):], ids[len(receipts):], strict=True):
            self.agent.call("mailbox_deposit", {"to": peer, "sealed": b64(
                self.core.letter(peer, key, text, time.time(), msg_id))})
            receipt = Receipt(peer, 0, "mailbox", time.monotonic() - started,
                              delivered=False, reason=reason)
            receipts.append(receipt)
            if on_receipt is not None:
                on_receipt(receipt)
        return receipts

    def _deliver(self, sock: zmq.Socket, text: str, msg_id: bytes, timeout: float) -> Receipt:
        """One message on ``sock``; its receipt once the ACK came (see :meth:`send`)."""
        conversation = self.conversations[sock]
        started = time.monotonic()
        seq, _, frames = conversation.message(text, time.time(), msg_id)
        self._post(sock, conversation, frames[0], timeout)
        deadline = started + timeout
        wait_ms = int(timeout * 1000)
        while True:
            self._take(sock, conversation, wait_ms, timeout)
            if conversation.acked >= seq:
                return Receipt(conversation.peer, seq, conversation.short_id,
                               time.monotonic() - started)
            if sock not in self.conversations:
                raise PeerClosed(f"{conversation.peer} closed the conversation")
            wait_ms = int((deadline - time.monotonic()) * 1000)

    def _stream(self, sock: zmq.Socket, texts: Sequence[str], ids: list[bytes],
                receipts: list[Receipt], timeout: float, window: int,
                on_receipt: Callable[[Receipt], None] | None) -> None:
        """Send the texts from ``len(receipts)`` on, at most ``window`` unacknowledged, and
        add each one's receipt as its ACK comes; PeerTimeout if the peer acknowledges
        nothing for ``timeout``, PeerClosed if it closes the conversation (``receipts`` then
        says what was delivered)."""
        conversation = self.conversations[sock]
        total, sent = len(texts), len(receipts)
        # (sequence number, monotonic time sent) of each unacknowledged message, oldest
        # first. TCP keeps the conversation in order and the receiver acknowledges every
        # message it accepts, so an ACK of one is an ACK of those sent before it.
        in_flight: deque[tuple[int, float]] = deque()
        wait_ms = int(timeout * 1000)
        deadline = time.monotonic() + timeout
        while True:
            while sent < total and len(in_flight) < window:
                started = time.monotonic()
                seq, _, frames = conversation.message(texts[sent], time.time(), ids[sent])
                self._post(sock, conversation, frames[0], timeout)
                in_flight.append((seq, started))
                sent += 1
            if not in_flight:
                return
            self._take(sock, conversation, wait_ms, timeout)
            acked = conversation.acked
            if in_flight[0][0] <= acked:
                now = time.monotonic()
                while in_flight and in_flight[0][0] <= acked:
                    seq, started = in_flight.popleft()
                    receipt = Receipt(conversation.peer, seq, conversation.short_id,
                                      now - started)
                    receipts.append(receipt)
                    if on_receipt is not None:
                        on_receipt(receipt)
                wait_ms, deadline = int(timeout * 1000), now + timeout  # progress: a new bound
            else:  # the peer's own message, or a stale ACK: the bound runs on
                wait_ms = int((deadline - time.monotonic()) * 1000)
            if sock not in self.conversations and (in_flight or sent < total):
                raise PeerClosed(f"{conversation.peer} closed the conversation")

    @staticmethod
    def _post(sock: zmq.Socket, conversation: Conversation, frame: bytes,
              timeout: float) -> None:
        try:
            sock.send(frame)
        except zmq.Again:
            raise PeerTimeout(f"{conversation.peer} is not taking messages "
                              f"(send timed out after {timeout:g}s)") from None

    def _take(self, sock: zmq.Socket, conversation: Conversation, wait_ms: int,
              timeout: float) -> None:
        """Receive and handle the next message of a conversation we wait on for an ACK:
        right here, in the caller's thread, by a blocking recv bounded by RCVTIMEO (set only
        when it changes, not per message): no poller, no hand-off. PeerTimeout if none."""
        if wait_ms <= 0:
            raise PeerTimeout(f"{conversation.peer} did not acknowledge in {timeout:g}s")
        if self._wait_ms.get(sock) != wait_ms:
            sock.setsockopt(_RCVTIMEO, wait_ms)
            self._wait_ms[sock] = wait_ms
        try:
            frame = sock.recv(copy=False)
        except zmq.Again:
            raise PeerTimeout(f"{conversation.peer} did not acknowledge in "
                              f"{timeout:g}s") from None
        self._on_pair(sock, conversation, frame)  # an ACK, or a message kept for poll()

    def _open(self, peer: str, entry: dict[str, Any], timeout: float) -> zmq.Socket:
        """Send HELLO to the inbox the directory ``entry`` names; connect a PAIR to WELCOME's
        port."""
        if not entry.get("online") or not entry.get("port"):
            raise PeerOffline(f"{peer} is offline (no listening session)")
        address = entry.get("address") or "127.0.0.1"
        if address not in LOOPBACK:
            raise PeerError(f"{peer} listens on {address}, not on loopback; not connecting")
        pending = self.core.hello(peer, unb64(entry["public_key"], 32), time.time())
        dealer = make_socket(self.agent.context, zmq.DEALER, send_timeout=timeout)
        try:
            dealer.connect(tcp_endpoint(address, entry["port"]))
            try:
                dealer.send_multipart(pending.frames)
            except zmq.Again:
                raise PeerTimeout(f"{peer} is not taking conversation requests") from None
            if not dealer.poll(int(timeout * 1000), zmq.POLLIN):
                raise PeerTimeout(f"{peer} did not answer in {timeout:g}s (session gone or "
                                  "not listening)")
            answer = dealer.recv_multipart()
        finally:
            dealer.close(0)
        now = time.time()
        try:
            conversation, port = self.core.welcome_received(pending, answer, now)
        except UnauthenticatedRefusal:
            raise  # reported as it came, in clear: never taken for an answer
        except ProtocolError as exc:
            raise PeerError(f"{peer} answered with something invalid: {exc}") from None
        sock = self._pair()
        sock.connect(tcp_endpoint(address, port))
        self._add(sock, conversation, now)
        log.info("conversation %s with %s opened", conversation.short_id, peer)
        return sock

    # -- letters (offline mailbox) ------------------------------------------------------------

    def fetch_letters(self, now: float) -> None:
        """Fetch, check and queue the letters left at the broker, then delete them there."""
        try:
            for _ in range(100):  # bounded: the mailbox holds at most 100 letters anyway
                batch = self.agent.call("mailbox_fetch", {})
                letters = batch.get("letters") or []
                keys: dict[str, bytes | None] = {}
                for letter in letters:
                    self._open_letter(letter, keys, now)
                if not letters:
                    return
                self._save_seen_letters()  # before deleting: a crash in between cannot
                self.agent.call("mailbox_delete",  # show a letter twice
                                {"upto": max(int(x["id"]) for x in letters)})
                if not batch.get("more"):
                    return
        except AgoraError as exc:
            log.info("could not fetch letters (will try again): %s", exc)

    def _open_letter(self, letter: dict[str, Any], keys: dict[str, bytes | None],
                     now: float) -> None:
        sender = str(letter.get("from", ""))
        try:
            if sender not in keys:
                try:
                    entry = self.agent.call("lookup", {"username": sender})
                    keys[sender] = unb64(entry["public_key"], 32)
                except RemoteError:
                    keys[sender] = None  # unknown or revoked since: their letters are void
            key = keys[sender]
            if key is None:
                raise ProtocolError(f"{sender[:64]!r} is no longer in the directory")
            msg = self.core.open_letter(sender, key, unb64(str(letter.get("sealed", ""))), now)
        except ProtocolError as exc:
            self._drop(f"a letter from {sender[:64]!r}", exc)
            return
        if msg is not None:
            self.incoming.append(msg)

    def _load_seen_letters(self) -> dict[str, float]:
        try:
            seen = loads(self.letters_path.read_text())
            return {str(k): float(v) for k, v in seen.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, AttributeError, TypeError, OSError) as exc:
            log.warning("ignoring unreadable %s: %s", self.letters_path, exc)
            return {}

    def _save_seen_letters(self) -> None:
        atomic_write(self.letters_path, json.dumps(self.core.seen_letters).encode())
