"""``agora auctioneer start`` and ``agora auction join|watch|bid|results``.

The auctioneer is an enrolled *service* principal: enroll it with ``agora admin enroll
--kind service``, register it with ``agora register --home DIR``, then start it with the
same home (password from AGORA_PASSWORD). Bidders name it by username (``--auctioneer``,
AGORA_AUCTIONEER); its key comes from the broker, never from the auctioneer itself. Each
bidder command joins afresh, so no group key is ever written to disk.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from agents import Agent
from agents.auction import DEFAULT_AUCTIONEER, AuctionClient, AuctionWatcher
from agents.auction_view import AuctionView, JoinInfo
from agora.auction_wire import format_money
from agora.errors import LocalError, RemoteError
from agora.protocol import (
    DEFAULT_AUCTION_ENDPOINT,
    DEFAULT_AUCTION_PUB,
    DEFAULT_MULTICAST_GROUP,
    DEFAULT_MULTICAST_INTERFACE,
    DEFAULT_MULTICAST_PORT,
    DEFAULT_MULTICAST_TTL,
    DEFAULT_SOFT_CLOSE,
    HEARTBEAT_INTERVAL,
)
from cli import options
from cli.agent_cmd import ended_by_broker, session
from cli.broker_cmd import setup_logging
from cli.common import (
    DEFAULT_HOME,
    BrokerOption,
    HomeOption,
    JsonOption,
    TimeoutOption,
    console,
    default_home,
    describe,
    fail,
    password,
    print_json,
    progress,
    shown,
    user_errors,
)

auctioneer_app = typer.Typer(help="Run the auctioneer.", no_args_is_help=True)
auction_app = typer.Typer(
    help="Take part in the auction: join, watch, bid, results.", no_args_is_help=True)

EndpointOption = Annotated[str, typer.Option(
    "--endpoint", envvar="AGORA_AUCTION", help="The auctioneer's request endpoint. "
    "[env: AGORA_AUCTION]", metavar="ENDPOINT", parser=options.endpoint)]
AuctioneerOption = Annotated[str, typer.Option(
    "--auctioneer", envvar="AGORA_AUCTIONEER", help="The auctioneer's username at the "
    "broker; its key is looked up there. [env: AGORA_AUCTIONEER]")]
InterfaceOption = Annotated[str, typer.Option(
    "--interface", envvar="AGORA_MULTICAST_IF", help="Local address for multicast "
    "(127.0.0.1 keeps it on this host). [env: AGORA_MULTICAST_IF]", metavar="ADDRESS",
    parser=options.ipv4_address)]


@auctioneer_app.command("start")
def start(
    items: Annotated[Path, typer.Option("--items", envvar="AGORA_ITEMS", help="Folder of "
                                        "item files (*.json), auctioned in name order.",
                                        metavar="DIR", parser=options.existing_directory)],
    home: HomeOption = None,  # type: ignore[assignment]
    broker: BrokerOption = None,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", envvar="AGORA_AUCTION_DIR", help="Auction database and signing key. "
        "[env: AGORA_AUCTION_DIR]", show_default=False, metavar="DIR",
        parser=options.directory)] = None,
    bind: Annotated[str, typer.Option("--bind", envvar="AGORA_AUCTION", help="Endpoint to "
                                      "bind for joins and bids. [env: AGORA_AUCTION]",
                                      metavar="ENDPOINT", parser=options.endpoint)
                    ] = DEFAULT_AUCTION_ENDPOINT,
    pub: Annotated[str, typer.Option("--pub", envvar="AGORA_AUCTION_PUB",
                                     help="PUB mirror endpoint to bind.", metavar="ENDPOINT",
                                     parser=options.endpoint)] = DEFAULT_AUCTION_PUB,
    group: Annotated[str, typer.Option("--group", envvar="AGORA_MULTICAST_GROUP",
                                       help="Multicast group (239.255.0.0/16).",
                                       metavar="GROUP", parser=options.multicast_group)
                     ] = DEFAULT_MULTICAST_GROUP,
    port: Annotated[int, typer.Option("--port", envvar="AGORA_MULTICAST_PORT",
                                      help="Multicast UDP port.", min=1, max=65535)
                  ] = DEFAULT_MULTICAST_PORT,
    interface: InterfaceOption = DEFAULT_MULTICAST_INTERFACE,
    ttl: Annotated[int, typer.Option("--ttl", envvar="AGORA_MULTICAST_TTL",
                                     help="Multicast TTL; 0 keeps it on this host.",
                                     min=0, max=255)] = DEFAULT_MULTICAST_TTL,
    soft_close: Annotated[float, typer.Option(
        "--soft-close", help="Seconds: a bid this close to the end extends it by as much.",
        metavar="SECONDS", parser=options.duration)
    ] = DEFAULT_SOFT_CLOSE,
    pause: Annotated[float, typer.Option("--pause", help="Seconds between two items.",
                                         metavar="SECONDS", parser=options.duration)] = 1.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the auctioneer until Ctrl-C or SIGTERM.

    Logs in to the broker as the service principal registered in --home, then
    auctions the item files of --items one after another, moving each to done/
    (or rejected/, with a .reason file). Killed and restarted, it resumes the
    open item with its bids.
    """
    from auctioneer.server import AuctioneerServer, claim

    setup_logging(verbose)
    with user_errors():
        directory = data_dir or DEFAULT_HOME / "auctioneer"
        running = claim(directory)  # before the password and the login: nothing wasted
        agent = Agent(home or default_home(), broker=broker)
        agent.unlock(password())
        agent.login(listen=False)  # a service process: peers never talk to it
        if agent.info and agent.info.kind != "service":
            raise fail(f"{agent.info.username} is a {agent.info.kind} principal; enroll the "
                       "auctioneer with --kind service")
        try:
            server = AuctioneerServer(agent, items, directory, bind, pub, group, port,
                                      interface, ttl, soft_close, pause, agent.context,
                                      running)
        except LocalError:
            raise
        except Exception as exc:  # zmq bind errors, bad interface...
            raise fail(f"cannot start auctioneer: {exc}") from None

        if not server.wait_for_membership(10.0):
            print("agora auctioneer: no membership from the broker yet; joins and bids are "
                  "refused until it comes", file=sys.stderr, flush=True)

        def stop(signum: int, frame: object) -> None:
            server.stop.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        print(f"agora auctioneer ready at {server.endpoint} pub {server.publisher.endpoint} "
              f"group {group}:{port} as {agent.username}", flush=True)
        try:
            server.serve()
        finally:
            server.close()
            with contextlib.suppress(Exception):
                agent.logout()
            agent.close()


@contextlib.contextmanager
def joined(home: Path | None, broker: str | None, timeout: float, auctioneer: str,
           endpoint: str, quiet: bool = False) -> Iterator[tuple[AuctionClient, JoinInfo]]:
    """Log in, look the auctioneer up at the broker, join; always cleaned up."""
    with session(home, broker, timeout, quiet=quiet) as agent, \
            joined_as(agent, timeout, auctioneer, endpoint, quiet) as pair:
        yield pair


@contextlib.contextmanager
def joined_as(agent: Agent, timeout: float, auctioneer: str, endpoint: str,
              quiet: bool = False) -> Iterator[tuple[AuctionClient, JoinInfo]]:
    """Join with a logged-in agent: look the auctioneer up at the broker, join."""
    client = AuctionClient.for_agent(agent, auctioneer, endpoint, timeout=timeout)
    try:
        with progress(f"Waiting for the auctioneer at {endpoint}…", quiet):
            info = client.join()
        yield client, info
    finally:
        client.close()


def _money_text(cents: int | None) -> str:
    return "-" if cents is None else format_money(cents)


def _when(ts: float | None) -> str:
    try:
        return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S") if ts else "-"
    except (TypeError, ValueError, OverflowError, OSError):  # not a time this host can show
        return "?"


def _result_line(r: dict[str, Any]) -> str:
    if r.get("sold"):
        return (f"{shown(r['item'])}: sold to {shown(r['winner'])} for "
                f"{_money_text(r['price_cents'])}")
    return f"{shown(r['item'])}: not sold ({shown(r.get('reason', 'reserve not met'))})"


@auction_app.command("join")
def join(
    home: HomeOption = None,  # type: ignore[assignment]
    broker: BrokerOption = None,
    auctioneer: AuctioneerOption = DEFAULT_AUCTIONEER,
    endpoint: EndpointOption = DEFAULT_AUCTION_ENDPOINT,
    timeout: TimeoutOption = 2.5,
    json_out: JsonOption = False,
) -> None:
    """Join the auction: prove your registered key, get the group (never printed: its key)."""
    with user_errors(), joined(home, broker, timeout, auctioneer, endpoint, json_out) as (_, info):
        if json_out:
            print_json(info.public())
            return
        console.print(f"Joined as [bold cyan]{info.username}[/]: announcements on "
                      f"{info.group}:{info.port} and {info.pub_endpoint} "
                      f"(epoch {info.snapshot.get('epoch')})")
        item = (info.snapshot.get("state") or {}).get("item")
        console.print(f"Now: {shown(item['id'])} — {shown(item['title'])}" if item
                      else "No item open.")


@auction_app.command("bid")
def bid(
    amount: Annotated[int, typer.Argument(
        help="Your bid: digits with at most two decimals, e.g. 12.50.", metavar="AMOUNT",
        parser=options.money, show_default=False)],
    item: Annotated[str | None, typer.Option("--item", help="Item id (default: the "
                                             "current one).")] = None,
    home: HomeOption = None,  # type: ignore[assignment]
    broker: BrokerOption = None,
    auctioneer: AuctioneerOption = DEFAULT_AUCTIONEER,
    endpoint: EndpointOption = DEFAULT_AUCTION_ENDPOINT,
    timeout: TimeoutOption = 2.5,
    json_out: JsonOption = False,
) -> None:
    """Bid on the current item. Prints accepted (stored), or rejected and why."""
    with user_errors():
        cents = amount
        with joined(home, broker, timeout, auctioneer, endpoint, json_out) as (client, info):
            current = (info.snapshot.get("state") or {}).get("item")
            item_id = item or (current or {}).get("id")
            if not item_id:
                raise fail("rejected: no auction is open [auction-closed]")
            try:
                answer = client.bid(item_id, cents)
            except RemoteError as exc:
                if json_out:
                    print_json({"accepted": False, **exc.to_dict()})
                    raise typer.Exit(1) from None
                raise fail(f"rejected: {describe(exc)}") from None
        if answer.get("accepted") is not True or not isinstance(answer.get("amount"), int):
            # Only a stored bid is "accepted": anything else is not a confirmation.
            if json_out:
                print_json({"accepted": False, "code": "bad-request",
                            "message": "the auctioneer did not confirm the bid"})
                raise typer.Exit(1)
            raise fail("not accepted: the auctioneer did not confirm the bid")
        if json_out:
            print_json(answer)
        else:
            extra = ", closing time extended" if answer.get("extended") else ""
            console.print(f"accepted: {format_money(answer['amount'])} on {answer['item']}"
                          f"{extra}")


@auction_app.command("results")
def results(
    home: HomeOption = None,  # type: ignore[assignment]
    broker: BrokerOption = None,
    auctioneer: AuctioneerOption = DEFAULT_AUCTIONEER,
    endpoint: EndpointOption = DEFAULT_AUCTION_ENDPOINT,
    timeout: TimeoutOption = 2.5,
    json_out: JsonOption = False,
) -> None:
    """List past items with their winners and prices, newest first."""
    with user_errors(), \
            joined(home, broker, timeout, auctioneer, endpoint, json_out) as (client, _):
        rows = client.results()
        if json_out:
            print_json(rows)
            return
        table = Table("closed", "item", "title", "winner", "price")
        for r in rows:
            table.add_row(_when(r["closed_at"]), shown(r["item"]), shown(r["title"]),
                          shown(r["winner"] or "not sold"), _money_text(r["price_cents"]))
        console.print(table)


#: No signed word from the auctioneer for this long (heartbeats come every second): say so.
SILENCE = 3 * HEARTBEAT_INTERVAL


def json_line(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def silence_line(seconds: float) -> str:
    return f"no word from the auctioneer for {seconds:.0f} s"


def render(view: AuctionView, now: float, silent_for: float | None = None) -> Panel:
    """The watch screen: current item, best bid, time left, last bids, last winner; when the
    auctioneer has gone quiet, that instead of a countdown nobody is running."""
    parts: list[Any] = []
    if silent_for is not None:
        parts.append(f"[bold yellow]{silence_line(silent_for)}[/] — waiting for it to come "
                     "back")
    if view.item:
        left = max(0.0, (view.closes_at or now) - now)
        best = view.best
        clock = "time left unknown" if silent_for is not None else f"{left:.0f}s left"
        parts.append(f"[bold]{shown(view.item['title'])}[/] ({shown(view.item['id'])}) — "
                     f"{shown(view.status)}, {clock}")
        parts.append(f"best bid: [bold green]{_money_text(best['amount'])}[/] by "
                     f"{shown(best['bidder'])}" if best else
                     f"no bids yet; starting at {_money_text(view.item['start_cents'])}")
        if view.minimum is not None and view.status != "closed":
            parts.append(f"next bid at least {_money_text(view.minimum)}")
        table = Table("time", "bidder", "amount", box=None)
        for b in list(view.bids)[:5]:
            table.add_row(_when(b.get("at")), shown(b.get("bidder")), _money_text(b["amount"]))
        parts.append(table)
    else:
        parts.append("waiting for the next item…")
    if view.winner:
        parts.append(f"[bold]last result:[/] {_result_line(view.winner)}")
    return Panel(Group(*parts), title=f"agora auction (epoch {view.epoch})")


@auction_app.command("watch")
def watch(
    home: HomeOption = None,  # type: ignore[assignment]
    broker: BrokerOption = None,
    auctioneer: AuctioneerOption = DEFAULT_AUCTIONEER,
    endpoint: EndpointOption = DEFAULT_AUCTION_ENDPOINT,
    interface: InterfaceOption = DEFAULT_MULTICAST_INTERFACE,
    items: Annotated[int, typer.Option("--items", help="Stop after this many items have "
                                       "closed (0: run until Ctrl-C).", min=0)] = 0,
    max_time: Annotated[float, typer.Option("--max-time", help="Stop after this many "
                                            "seconds (0: no limit).", metavar="SECONDS",
                                            parser=options.duration)] = 0,
    timeout: TimeoutOption = 2.5,
    json_out: JsonOption = False,
) -> None:
    """Watch the auction live: item, best bid, time left, last bids and each winner.

    With --json, prints one JSON object per announcement instead (for scripts),
    plus {"kind": "silent", "seconds": N} when the auctioneer has not been heard
    for a few seconds and {"kind": "heard"} when it is back. Ctrl-C ends it
    (exit code 130).
    """
    with user_errors(), session(home, broker, timeout, quiet=json_out) as agent, \
            joined_as(agent, timeout, auctioneer, endpoint, json_out) as (client, info):
        closed = 0

        def done(view: AuctionView) -> bool:
            return bool(items) and closed >= items

        def on_event(event: dict[str, Any], view: AuctionView) -> None:
            nonlocal closed
            if event.get("kind") == "closed":
                closed += 1
            if json_out:
                json_line(event)

        watcher = AuctionWatcher(client, info, on_event, interface)
        signal.signal(signal.SIGTERM, lambda *_: watcher.stop.set())
        deadline = time.monotonic() + max_time if max_time else None
        silent_shown = False

        def step(live: Live | None) -> bool:
            """Serve a quarter second; say once when the auctioneer falls silent, and when
            it is back. False when the watch is over."""
            nonlocal silent_shown
            if watcher.stop.is_set() or done(watcher.view) or watcher.removed or \
                    (deadline and time.monotonic() >= deadline):
                return False
            watcher.serve(done, 0.25)
            silent = watcher.silent_for()
            if (silent >= SILENCE) != silent_shown:
                silent_shown = not silent_shown
                if json_out:
                    json_line({"kind": "silent", "seconds": round(silent)} if silent_shown
                              else {"kind": "heard"})
            if live is not None:
                live.update(render(watcher.view, time.time(),
                                   silent if silent_shown else None))
            return True

        try:
            with ended_by_broker(agent, watcher.stop):
                if json_out:
                    json_line({"kind": "joined", **info.public()})
                    while step(None):
                        pass
                else:
                    with Live(render(watcher.view, time.time()), console=console,
                              refresh_per_second=4) as live:
                        while step(live):
                            pass
                    for r in watcher.view.results:
                        console.print(_result_line(r))
        finally:
            watcher.close()
        if watcher.removed:
            raise fail(f"removed from the auction: {watcher.removed}")
