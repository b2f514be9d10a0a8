"""Peer message commands: ``agora listen``, ``agora send USER TEXT``, ``agora chat USER``.

Each logs in for its own session (so it has an inbox the broker knows about), works peer to
peer over PAIR sockets (the broker only tells where the peer is and which key is theirs),
and logs out at the end. ``listen`` and ``chat`` stop on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Annotated

import typer

from agents.agent import Agent
from agents.peer import SEND_WINDOW, Listener, Receipt
from agents.peer_protocol import PeerMessage
from agora.errors import AgoraError
from agora.protocol import MAILBOX_TTL
from cli.agent_cmd import ended_by_broker, session
from cli.common import (
    INTERRUPTED,
    BrokerOption,
    HomeOption,
    JsonOption,
    TimeoutOption,
    console,
    describe,
    err_console,
    fail,
    password,
    print_json,
    progress,
    reads_stdin,
    shown,
    user_errors,
)


class Stop(threading.Event):
    """Set by SIGTERM or SIGINT; remembers whether it was Ctrl-C (SIGINT)."""

    interrupted = False


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Stop]:
    """A Stop set by SIGTERM / SIGINT, so long-running commands log out cleanly; Ctrl-C
    then ends the command with exit code 130 and no error line (INTERRUPTED)."""
    stop = Stop()

    def handler(signum: int, frame: object) -> None:
        stop.interrupted = stop.interrupted or signum == signal.SIGINT
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if stop.interrupted:
        raise typer.Exit(INTERRUPTED)


def show_peer_warnings() -> None:
    """Dropped peer input (garbage, wrong key, replay) is reported on stderr, one line each."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def json_line(obj: dict[str, object]) -> None:
    """One compact JSON object per line, flushed: what a script reading a stream wants."""
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def print_message(msg: PeerMessage, json_out: bool) -> None:
    if json_out:
        json_line(msg.to_dict())
        return
    stamp = time.strftime("%H:%M:%S", time.localtime(msg.sent_at))
    console.print(f"[dim]{stamp}[/] [bold cyan]{shown(msg.sender)}[/]: {shown(msg.text)}",
                  highlight=False, soft_wrap=True)


def listen(
    home: HomeOption = None,  # type: ignore[assignment]
    broker: BrokerOption = None,
    timeout: TimeoutOption = 2.5,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per line: first "
                                           "{listening, port}, then one per message (from, "
                                           "text, sent_at, received_at, seq).")] = False,
) -> None:
    """Log in and print peer messages as they arrive (sender, time, text).

    Runs until Ctrl-C (exit code 130), or until the broker ends the session (a
    stolen token, revoked...): then one line says why, exit code 1. Any number
    of collaborators can write to you at once; each message is end-to-end
    encrypted, checked against the sender's key in the broker's directory, and
    acknowledged to its sender. Messages left for you while you were offline are
    shown first. Bad or replayed messages are dropped with a warning on stderr.
    """
    show_peer_warnings()
    with user_errors(), session(home, broker, timeout, listen=True) as agent, \
            stop_on_signals() as stop, ended_by_broker(agent, stop):
        info = agent.info
        assert info is not None
        listener = Listener(agent, lambda msg: print_message(msg, json_out), stop)
        if json_out:
            json_line({"listening": info.username, "port": info.port})
        else:
            console.print(f"Listening as [bold cyan]{info.username}[/] on port {info.port}; "
                          "Ctrl-C to stop", highlight=False)
            sys.stdout.flush()
        listener.run()


@reads_stdin
def send(
    user: Annotated[str, typer.Argument(help="Username of the collaborator to write to.")],
    text: Annotated[str | None, typer.Argument(
        help="The message; read from stdin when omitted or '-'.", show_default=False)] = None,
    home: HomeOption = None,  # type: ignore[assignment]
    broker: BrokerOption = None,
    timeout: TimeoutOption = 2.5,
    no_queue: Annotated[bool, typer.Option(
        "--no-queue", help="Fail if USER is offline or not answering, instead of leaving "
        "the message in the broker's mailbox.")] = False,
    lines: Annotated[bool, typer.Option(
        "--lines", help="Send each line of the text as a message of its own, in order, "
        f"up to {SEND_WINDOW} unacknowledged at a time (empty lines are skipped); for "
        "streams: a log, a file, a script's output.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Send one message to USER and wait for their acknowledgement.

    If USER is offline (or their session does not answer), the message is
    left in the broker's mailbox, still end-to-end encrypted, for 7 days:
    `agora login` tells them it waits and `agora listen` or `agora chat`
    shows it; with --no-queue that is an error instead. Other errors:
    unknown user, no acknowledgement in time, mailbox full.

    With --lines, every line is a message: they go in order without waiting
    for each acknowledgement in turn, and the command ends once all are
    acknowledged (or left in the mailbox). If it fails half-way, the error
    says how many went through first.

    Examples: `agora send bob.reis "lunch at noon?"`,
    `printf '%s\\n' "$PW" "lunch?" | agora send bob.reis`,
    `agora send bob.reis --lines "$(tail -n 50 build.log)"`.
    """
    secret = None
    if text is None or text == "-":
        secret = password()  # STDIN_RULE: the password line comes first, then the text
        text = sys.stdin.read().rstrip("\n")
    texts = [line for line in text.splitlines() if line] if lines else [text]
    if not text or not texts:
        raise fail("nothing to send: give the text as an argument or on stdin")
    with user_errors(), session(home, broker, timeout, secret=secret, quiet=json_out) as agent:
        if lines:
            send_lines(agent, user, texts, timeout, not no_queue, json_out)
            return
        with progress(f"Waiting for {user} to acknowledge…", json_out):
            receipt = agent.send(user, text, timeout, queue=not no_queue)
        if json_out:
            print_json(receipt.to_dict())
        elif receipt.queued:
            console.print(f"Not delivered now ({shown(receipt.reason)}): left in the "
                          "broker's mailbox, end-to-end encrypted, for "
                          f"{MAILBOX_TTL / 86400:g} days. [bold cyan]{shown(receipt.to)}[/] "
                          "gets it at their next `agora listen` or `agora chat`; `agora "
                          "login` tells them it waits.", highlight=False, soft_wrap=True)
        else:
            console.print(f"Delivered to [bold cyan]{shown(receipt.to)}[/] (message "
                          f"{receipt.seq}, {receipt.round_trip * 1000:.1f} ms)", highlight=False)


def send_lines(agent: Agent, user: str, texts: list[str], timeout: float, queue: bool,
               json_out: bool) -> None:
    """``agora send --lines``: the texts as one stream (PeerNode.send_many), then a summary."""
    settled: list[Receipt] = []
    started = time.monotonic()
    try:
        with progress(f"Sending {len(texts)} messages to {user}…", json_out):
            agent.peer.send_many(user, texts, timeout, queue, on_receipt=settled.append)
    except AgoraError as exc:
        if not settled:
            raise
        raise fail(f"{describe(exc)} (after {len(settled)} of {len(texts)} messages went "
                   "through)") from None
    seconds = time.monotonic() - started
    delivered = sum(r.delivered for r in settled)
    queued = [r for r in settled if r.queued]
    if json_out:
        print_json({"to": user, "messages": len(texts), "delivered": delivered,
                    "queued": len(queued), "seconds": round(seconds, 6),
                    "receipts": [r.to_dict() for r in settled]})
        return
    if delivered:
        console.print(f"Delivered {delivered} message{'s' * (delivered != 1)} to "
                      f"[bold cyan]{shown(user)}[/] in {seconds * 1000:.1f} ms",
                      highlight=False)
    if queued:
        console.print(f"{len(queued)} message{'s' * (len(queued) != 1)} not delivered now "
                      f"({shown(queued[0].reason)}): left in the broker's mailbox, "
                      f"end-to-end encrypted, for {MAILBOX_TTL / 86400:g} days.",
                      highlight=False, soft_wrap=True)


@reads_stdin
def chat(
    user: Annotated[str, typer.Argument(help="Username of the collaborator to talk to.")],
    home: HomeOption = None,  # type: ignore[assignment]
    broker: BrokerOption = None,
    timeout: TimeoutOption = 2.5,
) -> None:
    """Talk with USER: lines you type are sent, theirs appear as they arrive.

    Messages from other collaborators show up too, with their name. A line
    that could not be delivered says why, and the chat goes on. Ctrl-D ends
    it (exit 0), Ctrl-C too (exit 130). USER must exist: a typo is refused
    before the chat opens.
    """
    show_peer_warnings()
    with user_errors(), session(home, broker, timeout, listen=True) as agent, \
            stop_on_signals() as stop, ended_by_broker(agent, stop):
        agent.call("lookup", {"username": user})  # unknown, revoked or flagged: say so now
        console.print(f"Chatting with [bold cyan]{shown(user)}[/] as {agent.username}; "
                      "Ctrl-D to end", highlight=False)
        stdin = sys.stdin.fileno()
        while not stop.is_set():
            messages, ready = agent.peer.wait(0.2, watch=(stdin,))
            for msg in messages:
                print_message(msg, json_out=False)
            if stdin not in ready:
                continue
            line = sys.stdin.readline()
            if not line:
                break  # end of input
            line = line.rstrip("\n")
            if not line:
                continue
            try:
                receipt = agent.send(user, line, timeout)
                if receipt.queued:
                    err_console.print(f"[yellow]left in the mailbox:[/] "
                                      f"{shown(receipt.reason)}", highlight=False)
            except AgoraError as exc:
                err_console.print(f"[red]not delivered:[/] {shown(describe(exc))}",
                                  highlight=False)
