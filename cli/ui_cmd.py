"""``agora ui`` (a collaborator's web console) and ``agora admin ui`` (the operator's).

Each serves a page on 127.0.0.1 at an OS-chosen port and prints its address with a
one-time access token; the page talks only to this process, which does every bit of
crypto, ZeroMQ and multicast (:mod:`webui`). Ctrl-C or SIGTERM stops it cleanly.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from agents.auction import DEFAULT_AUCTIONEER
from agora.protocol import DEFAULT_AUCTION_ENDPOINT, DEFAULT_MULTICAST_INTERFACE
from cli.auction_cmd import AuctioneerOption, EndpointOption, InterfaceOption
from cli.common import (
    BrokerOption,
    DataDirOption,
    HomeOption,
    TimeoutOption,
    default_data_dir,
    default_home,
    fail,
    password,
    user_errors,
)

NoBrowserOption = Annotated[bool, typer.Option(
    "--no-browser", help="Only print the address; do not open a browser.")]
PortOption = Annotated[int, typer.Option(
    "--port", envvar="AGORA_UI_PORT", help="Port on 127.0.0.1 (0: the OS chooses). "
    "[env: AGORA_UI_PORT]", min=0, max=65535)]


def _bind(port: int):
    from webui.serve import bind_local

    try:
        return bind_local(port)
    except OSError as exc:
        raise fail(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None


def admin_ui(
    data_dir: DataDirOption = None,  # type: ignore[assignment]
    port: PortOption = 0,
    no_browser: NoBrowserOption = False,
) -> None:
    """The operator's console in a browser: principals, enroll, set-level, revoke,
    re-enroll, and the audit trail live.

    Run it on the broker host, over the broker's data directory; it changes the
    store as `agora admin` does, and a running broker picks the changes up at
    once. Prints the address to open (with its access token); Ctrl-C stops it.
    """
    from webui.hub import EventHub
    from webui.operator import OperatorConsole, operator_app
    from webui.security import Access
    from webui.serve import run_console

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    with user_errors():
        hub = EventHub()
        console = OperatorConsole(data_dir or default_data_dir(), hub)  # NoBroker: one line
        try:
            sock, bound = _bind(port)
        except BaseException:
            console.close()
            raise
        access = Access(bound)
        console.start()
        run_console(sock, access, operator_app(console, access), hub,
                    "agora admin ui", not no_browser, console.close)


def ui(
    home: HomeOption = None,  # type: ignore[assignment]
    broker: BrokerOption = None,
    auctioneer: AuctioneerOption = DEFAULT_AUCTIONEER,
    endpoint: EndpointOption = DEFAULT_AUCTION_ENDPOINT,
    interface: InterfaceOption = DEFAULT_MULTICAST_INTERFACE,
    port: PortOption = 0,
    timeout: TimeoutOption = 2.5,
    no_browser: NoBrowserOption = False,
) -> None:
    """Your console in a browser: the live auction (bid with a click), peer messages,
    and the services your level lets you call.

    Asks your password as `agora login` does, logs in and keeps the session
    while it runs. Prints the address to open (with its access token) and opens
    your browser unless --no-browser. Ctrl-C logs out and stops.
    """
    from agents import Agent
    from webui.collab import CollabConsole, collab_app
    from webui.hub import EventHub
    from webui.security import Access
    from webui.serve import run_console

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    with user_errors():
        sock, bound = _bind(port)
        agent = Agent(home or default_home(), broker=broker, timeout=timeout)
        try:
            agent.unlock(password())  # the person first, locally ...
            agent.login(listen=True)  # ... then the agent, to the broker
        except BaseException:
            agent.close()
            sock.close()
            raise
        access, hub = Access(bound), EventHub()
        console = CollabConsole(agent, hub, auctioneer, endpoint, interface, timeout)
        console.start()
        run_console(sock, access, collab_app(console, access), hub, "agora ui",
                    not no_browser, console.close)
