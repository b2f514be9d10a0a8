"""``agora broker ...`` (run the broker) and ``agora admin ...`` (the operator's commands).

Admin commands work on the broker's database directly, on the broker host: that is the
face-to-face trust boundary (file permissions), and a running broker picks the changes up
within a fraction of a second.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
from typing import Annotated

import typer
from rich.table import Table

from agora.protocol import DEFAULT_CALL_TIMEOUT, DEFAULT_ONE_TIME_ID_TTL, Level, PrincipalKind
from broker import admin
from broker.server import DEFAULT_ENDPOINT, BrokerServer, open_store
from cli import options
from cli.common import (
    DataDirOption,
    JsonOption,
    console,
    default_data_dir,
    fail,
    print_json,
    user_errors,
)

TtlOption = Annotated[float, typer.Option(
    "--ttl-hours", help="Hours until the one-time ID expires.", metavar="HOURS",
    parser=options.positive_duration)]

broker_app = typer.Typer(help="Run the broker.", no_args_is_help=True)
admin_app = typer.Typer(
    help="Operator commands, run on the broker host: enroll, list, revoke, set-level, audit.",
    no_args_is_help=True)


def setup_logging(verbose: bool, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s", force=True)


@broker_app.command("start")
def start(
    data_dir: DataDirOption = None,  # type: ignore[assignment]
    bind: Annotated[str, typer.Option("--bind", envvar="AGORA_BROKER_BIND",
                                      help="ZeroMQ endpoint to bind.", metavar="ENDPOINT",
                                      parser=options.endpoint)] = DEFAULT_ENDPOINT,
    call_timeout: Annotated[float, typer.Option(
        "--call-timeout", envvar="AGORA_CALL_TIMEOUT",
        help="Seconds a worker has to answer a call before the caller gets 'timeout'.",
        metavar="SECONDS", parser=options.positive_duration)
    ] = DEFAULT_CALL_TIMEOUT,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", envvar="AGORA_QUIET", help="Log only warnings and errors, not a "
        "line per request (the audit trail still records every decision).")] = False,
) -> None:
    """Run the broker until Ctrl-C or SIGTERM. Creates the data directory on first run.

    Logs one line per request on stderr (never a secret) unless --quiet.
    """
    setup_logging(verbose, quiet)
    with user_errors():
        try:
            server = BrokerServer(data_dir or default_data_dir(), bind,
                                  call_timeout=call_timeout)
        except Exception as exc:  # zmq bind errors, unreadable key file...
            raise fail(f"cannot start broker: {exc}") from None

        def stop(signum: int, frame: object) -> None:
            server.stop.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        # Printed on stdout so scripts (and the tests) can read the chosen endpoint.
        print(f"agora broker ready at {server.endpoint} fingerprint {server.keys.fingerprint}",
              flush=True)
        try:
            server.serve()
        finally:
            server.close()


@admin_app.command("enroll")
def enroll(
    name: Annotated[str, typer.Option("--name", help="The collaborator's full name.")],
    level: Annotated[str, typer.Option("--level", help="Security level, 1-5 or a name: "
                                       "public, internal, confidential, secret, top-secret.")],
    kind: Annotated[PrincipalKind, typer.Option("--kind", help="person, or service for a "
                                                "worker or auctioneer process.")
                    ] = PrincipalKind.PERSON,
    ttl_hours: TtlOption = DEFAULT_ONE_TIME_ID_TTL / 3600,
    data_dir: DataDirOption = None,  # type: ignore[assignment]
    json_out: JsonOption = False,
) -> None:
    """Enroll a collaborator face to face: prints username, one-time ID and fingerprint.

    Hand all three to the collaborator in person; they run `agora register` with them.
    """
    with user_errors():
        store, keys = open_store(data_dir or default_data_dir())
        result = admin.enroll(store, keys, name, level, kind, ttl_hours)
        username, one_time_id, lvl = result["username"], result["one_time_id"], \
            Level(result["level"])
        result = {k: result[k] for k in ("username", "one_time_id", "fingerprint", "level",
                                         "expires_in_hours")}
        if json_out:
            print_json(result)  # the one place a one-time ID is printed: it is the hand-over
            return
        console.print(f"Enrolled [bold]{name}[/] as [bold cyan]{username}[/] "
                      f"(level {int(lvl)}, {lvl.label})")
        console.print(f"  one-time ID:        [bold]{one_time_id}[/] "
                      f"(expires in {ttl_hours:g} h)")
        console.print(f"  broker fingerprint: [bold]{keys.fingerprint}[/]")
        console.print("Give these to the collaborator in person; they run [bold]agora "
                      "register[/].")


@admin_app.command("reenroll")
def reenroll(
    username: str,
    ttl_hours: TtlOption = DEFAULT_ONE_TIME_ID_TTL / 3600,
    data_dir: DataDirOption = None,  # type: ignore[assignment]
    json_out: JsonOption = False,
) -> None:
    """Issue a new one-time ID (lost device, or flagged after token reuse); old keys die."""
    with user_errors():
        store, keys = open_store(data_dir or default_data_dir())
        result = admin.reenroll(store, keys, username, ttl_hours)
        one_time_id = result["one_time_id"]
        result = {k: result[k] for k in ("username", "one_time_id", "fingerprint")}
        if json_out:
            print_json(result)
        else:
            console.print(f"{username}: new one-time ID [bold]{one_time_id}[/], broker "
                          f"fingerprint [bold]{keys.fingerprint}[/]")


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


@admin_app.command("list")
def list_users(data_dir: DataDirOption = None,  # type: ignore[assignment]
               json_out: JsonOption = False) -> None:
    """List enrolled principals with level, state (flagged ones stand out) and last login."""
    with user_errors():
        store, _ = open_store(data_dir or default_data_dir())
        rows = [{k: r[k] for k in ("username", "name", "kind", "level", "state", "flagged",
                                   "port", "last_login_at")}
                for r in admin.principal_rows(store)]
        if json_out:
            print_json(rows)
            return
        table = Table("username", "name", "kind", "level", "state", "last login", "port")
        for r in rows:
            style = "bold red" if r["flagged"] else ("dim" if r["state"] == "revoked" else "")
            table.add_row(r["username"], r["name"], r["kind"],
                          f"{r['level']} {Level(r['level']).label}", r["state"],
                          _when(r["last_login_at"]), str(r["port"] or "-"), style=style)
        console.print(table)


@admin_app.command("revoke")
def revoke(username: str, data_dir: DataDirOption = None) -> None:  # type: ignore[assignment]
    """Revoke a collaborator: their sessions end and they can no longer log in."""
    with user_errors():
        store, _ = open_store(data_dir or default_data_dir())
        admin.revoke(store, username)
        console.print(f"{username} revoked")


@admin_app.command("set-level")
def set_level(username: str, level: str,
              data_dir: DataDirOption = None) -> None:  # type: ignore[assignment]
    """Change a collaborator's security level (takes effect on their live sessions too)."""
    with user_errors():
        store, _ = open_store(data_dir or default_data_dir())
        lvl = admin.set_level(store, username, level)
        console.print(f"{username} is now level {int(lvl)} ({lvl.label})")


@admin_app.command("audit")
def audit(
    username: Annotated[str | None, typer.Argument(help="Only this user's rows.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many "
                                       "rows, newest last.")] = 50,
    data_dir: DataDirOption = None,  # type: ignore[assignment]
    json_out: JsonOption = False,
) -> None:
    """Show the audit trail: who did what, and whether it was allowed (never arguments)."""
    with user_errors():
        store, _ = open_store(data_dir or default_data_dir())
        rows = admin.audit_rows(store, username, limit=limit)
        if json_out:
            print_json(rows)
            return
        table = Table("time", "user", "action", "outcome", "detail")
        for r in reversed(rows):
            style = "red" if r["outcome"] not in ("ok",) else ""
            table.add_row(_when(r["ts"]), r["username"] or "-", r["action"], r["outcome"],
                          r["detail"] or "", style=style)
        console.print(table)
