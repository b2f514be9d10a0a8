"""The consoles' event hub: fed from threads, bounded per page, closed at shutdown."""

from __future__ import annotations

import asyncio
import threading

from webui.hub import EventHub


def test_a_page_that_falls_behind_gets_one_resync_not_a_backlog():
    async def scenario():
        hub = EventHub(queue_size=3)
        stream = hub.events({"kind": "hello"})
        assert (await anext(stream))["kind"] == "hello"
        publisher = threading.Thread(target=lambda: [hub.publish("auction", n)
                                                     for n in range(50)])
        publisher.start()
        publisher.join()
        await asyncio.sleep(0.05)  # let the loop run the hand-overs
        resync = await anext(stream)  # the page reloads its state: nothing was queued after
        hub.publish("message", "latest")
        await asyncio.sleep(0.05)
        seen = [resync, await anext(stream)]
        hub.close()
        rest = [event async for event in stream]
        return seen, rest, hub.streams

    seen, rest, streams = asyncio.run(scenario())
    assert seen == [{"kind": "resync", "data": None}, {"kind": "message", "data": "latest"}]
    assert rest == [] and streams == 0  # closing the hub ended the stream and forgot it
