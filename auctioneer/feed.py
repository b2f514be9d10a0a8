"""The broker's pushed membership, fetched and followed on a thread of its own.

The auctioneer's core never calls the broker (PROTOCOL.md 6.5). This thread is the only
user of the auctioneer's :class:`~agents.agent.Agent` while the server runs: it subscribes
to the broker's notices with membership (service principals only), fetches the
``membership`` snapshot after each subscription and whenever the core asks for one, and puts
events on a queue the server's loop feeds to the core between requests:

- ``("snapshot", {"version", "members"}, t)``: the whole valid membership;
- ``("changed", notice fields, t)``: one pushed ``membership`` notice;
- ``("heard", None, t)``: the broker was last heard (any authenticated message) at ``t``.

A broker that is down only delays these events; the core fails closed on its own clock.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from agents.agent import Agent
from agents.notices import UNKNOWN_SESSION, NoticeStream
from agora.errors import AgoraError
from agora.protocol import NoticeType

log = logging.getLogger("agora.auctioneer")

#: Seconds between two attempts to subscribe (or log in again) while the broker is away.
RETRY_INTERVAL = 1.0


class MembershipFeed:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.events: queue.Queue[tuple[str, Any, float]] = queue.Queue()
        self.want_snapshot = threading.Event()
        self.stop = threading.Event()
        self._stream: NoticeStream | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self._step()
            except AgoraError as exc:
                log.warning("membership from the broker unavailable: %s", exc)
                self._drop_stream()
                self.stop.wait(RETRY_INTERVAL)
            except Exception:  # a bug must not end the feed: the core would fail closed
                log.exception("internal error in the membership feed")
                self._drop_stream()
                self.stop.wait(RETRY_INTERVAL)
        self._drop_stream()

    def _step(self) -> None:
        if self._stream is None:
            if self.agent.session is None:
                self.agent.login(listen=False)
            self._stream = self.agent.subscribe(membership=True, timeout=2.0)
            self.want_snapshot.set()
        if self.want_snapshot.is_set():
            self.want_snapshot.clear()
            answer = self.agent.call("membership")
            self.events.put(("snapshot", answer, time.time()))
        for notice in self._stream.poll(0.2):
            if notice.type == NoticeType.MEMBERSHIP.value and notice.authenticated:
                self.events.put(("changed", notice.fields, time.time()))
            elif notice.type == NoticeType.SESSION_ENDED.value or \
                    notice.type == UNKNOWN_SESSION:
                log.warning("the auctioneer's broker session ended (%s); logging in again",
                            notice.reason or notice.type)
                self.agent.session = None
                self._drop_stream()
                return
        silent = self._stream.silent_for()
        if self._stream.subscribed:
            self.events.put(("heard", None, time.time() - silent))

    def _drop_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
