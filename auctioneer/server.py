"""The auctioneer's sockets: a thin shell around :class:`auctioneer.core.AuctioneerCore`.

Two threads, as the seed asks:

- the **join service** (:meth:`AuctioneerServer.serve`): the ROUTER socket for JOIN, BID,
  SNAPSHOT and RESULTS, the clock (``core.tick``) and the items folder;
- the **publisher** (:class:`Publisher`): sends every announcement datagram on UDP
  multicast and, byte for byte, on the ZeroMQ PUB mirror.

They share nothing but a queue of already signed datagrams. The loop answers a batch of
requests as soon as its bids are committed, and publishes their events a little later
(``ANNOUNCE_DELAY``): every event announced meanwhile shares one sealed, signed datagram.
The auctioneer is a service principal of the broker: a third thread
(:class:`~auctioneer.feed.MembershipFeed`) follows the membership the broker pushes, and
the loop feeds it to the core between requests; no request ever waits for the broker. A
fourth checkpoints the store's WAL into its file (its fsyncs), so that no commit of the
loop waits for one.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from pathlib import Path

import zmq

from agents.agent import Agent
from agora.auction_wire import clear_error
from agora.crypto import PrivateKey
from agora.errors import AgoraError
from agora.files import InstanceLock, private_dir
from agora.keyfile import load_or_create
from agora.multicast import check_group, open_sender, send_datagram
from agora.protocol import (
    DEFAULT_AUCTION_ENDPOINT,
    DEFAULT_AUCTION_PUB,
    DEFAULT_MULTICAST_GROUP,
    DEFAULT_MULTICAST_INTERFACE,
    DEFAULT_MULTICAST_PORT,
    DEFAULT_MULTICAST_TTL,
    DEFAULT_SOFT_CLOSE,
    ErrorCode,
)
from agora.sockets import ConnectionGuard, bind_router, make_socket, recv_bounded
from auctioneer.core import AuctionConfig, AuctioneerCore
from auctioneer.feed import MembershipFeed
from auctioneer.items import ItemFolder
from auctioneer.store import AuctionStore

log = logging.getLogger("agora.auctioneer")

POLL_MS = 100
#: Held by the running auctioneer: a second one on the same data directory is refused.
PID_FILE = "auctioneer.pid"
SNDMORE = zmq.SNDMORE.value  # plain ints: no enum operations per frame
NOBLOCK = zmq.NOBLOCK.value
RCVTIMEO = zmq.RCVTIMEO.value
#: Requests answered per group commit at most (then the clock runs again).
BATCH = 1000
#: Seconds an announcement may wait for others to share its datagram (one seal and one
#: signature for all, so one check per datagram for every watcher): while bids stream in,
#: a datagram goes out this often; an event announced on its own waits this long at most.
ANNOUNCE_DELAY = 0.010
#: How often the loop reads the connection monitor (ConnectionGuard.service).
GUARD_INTERVAL = 0.01
#: Seconds between two checkpoints of the store's WAL, made off the request loop.
CHECKPOINT_INTERVAL = 0.5
#: How often an idle auctioneer looks for new item files.
SCAN_INTERVAL = 0.5
#: An item file changed this recently may still be being written; wait for it.
SETTLE_TIME = 0.3


class Publisher:
    """Sends queued datagrams on multicast and the PUB mirror until ``stop`` is set."""

    def __init__(self, context: zmq.Context, pub_bind: str, group: str, port: int,
                 interface: str = DEFAULT_MULTICAST_INTERFACE,
                 ttl: int = DEFAULT_MULTICAST_TTL) -> None:
        self.group, self.port = check_group(group), port
        self.udp = open_sender(interface, ttl)
        self.pub = make_socket(context, zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, 10_000)
        self.pub.bind(pub_bind)
        self.endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.queue: queue.Queue[list[bytes]] = queue.Queue()  # datagrams, a batch at a time
        self.stop = threading.Event()
        self.sent = 0

    def publish(self, datagram: bytes) -> None:
        send_datagram(self.udp, datagram, self.group, self.port)
        try:
            self.pub.send(datagram, zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # PUB drops at the high-water mark; log and go on
            log.warning("PUB mirror send failed: %s", exc.strerror)
        self.sent += 1

    def serve(self) -> None:
        # Drains the queue before stopping, so a CLOSED announcement is not lost at exit.
        while not (self.stop.is_set() and self.queue.empty()):
            try:
                batch = self.queue.get(timeout=POLL_MS / 1000)
            except queue.Empty:
                continue
            for datagram in batch:
                self.publish(datagram)

    def close(self) -> None:
        self.pub.close(0)
        self.udp.close()


def claim(data_dir: Path) -> InstanceLock:
    """The auctioneer's data directory (made 0700 if missing), for this process alone: one
    auctioneer per directory, since two would auction the same items, each closing them and
    announcing its own winner. Taken before anything else, so a second one is refused before
    it logs in or opens a socket."""
    return InstanceLock(private_dir(Path(data_dir)) / PID_FILE, "auctioneer")


class AuctioneerServer:
    """Owns the sockets, the store and the core. ``serve()`` runs until ``stop`` is set.

    ``agent`` must be logged in (a service principal); its registered Curve25519 key is the
    auctioneer's, which bidders learn from the broker's ``lookup``.
    """

    def __init__(self, agent: Agent, items_dir: Path, data_dir: Path,
                 endpoint: str = DEFAULT_AUCTION_ENDPOINT, pub: str = DEFAULT_AUCTION_PUB,
                 group: str = DEFAULT_MULTICAST_GROUP, port: int = DEFAULT_MULTICAST_PORT,
                 interface: str = DEFAULT_MULTICAST_INTERFACE, ttl: int = DEFAULT_MULTICAST_TTL,
                 soft_close: float = DEFAULT_SOFT_CLOSE, pause: float = 1.0,
                 context: zmq.Context | None = None, running: InstanceLock | None = None,
                 ) -> None:
        self.context = context or zmq.Context.instance()
        self.folder = ItemFolder(items_dir)
        self.running = running or claim(data_dir)  # see claim(); `auctioneer start` claims first
        data_dir = Path(data_dir)
        try:
            self.store = AuctionStore(data_dir / "auction.db")
            for path in data_dir.glob("auction.db*"):
                os.chmod(path, 0o600)
            # The Ed25519 signing key is the auctioneer's own; bidders get its verify key
            # inside the Box-authenticated join answer.
            self.signing_key = load_or_create(data_dir / "auctioneer.key").signing_key
            self.publisher = Publisher(self.context, pub, group, port, interface, ttl)
            self.socket, self.endpoint = bind_router(self.context, endpoint)
        except BaseException:
            self.running.release()
            raise
        # Connections are bounded, and their memory goes back when they close (issue 10).
        self.guard = ConnectionGuard(self.socket)
        config = AuctionConfig(group, port, self.publisher.endpoint, soft_close)
        self.core = AuctioneerCore(PrivateKey(agent.credentials.private_key),
                                   self.signing_key, self.store, config, time.time())
        # From here on the agent belongs to the feed's thread.
        self.feed = MembershipFeed(agent)
        self._feed_thread = threading.Thread(target=self.feed.run, name="membership",
                                             daemon=True)
        self._feed_thread.start()
        self.pause = pause
        self.stop = threading.Event()
        self._next_scan = 0.0
        self._next_guard = 0.0
        self._wait_ms = -1  # the socket's RCVTIMEO (libzmq's default: wait for ever)
        self._announce_at: float | None = None  # when what waits in the outbox must go

    def serve(self) -> None:
        log.info("auctioneer listening on %s, announcing on %s:%d and %s",
                 self.endpoint, self.core.config.group, self.core.config.port,
                 self.publisher.endpoint)
        thread = threading.Thread(target=self.publisher.serve, name="publisher", daemon=True)
        thread.start()
        checkpoints = threading.Thread(target=self._checkpoints, name="checkpoint",
                                       daemon=True)
        checkpoints.start()
        try:
            while not self.stop.is_set():
                # The first request of a batch is waited for in recv itself (RCVTIMEO), not
                # in a poll before it: one call into libzmq less per batch.
                self._wait_at_most(self._poll_ms())
                try:
                    first = recv_bounded(self.socket, guard=self.guard)
                    arrived = True
                except zmq.Again:
                    first, arrived = None, False
                self._membership()  # first: a join may follow its registration closely
                if arrived:
                    self._serve_batch(first)
                now = time.time()
                if now >= self._next_guard:  # the connection monitor, not per request batch
                    self._next_guard = now + GUARD_INTERVAL
                    self.guard.service(now)
                self._tick(now)
                if self.core.idle and now >= self._next_scan:
                    self._next_scan = now + SCAN_INTERVAL
                    self._open_next(now)
                self._flush_due(time.monotonic())
        finally:
            self.stop.set()  # however the loop ended: the checkpoint thread stops too
            self._flush()
            self.publisher.stop.set()
            self.feed.stop.set()
            thread.join(timeout=5)
            checkpoints.join(timeout=5)
            self._feed_thread.join(timeout=5)
            log.info("auctioneer stopped")

    def _checkpoints(self) -> None:
        """The store's checkpoints (its fsyncs), on this thread: a commit of the request
        loop never waits for one. A failure is logged and tried again later."""
        while not self.stop.wait(CHECKPOINT_INTERVAL):
            try:
                self.store.checkpoint()
            except Exception:
                log.exception("could not checkpoint the auction database; will try again")

    def wait_for_membership(self, timeout: float) -> bool:
        """Apply the broker's first membership snapshot before serving, waiting up to
        ``timeout`` seconds; False if it has not come (joins are refused until it does)."""
        deadline = time.monotonic() + timeout
        while self.core.roster.version is None and time.monotonic() < deadline:
            self.stop.wait(0.05)
            self._membership()
        return self.core.roster.version is not None

    def _membership(self) -> None:
        """Feed the broker's pushed membership to the core (events in), and pass on the
        core's wish for a fresh snapshot (effect out)."""
        if self.feed.events.empty() and not self.core.wants_snapshot:
            return  # the usual case, checked without raising queue.Empty
        for _ in range(1000):
            try:
                event, value, at = self.feed.events.get_nowait()
            except queue.Empty:
                break
            try:
                if event == "snapshot":
                    self.core.membership_snapshot(int(value["version"]),
                                                  list(value["members"]), at)
                elif event == "changed":
                    self.core.member_changed(value, at)
                else:
                    self.core.broker_heard(at)
            except (KeyError, TypeError, ValueError):
                log.warning("ignored a malformed membership %s from the broker", event)
            except Exception:
                log.exception("internal error applying membership; still serving")
        if self.core.wants_snapshot:
            self.feed.want_snapshot.set()

    def _tick(self, now: float) -> None:
        """The core's clock, guarded as requests are: a bug in a timer costs that tick,
        never the auctioneer (the next tick runs as usual)."""
        try:
            for name in self.core.tick(now):
                self.folder.finish(name)
                self._next_scan = now + self.pause
        except Exception:
            log.exception("internal error in the auctioneer's timers; still serving")

    def _wait_at_most(self, ms: int) -> None:
        if ms != self._wait_ms:
            self.socket.setsockopt(RCVTIMEO, ms)
            self._wait_ms = ms

    def _serve_batch(self, first: list[bytes] | None) -> None:
        """Answer ``first`` (None: it was over the bound, dropped) and every request waiting
        after it (at most BATCH in all) with one commit for all their bids.

        Group commit: the bids of the batch are stored in one transaction; only once it is
        committed are their announcements queued and their answers sent, so nothing is
        acknowledged or announced that a crash could still lose.
        """
        answers: list[list[bytes]] = []
        try:
            with self.store.batch():
                frames, taken = first, 1
                while True:
                    if frames is not None:  # None: over the whole-message bound, dropped
                        answer = self._dispatch(frames)
                        if answer is not None:
                            answers.append(answer)
                    if taken >= BATCH:
                        break
                    try:
                        frames = recv_bounded(self.socket, NOBLOCK, guard=self.guard)
                    except zmq.Again:
                        break
                    taken += 1
        except Exception:
            # Nothing of this batch was stored: announce none of it, answer none of it,
            # and stop (a restart resumes from what the store holds, under a new epoch; the
            # events of earlier batches still waiting to go out go too, as in a crash, and
            # watchers recover them from the restarted auctioneer's snapshot).
            self.core.take_outbox()
            log.exception("could not store a batch of bids; stopping")
            raise
        # Stored: now answer. The batch's events are announced with the next datagram
        # (_flush_due), sealed and signed together with whatever else came meanwhile.
        socket = self.socket
        for *head, last in answers:
            try:
                for frame in head:
                    socket.send(frame, SNDMORE)
                socket.send(last)
            except zmq.ZMQError as exc:
                log.info("could not send reply: %s", exc.strerror)

    def _dispatch(self, frames: list[bytes]) -> list[bytes] | None:
        """The answer to one request, with its routing envelope; None to drop it."""
        # [identity, empty, body...] from a REQ socket.
        if len(frames) < 3 or frames[1] != b"":
            log.info("dropped a message without a routing envelope")
            return None
        try:
            reply = self.core.handle(frames[2:], time.time())
        except Exception:  # a bug must cost one request, not the auction
            log.exception("internal error while handling a request")
            reply = clear_error(None, ErrorCode.INTERNAL, "internal error; try again")
        return [frames[0], b"", *reply]

    def _open_next(self, now: float) -> None:
        for path in self.folder.pending():
            try:
                if now - path.stat().st_mtime < SETTLE_TIME:
                    return  # still being written, perhaps: look again at the next scan
            except OSError:
                continue
            try:
                self.core.open_item(self.folder.read(path), path.name, now)
                return
            except AgoraError as exc:
                self.folder.reject(path, str(exc))

    def _poll_ms(self) -> int:
        """Wait for requests until the announcements waiting must go out, POLL_MS at most."""
        if self._announce_at is None:
            return POLL_MS
        return max(0, math.ceil((self._announce_at - time.monotonic()) * 1000))

    def _flush_due(self, now: float) -> None:
        """Publish what was announced once the oldest of it has waited ANNOUNCE_DELAY."""
        if self._announce_at is None:
            if self.core.has_outbox:
                self._announce_at = now + ANNOUNCE_DELAY
        elif now >= self._announce_at:
            self._flush()

    def _flush(self) -> None:
        self._announce_at = None
        datagrams = self.core.take_outbox()
        if datagrams:
            self.publisher.queue.put(datagrams)

    def close(self) -> None:
        self.feed.stop.set()
        self._feed_thread.join(timeout=5)
        self.guard.close()
        self.socket.close(0)
        self.publisher.close()
        self.store.close()
        self.running.release()
