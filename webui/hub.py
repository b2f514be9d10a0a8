"""Live updates for a console's pages: background threads publish, each event stream reads.

:class:`EventHub` is fed from any thread (the agent's worker, the auction follower, the
store watcher) and fans events out to every open ``/events`` stream through the stream's
own asyncio loop. Each stream has a bounded queue: a page that does not keep up gets one
``resync`` event (it then reloads its state) instead of an ever-growing backlog. Closing
the hub ends every stream, so the server can stop promptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette.sse import EventSourceResponse, ServerSentEvent

#: Events waiting per open page before it is told to resync.
QUEUE_SIZE = 200
#: Seconds between keep-alive comments on an idle stream.
PING_INTERVAL = 5


class EventHub:
    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self._lock = threading.Lock()
        self._streams: set[_Stream] = set()
        self.closed = False

    def publish(self, kind: str, data: Any = None) -> None:
        """Send ``{"kind", "data"}`` to every open stream; safe from any thread."""
        self._fan_out({"kind": kind, "data": data})

    def close(self) -> None:
        """End every stream (shutdown)."""
        self.closed = True
        self._fan_out(None)

    def _fan_out(self, event: dict[str, Any] | None) -> None:
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            with contextlib.suppress(RuntimeError):  # that loop has already stopped
                stream.loop.call_soon_threadsafe(stream.offer, event)

    @property
    def streams(self) -> int:
        with self._lock:
            return len(self._streams)

    async def events(self, hello: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """``hello`` first, then every published event until the hub closes."""
        stream = _Stream(asyncio.get_running_loop(), self.queue_size)
        with self._lock:
            self._streams.add(stream)
        try:
            yield hello
            while not self.closed:
                event = await stream.queue.get()
                if event is None:
                    return
                if event is RESYNC:
                    stream.resync_pending = False
                yield event
        finally:
            with self._lock:
                self._streams.discard(stream)

    def response(self, hello: dict[str, Any]) -> EventSourceResponse:
        async def stream() -> AsyncIterator[ServerSentEvent]:
            async for event in self.events(hello):
                yield ServerSentEvent(data=json.dumps(event, default=str))

        return EventSourceResponse(stream(), ping=PING_INTERVAL,
                                   headers={"Cache-Control": "no-store"})


RESYNC: dict[str, Any] = {"kind": "resync", "data": None}


class _Stream:
    """One open page's queue; touched only from its own event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(size)
        self.resync_pending = False

    def offer(self, event: dict[str, Any] | None) -> None:
        if event is None:  # the hub closed: nothing else matters
            self._clear()
            self.queue.put_nowait(None)
        elif self.resync_pending:
            pass  # the page reloads its whole state when it reaches the resync
        elif self.queue.full():
            self._clear()
            self.resync_pending = True
            self.queue.put_nowait(RESYNC)
        else:
            self.queue.put_nowait(event)

    def _clear(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
