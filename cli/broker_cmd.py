"""``agora broker ...`` (run the broker) and ``agora admin ...`` (the operator's commands).

Admin commands work on the broker's database directly, on the broker host: that is the
face-to-face trust boundary (file permissions), and a running broker picks the changes up
within a fraction of a second.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from agora.protocol import (
    DEFAULT_CALL_TIMEOUT,
    DEFAULT_ONE_TIME_ID_TTL,
    MAX_SESSIONS_PER_PRINCIPAL,
    SERVICE_NAME_RE,
    Level,
    PrincipalKind,
)
from agora.text import OneLineFormatter
from broker import admin
from broker.core import DEFAULT_AUDIT_DAYS
from broker.server import DEFAULT_ENDPOINT, BrokerServer, init_broker, open_store
from broker.store import Store
from cli import options
from cli.common import (
    DataDirOption,
    JsonOption,
    console,
    default_data_dir,
    fail,
    print_json,
    shown,
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
    """Log to stderr, every record on one line (peer-sent text cannot forge a line)."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter("%(asctime)s %(name)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


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
    audit_days: Annotated[float, typer.Option(
        "--audit-days", envvar="AGORA_AUDIT_DAYS",
        help="Keep audit rows this many days; older ones are pruned in the background.",
        metavar="DAYS", parser=options.positive_duration)] = DEFAULT_AUDIT_DAYS,
    max_sessions: Annotated[int, typer.Option(
        "--max-sessions-per-principal", envvar="AGORA_MAX_SESSIONS", min=1,
        help="Live sessions one principal may hold; one more ends its oldest (told why).",
        metavar="N")] = MAX_SESSIONS_PER_PRINCIPAL,
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
                                  call_timeout=call_timeout, audit_days=audit_days,
                                  max_sessions_per_principal=max_sessions)
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


@broker_app.command("init")
def init(
    data_dir: DataDirOption = None,  # type: ignore[assignment]
    json_out: JsonOption = False,
) -> None:
    """Create the broker's data directory (key pair and database) without starting it.

    Operator commands (`agora admin ...`) refuse a directory that holds no
    broker; run this (or `agora broker start`) first. On a directory that
    already holds one it changes nothing and prints that broker's fingerprint.
    """
    with user_errors():
        directory = data_dir or default_data_dir()
        keys, created = init_broker(directory)
        if json_out:
            print_json({"data_dir": str(directory), "fingerprint": keys.fingerprint,
                        "created": created})
            return
        what = "created" if created else "already holds a broker"
        console.print(f"{directory}: {what}; fingerprint [bold]{keys.fingerprint}[/]")


@admin_app.command("enroll")
def enroll(
    name: Annotated[str, typer.Option("--name", help="The collaborator's full name.")],
    level: Annotated[str, typer.Option("--level", help="Security level, 1-5 or a name: "
                                       "public, internal, confidential, secret, top-secret.")],
    kind: Annotated[PrincipalKind, typer.Option("--kind", help="person, or service for a "
                                                "worker or auctioneer process.")
                    ] = PrincipalKind.PERSON,
    ttl_hours: TtlOption = DEFAULT_ONE_TIME_ID_TTL / 3600,
    allow_similar: Annotated[bool, typer.Option(
        "--allow-similar", help="Enroll even if the name's username is taken (the new one "
        "gets a number, e.g. ana.lima2). Without it that is refused.")] = False,
    username: Annotated[str | None, typer.Option(
        "--username", help="The username to give, instead of the one made from the name "
        "(lowercase a-z, digits and dots, e.g. li.wei): for a name written in another "
        "script, or a username agreed beforehand.", metavar="USERNAME")] = None,
    services: Annotated[list[str] | None, typer.Option(
        "--service", help="With --kind service: a service name this principal may offer "
        "as a worker (repeat for several). Nothing else is accepted from its workers.",
        metavar="NAME")] = None,
    service_level: Annotated[str | None, typer.Option(
        "--service-level", help="The level callers need for the --service names "
        "(default: the principal's --level).", metavar="LEVEL")] = None,
    data_dir: DataDirOption = None,  # type: ignore[assignment]
    json_out: JsonOption = False,
) -> None:
    """Enroll a collaborator face to face: prints username, one-time ID and fingerprint.

    Hand all three to the collaborator in person; they run `agora register` with
    them. A worker's principal:
    `--kind service --service wordcount --service-level 3`.
    """
    with user_errors():
        bound = _service_choice(kind, level, services or [], service_level)
        store, keys = open_store(data_dir or default_data_dir())
        result = admin.enroll(store, keys, name, level, kind, ttl_hours,
                              allow_similar=allow_similar, username=username)
        username, one_time_id, lvl = result["username"], result["one_time_id"], \
            Level(result["level"])
        for service, svc_level in bound:
            store.bind_service(service, username, svc_level, time.time())
        similar_to = result["similar_to"]
        result = {k: result[k] for k in ("username", "one_time_id", "fingerprint", "level",
                                         "expires_in_hours", "similar_to")}
        result["services"] = [{"service": s, "level": int(v)} for s, v in bound]
        if json_out:
            print_json(result)  # the one place a one-time ID is printed: it is the hand-over
            return
        console.print(f"Enrolled [bold]{shown(name)}[/] as [bold cyan]{username}[/] "
                      f"(level {int(lvl)}, {lvl.label})", highlight=False)
        if similar_to:
            console.print(f"  note: {similar_to} was taken, so this one is {username}",
                          highlight=False)
        for service, svc_level in bound:
            console.print(f"  may offer service:  [bold]{service}[/] (callers need level "
                          f"{int(svc_level)})", highlight=False)
        _hand_over(one_time_id, ttl_hours, keys.fingerprint)


def _service_choice(kind: PrincipalKind, level: str, services: list[str],
                    service_level: str | None) -> list[tuple[str, Level]]:
    """Check --service / --service-level before anything is enrolled."""
    if not services:
        if service_level is not None:
            raise fail("--service-level needs --service NAME")
        return []
    if kind is not PrincipalKind.SERVICE:
        raise fail("--service is for principals of --kind service")
    principal = admin.parse_level(level)
    svc_level = admin.parse_level(service_level) if service_level is not None else principal
    if svc_level > principal:
        raise fail(f"--service-level {int(svc_level)} is above the principal's level "
                   f"{int(principal)}")
    for service in services:
        if not SERVICE_NAME_RE.match(service):
            raise fail(f"--service {service!r}: 1-64 of a-z 0-9 . _ -, starting with a letter")
    return [(service, svc_level) for service in dict.fromkeys(services)]


def _hand_over(one_time_id: str, ttl_hours: float, fingerprint: str) -> None:
    console.print(f"  one-time ID:        [bold]{one_time_id}[/] "
                  f"(expires in {ttl_hours:g} h)")
    console.print(f"  broker fingerprint: [bold]{fingerprint}[/]")
    console.print("Give these to the collaborator in person; they run [bold]agora "
                  "register[/] (with [bold]--force[/] if they registered before).")


def _new_one_time_id(action: str, username: str, ttl_hours: float, data_dir: Path | None,
                     json_out: bool) -> None:
    store, keys = open_store(data_dir or default_data_dir())
    issue = admin.restore if action == "restore" else admin.reenroll
    result = issue(store, keys, username, ttl_hours)
    one_time_id = result["one_time_id"]
    if json_out:
        print_json(result)
        return
    done = "revocation lifted" if action == "restore" else "re-enrolled"
    console.print(f"{username}: {done}; awaiting registration with a new one-time ID "
                  "(old keys and sessions are dead)", highlight=False)
    _hand_over(one_time_id, ttl_hours, keys.fingerprint)


@admin_app.command("reenroll")
def reenroll(
    username: str,
    ttl_hours: TtlOption = DEFAULT_ONE_TIME_ID_TTL / 3600,
    data_dir: DataDirOption = None,  # type: ignore[assignment]
    json_out: JsonOption = False,
) -> None:
    """Issue a new one-time ID (lost device, or flagged after token reuse); old keys die.

    Never lifts a revocation: a revoked collaborator needs
    `agora admin restore`.
    """
    with user_errors():
        _new_one_time_id("reenroll", username, ttl_hours, data_dir, json_out)


@admin_app.command("restore")
def restore(
    username: str,
    ttl_hours: TtlOption = DEFAULT_ONE_TIME_ID_TTL / 3600,
    data_dir: DataDirOption = None,  # type: ignore[assignment]
    json_out: JsonOption = False,
) -> None:
    """Lift a revocation on purpose: issues a new one-time ID (old keys stay dead)."""
    with user_errors():
        _new_one_time_id("restore", username, ttl_hours, data_dir, json_out)


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _sessions_cell(sessions: list[dict]) -> str:
    """``2: 12:03 listening, 12:41`` — each live session's start; more than one stands out."""
    if not sessions:
        return "-"
    starts = ", ".join(dt.datetime.fromtimestamp(s["started_at"]).strftime("%H:%M")
                       + (" listening" if s["listening"] else "") for s in sessions)
    text = f"{len(sessions)}: {starts}"
    return f"[bold yellow]{text}[/]" if len(sessions) > 1 else text


def principals_table(rows: list[dict]) -> Table:
    """Usernames are what the operator types next: never truncated; other columns wrap."""
    table = Table("username", "name", "kind", "level", "state", "last login", "port",
                  "live sessions")
    for column in table.columns[1:]:
        column.overflow = "fold"
    table.columns[0].no_wrap = True
    table.columns[0].min_width = max((len(r["username"]) for r in rows), default=8)
    for r in rows:
        style = "bold red" if r["flagged"] else ("dim" if r["state"] == "revoked" else "")
        table.add_row(r["username"], shown(r["name"]), r["kind"],
                      f"{r['level']} {Level(r['level']).label}", shown(r["state"]),
                      _when(r["last_login_at"]), str(r["port"] or "-"),
                      _sessions_cell(r.get("sessions", [])), style=style)
    return table


@admin_app.command("list")
def list_users(data_dir: DataDirOption = None,  # type: ignore[assignment]
               json_out: JsonOption = False) -> None:
    """List enrolled principals with level, state (flagged ones stand out) and last login.

    States: enrolled, re-enrolled (awaiting registration), registered, revoked
    (by an operator; `agora admin restore` lifts it), FLAGGED (locked after
    token reuse; `agora admin reenroll` replaces the keys).
    """
    with user_errors():
        store, _ = open_store(data_dir or default_data_dir())
        rows = [{k: r[k] for k in ("username", "name", "kind", "level", "state", "flagged",
                                   "port", "last_login_at", "sessions")}
                for r in admin.principal_rows(store)]
        if json_out:
            print_json(rows)
            return
        console.print(principals_table(rows))


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
    username: Annotated[str | None, typer.Argument(help="Only this user's rows (same as "
                                                   "--principal).")] = None,
    principal: Annotated[str | None, typer.Option("--principal", "-p",
                                                  help="Only this user's rows.")] = None,
    decision: Annotated[str | None, typer.Option(
        "--decision", "-d", help="Only rows with this outcome: ok, refused, flagged...")
    ] = None,
    since: Annotated[float | None, typer.Option(
        "--since", help="Only rows from this moment on: an age (90s, 10m, 2h, 3d) or a "
        "local time (2026-11-24 12:30).", metavar="WHEN", parser=options.since)] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new rows "
                                         "as they are written, until Ctrl-C.")] = False,
    max_time: Annotated[float, typer.Option(
        "--max-time", help="With --follow: stop after this many seconds (0: no limit).",
        metavar="SECONDS", parser=options.duration)] = 0,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many "
                                       "rows, newest last.")] = 50,
    data_dir: DataDirOption = None,  # type: ignore[assignment]
    json_out: JsonOption = False,
) -> None:
    """Show the audit trail: who did what, and whether it was allowed (never arguments).

    Repeated decisions of one minute are one row with a count (a flood of
    refusals from one address is one row per minute); text a peer sent is shown
    escaped.

    With --json, one array (newest first); with --json --follow, one JSON object
    per row and line as rows are written.
    """
    who = principal or username
    with user_errors():
        store, _ = open_store(data_dir or default_data_dir())
        rows = list(reversed(admin.audit_rows(store, who, decision, limit, since)))
        last_id = rows[-1]["id"] if rows else _last_audit_id(store)
        if json_out and not follow:
            print_json(rows[::-1])  # one array, newest first
        else:
            _print_audit(rows, json_out, header=not follow)
        deadline = time.monotonic() + max_time if max_time else None
        try:
            while follow and (deadline is None or time.monotonic() < deadline):
                time.sleep(0.2)
                new = list(reversed(admin.audit_rows(store, who, decision, 1000, since,
                                                     last_id)))
                if new:
                    last_id = new[-1]["id"]
                    _print_audit(new, json_out, header=False)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None


def _last_audit_id(store: Store) -> int:
    newest = store.audit_rows(limit=1)
    return newest[0]["id"] if newest else 0


def _print_audit(rows: list[dict], json_out: bool, header: bool) -> None:
    if json_out:
        for r in rows:
            sys.stdout.write(json.dumps(r, sort_keys=True) + "\n")
        sys.stdout.flush()
        return
    # Every text cell is shown as written (cli.common.shown): a username in a refused LOGIN
    # is whatever a stranger sent, and "[/x]" read as markup stopped this command.
    if not header:  # following: plain lines, one per row, as they come
        for r in rows:
            console.print(f"{_when(r['ts'])}  {shown(r['username'] or '-')}  "
                          f"{shown(r['action'])}  {shown(r['outcome'])}  x{r['count'] or 1}  "
                          f"{shown(r['source'] or '-')}  {shown(r['detail'] or '')}".rstrip(),
                          highlight=False, style="red" if r["outcome"] != "ok" else "")
        sys.stdout.flush()
        return
    table = Table("time", "user", "action", "outcome", "count", "source", "detail")
    for column in table.columns:
        column.overflow = "fold"
    table.columns[1].no_wrap = True
    table.columns[1].min_width = max((len(r["username"] or "-") for r in rows), default=4)
    for r in rows:
        style = "red" if r["outcome"] not in ("ok",) else ""
        table.add_row(_when(r["ts"]), shown(r["username"] or "-"), shown(r["action"]),
                      shown(r["outcome"]), str(r["count"] or 1), shown(r["source"] or "-"),
                      shown(r["detail"] or ""), style=style)
    console.print(table)


services_app = typer.Typer(
    help="Which service principals may offer which worker-served services, and at which "
    "level. Without a sub-command: the list.", invoke_without_command=True)
admin_app.add_typer(services_app, name="services")


@services_app.callback()
def services_list(ctx: typer.Context, data_dir: DataDirOption = None,  # type: ignore[assignment]
                  json_out: JsonOption = False) -> None:
    """List bound services: name, the level callers need, the principals that may serve it.

    A worker offering a service not bound to its principal is refused by the
    broker, and a service's level is this record's, never the one a worker asks
    for.
    """
    if ctx.invoked_subcommand is not None:
        return
    with user_errors():
        store, _ = open_store(data_dir or default_data_dir())
        rows = list(store.bindings().values())
        if json_out:
            print_json(rows)
            return
        table = Table("service", "level", "principals")
        for r in rows:
            table.add_row(r["service"], f"{r['level']} {Level(r['level']).label}",
                          ", ".join(r["usernames"]))
        console.print(table)


@services_app.command("bind")
def services_bind(
    service: Annotated[str, typer.Argument(help="The service name workers offer.")],
    principal: Annotated[str, typer.Option("--principal", help="A principal of kind "
                                           "service that may run its workers.")],
    level: Annotated[str, typer.Option("--level", help="Level callers need, 1-5 or a name "
                                       "(one level per service: this changes it for all).")],
    data_dir: DataDirOption = None,  # type: ignore[assignment]
) -> None:
    """Let PRINCIPAL's workers offer SERVICE; callers need --level. Applies at once."""
    with user_errors():
        lvl = admin.parse_level(level)
        store, _ = open_store(data_dir or default_data_dir())
        store.bind_service(service, principal, lvl, time.time())
        console.print(f"{principal} may offer {service} (level {int(lvl)}, {lvl.label})",
                      highlight=False)


@services_app.command("unbind")
def services_unbind(
    service: Annotated[str, typer.Argument(help="The service name.")],
    principal: Annotated[str | None, typer.Option(
        "--principal", help="Only this principal (default: every one).")] = None,
    data_dir: DataDirOption = None,  # type: ignore[assignment]
) -> None:
    """Take SERVICE away; its running workers are detached at once and told why."""
    with user_errors():
        store, _ = open_store(data_dir or default_data_dir())
        store.unbind_service(service, time.time(), principal)
        console.print(f"{service} unbound" + (f" from {principal}" if principal else ""),
                      highlight=False)
