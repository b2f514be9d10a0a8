"""The collaborator's commands: ``agora register``, ``agora login``, ``agora whoami``.

Every command that talks to the broker as a collaborator goes through :func:`session`: it
asks the password (or reads AGORA_PASSWORD), opens the credentials locally first, logs in
(a new session, a new token) and logs out at the end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from agents import Agent
from agora.protocol import Level
from cli.common import (
    BrokerOption,
    HomeOption,
    JsonOption,
    TimeoutOption,
    console,
    default_home,
    password,
    print_json,
    progress,
    reads_stdin,
    user_errors,
)


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

    Makes your key pair, checks the broker's key against the fingerprint, and stores
    everything in a credentials file encrypted under a new password (asked twice; at least
    12 characters, not your username nor the one-time ID).

    Without a terminal, options not given as options are read first, one line each.
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

    Shows the session the broker opened (and the port it recorded for you); the session
    ends when the command does. `agora listen` keeps one open.
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
