"""The collaborator's commands: ``agora register``, ``agora login``, ``agora whoami``.

Every command that talks to the broker as a collaborator goes through :func:`session`: it
asks the password (or reads AGORA_PASSWORD), opens the credentials locally first, logs in
(a new session, a new token) and logs out at the end.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from agents import Agent
from agents.notices import Notice
from agora.errors import AgoraError
from agora.protocol import EndReason, Level, NoticeType
from cli.common import (
    BrokerOption,
    HomeOption,
    JsonOption,
    TimeoutOption,
    console,
    default_home,
    err_console,
    password,
    print_json,
    progress,
    reads_stdin,
    shown,
    user_errors,
)

log = logging.getLogger("agora.cli")

#: Exit code of a long-running command whose session the broker ended.
SESSION_ENDED = 1
#: Seconds a failed command waits for the session-ended notice that may explain it.
SETTLE = 1.0


def make_agent(home: Path | None, broker: str | None, timeout: float = 2.5) -> Agent:
    return Agent(home or default_home(), broker=broker, timeout=timeout)


@contextlib.contextmanager
def session(home: Path | None, broker: str | None, timeout: float = 2.5,
            listen: bool = False, secret: str | None = None,
            quiet: bool = False) -> Iterator[Agent]:
    """A logged-in Agent for the duration of one command; always logged out and closed.

    Only commands that wait for peers (listen, chat) pass ``listen=True``. ``secret`` is the
    password when the command has read it already (STDIN_RULE); ``quiet`` (--json) turns
    the spinner off.
    """
    agent = make_agent(home, broker, timeout)
    try:
        secret = secret if secret is not None else password()
        with progress("Opening your credentials (Argon2id)…", quiet):
            agent.unlock(secret)  # the person first, locally ...
        with progress(f"Logging in to {agent.broker}…", quiet):
            agent.login(listen=listen)  # ... then the agent, to the broker
        try:
            yield agent
        finally:
            with contextlib.suppress(Exception):
                agent.logout()
    finally:
        agent.close()


def new_login_line(at: float) -> str:
    """What a long-running command says when another session of its principal starts (a
    stolen credentials file cannot listen in silently: PROTOCOL.md 5.2)."""
    stamp = time.strftime("%H:%M", time.localtime(at))
    return (f"a new login as you from another process at {stamp} — if this was not you, "
            "tell your operator")


class SessionGuard:
    """Follows the broker's notices while a long-running command works (listen, chat,
    auction watch, worker), in a thread with its own socket (agents.notices).

    When the broker ends the session (token reused, revoked, flagged, re-enrolled, another
    session took its place...) it sets ``stop`` at once and keeps the notice, so the command
    ends and says what happened in one line. A broker too old to push notices, or not
    answering the subscription, only means the command is not told: it keeps working.
    """

    def __init__(self, agent: Agent, stop: threading.Event) -> None:
        self.agent, self.stop = agent, stop
        self.ended: Notice | None = None
        self._ended = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notices", daemon=True)

    def wait_ended(self, timeout: float) -> bool:
        """Whether a session-ended notice came, waiting up to ``timeout`` for one."""
        self._ended.wait(timeout)
        return self.ended is not None

    def start(self) -> SessionGuard:
        self._thread.start()
        return self

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)

    def _run(self) -> None:
        try:
            stream = self.agent.subscribe()
        except AgoraError as exc:
            log.info("no session notices from the broker: %s", exc)
            return
        with stream:
            while not self._done.is_set() and self.ended is None:
                for notice in stream.poll(0.25):
                    self._handle(notice)

    def _handle(self, notice: Notice) -> None:
        if not notice.authenticated:
            return  # what the stream saw itself: a hint, never proof of anything
        if notice.type == NoticeType.SESSION_ENDED.value and \
                notice.reason != EndReason.LOGGED_OUT.value:
            self.ended = notice
            self._ended.set()
            self.stop.set()
        elif notice.type == NoticeType.NEW_LOGIN.value:
            # A field of the wrong type (a broker's bug) must not end the notices thread.
            at = notice.fields.get("at")
            at_ok = type(at) in (int, float) and 0 < at < 1e11  # also no NaN, no year 5000
            err_console.print(new_login_line(at if at_ok else time.time()),
                              highlight=False, soft_wrap=True)
        elif notice.type == NoticeType.LEVEL_CHANGED.value:
            level = notice.fields.get("level")
            if type(level) is int and 1 <= level <= 5:
                told = f"{level} ({Level(level).label})"
            else:
                told = "a level this agora does not know"
            err_console.print(f"note: the operator changed your level to {told}",
                              highlight=False)


@contextlib.contextmanager
def ended_by_broker(agent: Agent, stop: threading.Event) -> Iterator[SessionGuard]:
    """Run a long command under a SessionGuard; if the broker ended the session, say so in
    one line on stderr (``your session was ended: ...``) and exit with SESSION_ENDED."""
    guard = SessionGuard(agent, stop).start()
    try:
        yield guard
    except AgoraError:
        # The command's own next request may fail first (revoked, flagged...): the notice
        # saying why was pushed at the same moment, so give it a moment to arrive.
        if not guard.wait_ended(SETTLE):
            raise
    finally:
        guard.close()
    if guard.ended is not None:
        err_console.print(f"your session was ended: {shown(guard.ended.message)}",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(SESSION_ENDED)


@reads_stdin
def register(
    username: Annotated[str, typer.Option(prompt=True, help="Username from the operator.")],
    one_time_id: Annotated[str, typer.Option(prompt="One-time ID",
                                             help="One-time ID from the operator.")],
    fingerprint: Annotated[str, typer.Option(prompt="Broker fingerprint",
                                             help="Broker key fingerprint from the operator.")],
    home: HomeOption = None,  # type: ignore[assignment]
    broker: BrokerOption = None,
    timeout: TimeoutOption = 2.5,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing registration "
                                        "(after the operator re-enrolled you).")] = False,
    json_out: JsonOption = False,
) -> None:
    """Register this machine as you, with what the operator gave you face to face.

    Makes your key pair, checks the broker's key against the fingerprint, and
    stores everything in a credentials file encrypted under a new password
    (asked twice; at least 12 characters, not your username nor the one-time
    ID).

    Without a terminal, options not given as options are read first, one line
    each.
    """
    with user_errors():
        agent = make_agent(home, broker, timeout)
        secret = password(confirm=True, prompt="New password")
        try:
            with progress("Registering: checking the broker's key, sealing your credentials "
                          "(Argon2id)…", json_out):
                creds = agent.register(username, one_time_id, fingerprint, secret, force=force)
        finally:
            agent.close()
        result = {"username": creds.username, "level": creds.level, "broker": creds.broker,
                  "credentials": str(agent.file.path)}
        if json_out:
            print_json(result)
        else:
            console.print(f"Registered as [bold cyan]{creds.username}[/] (level {creds.level}, "
                          f"{Level(creds.level).label}) with {creds.broker}")
            console.print(f"Credentials: {agent.file.path}")


@reads_stdin
def login(
    home: HomeOption = None,  # type: ignore[assignment]
    broker: BrokerOption = None,
    timeout: TimeoutOption = 2.5,
    json_out: JsonOption = False,
) -> None:
    """Log in: open your credentials, authenticate to the broker, rotate your token.

    Shows the session the broker opened (and the port it recorded for you); the
    session ends when the command does. `agora listen` keeps one open.
    """
    with user_errors(), session(home, broker, timeout, listen=True, quiet=json_out) as agent:
        info = agent.info
        assert info is not None
        waiting = agent.call("mailbox_count")["waiting"]
        if json_out:
            print_json({**info.to_dict(), "messages_waiting": waiting})
            return
        console.print(f"Logged in as [bold cyan]{info.username}[/] (level {info.level}, "
                      f"{Level(info.level).label}); session {info.session}, "
                      f"listening on port {info.port}; token rotated", soft_wrap=True)
        if waiting:
            console.print(f"{waiting} message{'s' if waiting != 1 else ''} left for you while "
                          "you were offline; `agora listen` or `agora chat` shows them",
                          highlight=False, soft_wrap=True)


def whoami(
    home: HomeOption = None,  # type: ignore[assignment]
    broker: BrokerOption = None,
    timeout: TimeoutOption = 2.5,
    json_out: JsonOption = False,
) -> None:
    """Show who the broker says you are: username, level and session."""
    with user_errors(), session(home, broker, timeout, quiet=json_out) as agent:
        me = agent.whoami()
        if json_out:
            print_json(me)
        else:
            console.print(f"[bold cyan]{me['username']}[/] ({me['kind']}), level "
                          f"{me['level']} ({me['level_name']})")
            console.print(f"session {me['session']}, port {me['port']}, "
                          f"{me['sessions']} open session(s)")
