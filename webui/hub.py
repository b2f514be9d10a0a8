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
        self._streams: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = set()
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
        for loop, queue in streams:
            with contextlib.suppress(RuntimeError):  # that loop has already stopped
                loop.call_soon_threadsafe(_offer, queue, event)

    @property
    def streams(self) -> int:
        with self._lock:
            return len(self._streams)

    async def events(self, hello: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """``hello`` first, then every published event until the hub closes."""
        entry = (asyncio.get_running_loop(), asyncio.Queue(self.queue_size))
        with self._lock:
            self._streams.add(entry)
        try:
            yield hello
            while not self.closed:
                event = await entry[1].get()
                if event is None:
                    return
                yield event
        finally:
            with self._lock:
                self._streams.discard(entry)

    def response(self, hello: dict[str, Any]) -> EventSourceResponse:
        async def stream() -> AsyncIterator[ServerSentEvent]:
            async for event in self.events(hello):
                yield ServerSentEvent(data=json.dumps(event, default=str))

        return EventSourceResponse(stream(), ping=PING_INTERVAL,
                                   headers={"Cache-Control": "no-store"})


def _offer(queue: asyncio.Queue, event: dict[str, Any] | None) -> None:
    if event is None:
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)
        return
    if queue.full():
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait({"kind": "resync", "data": None})
        return
    queue.put_nowait(event)
