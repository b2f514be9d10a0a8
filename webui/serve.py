"""Running a console: bind 127.0.0.1, print the address with its token, serve until stopped.

The socket is bound before the app is built, so the app's :class:`~webui.security.Access`
knows its port (the Host and Origin it accepts, its cookie's name). uvicorn runs with its
access log off (the first request's URL carries the token). Ctrl-C or SIGTERM ends the
event streams first (so nothing keeps the server waiting), then the server, then
``on_stop`` stops the console's own threads.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import webbrowser
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from webui.assets import STATIC_DIR
from webui.hub import EventHub
from webui.security import Access, Guard, PageError, page_error

log = logging.getLogger("agora.ui")

#: Seconds uvicorn waits for open requests at shutdown.
GRACEFUL_SHUTDOWN = 2


def console_app(index: Callable, state: Callable, action: Callable, hub: EventHub) -> Starlette:
    """The routes every console has: its page, its state, its actions (POST), its event
    stream and its static files; a PageError anywhere is answered as one clear message."""

    async def events(request: Any) -> Any:
        return hub.response({"kind": "hello", "data": None})

    return Starlette(routes=[
        Route("/", index),
        Route("/api/state", state),
        Route("/api/action", action, methods=["POST"]),
        Route("/events", events),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ], exception_handlers={PageError: page_error})


def bind_local(port: int = 0) -> tuple[socket.socket, int]:
    """A listening TCP socket on 127.0.0.1 (``port`` 0: the OS chooses)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    sock.listen(64)
    return sock, sock.getsockname()[1]


class ConsoleServer(uvicorn.Server):
    """uvicorn's server, closing the event hub as soon as it is told to exit."""

    def __init__(self, config: uvicorn.Config, hub: EventHub) -> None:
        super().__init__(config)
        self.hub = hub

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.hub.close()
        super().handle_exit(sig, frame)


def run_console(sock: socket.socket, access: Access, app: ASGIApp, hub: EventHub,
                name: str, open_browser: bool,
                on_stop: Callable[[], None] | None = None) -> None:
    """Serve ``app`` behind the Guard on ``sock`` until Ctrl-C / SIGTERM."""
    config = uvicorn.Config(Guard(app, access), log_level="warning", access_log=False,
                            lifespan="off", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
                            server_header=False)
    server = ConsoleServer(config, hub)
    # On stdout, flushed: people copy it, scripts (and the tests) read it.
    print(f"{name} ready at {access.url}", flush=True)
    print("Open that address (it carries this console's access token; keep it to "
          "yourself). Ctrl-C stops.", file=sys.stderr, flush=True)
    if open_browser and _has_display():
        try:
            webbrowser.open(access.url)
        except webbrowser.Error:
            log.info("no browser to open")
    # uvicorn re-raises the signal that stopped it once it is done; this handler takes it
    # (and any signal before uvicorn's own are in place), so the console's threads still
    # stop and the session is logged out, and the exit code is 0.
    previous = {sig: signal.signal(sig, lambda signum, frame: _stop(server))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        hub.close()
        sock.close()
        try:
            if on_stop is not None:
                on_stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _has_display() -> bool:
    """A graphical browser can open here (not over plain SSH, where it would take the
    terminal over with a text browser)."""
    return sys.platform != "linux" or bool(os.environ.get("DISPLAY")
                                           or os.environ.get("WAYLAND_DISPLAY"))


def _stop(server: ConsoleServer) -> None:
    server.hub.close()
    server.should_exit = True
