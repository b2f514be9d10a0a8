"""Services built into the broker, each with the level it requires.

A service is a plain function ``(ctx, args) -> JSON-able result``; it raises RemoteError to
refuse. The broker checks the level before calling it, from the level it stores, never from
anything in the request.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from agora.crypto import b64
from agora.errors import RemoteError
from agora.protocol import ErrorCode, Level, PrincipalKind
from agora.wire import JSONText, field, id_field
from broker.core import CallContext, Service
from broker.mailbox import mailbox_services
from broker.notes import MAX_LISTED, NotesStore
from broker.store import refuse_unavailable


def whoami(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """Who the broker thinks you are, and your session."""
    s = ctx.session
    return {
        "username": s.username, "kind": s.kind.value, "level": int(s.level),
        "level_name": s.level.label, "session": s.short_id, "port": s.port,
        "session_started": s.created, "requests": s.requests,
        "sessions": len(ctx.core.sessions.of_user(s.username)),
    }


def echo(ctx: CallContext, args: dict[str, Any]) -> Any:
    """Returns its arguments: a connectivity and latency check. The JSON object the caller
    sent (checked by the broker) goes back as its octets, not decoded and encoded again."""
    return JSONText(ctx.args_json) if ctx.args_json else args


def lookup(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """Where a principal listens and which public key is theirs (peers, auctioneer key).

    Read from SQLite: a look-up happens once per conversation, not per message.
    """
    username = field(args, "username", str)
    row = ctx.core.store.get(username)
    if row is None or row["public_key"] is None:
        raise RemoteError(ErrorCode.UNKNOWN_USER, f"unknown user {username[:64]!r}")
    refuse_unavailable(row)
    target = directory_target(ctx.core, username)
    return {
        "username": username, "kind": row["kind"], "level": row["level"],
        "public_key": b64(row["public_key"]), "online": target is not None,
        "port": target.port if target is not None else None,
        "address": target.address if target is not None else None,
    }


def directory_target(core: Any, username: str) -> Any:
    """The session peers are sent to (docs/PROTOCOL.md 5.2), or None when none listens.

    The longest-standing listening session whose notice subscription is alive (a running
    `agora listen`), so a newer login — perhaps with a stolen credentials file — never
    silently takes over a listener that runs; it was told of that login at once. When no
    listening session is subscribed (an old client, or the listener died and its
    subscription lapsed), the newest listening session. One-shot commands log in with
    listen=false and are never a target.
    """
    live = [s for s in core.sessions.of_user(username) if s.listening]  # oldest first
    subscribed = [s for s in live if s.sid in core.notices.subscriptions]
    if subscribed:
        return subscribed[0]
    return live[-1] if live else None


def membership(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """Every registered, valid member's key and level, at a version that membership notices
    continue from (subscribe first, then fetch this; PROTOCOL.md 4.5).

    Only principals of kind "service" may ask: people have no business mapping keys.
    """
    if ctx.session.kind is not PrincipalKind.SERVICE:
        raise RemoteError(ErrorCode.FORBIDDEN, "membership is for service principals")
    ctx.core.sync_membership(ctx.now)
    return ctx.core.membership.snapshot()


def time_service(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """The broker's clock (the one freshness checks use)."""
    return {"time": ctx.now,
            "utc": dt.datetime.fromtimestamp(ctx.now, dt.timezone.utc).isoformat()}


def directory(ctx: CallContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Who is online now, with their level: one entry per principal with a live session."""
    online: dict[str, Any] = {}
    for mine in ctx.core.sessions.by_user.values():  # each principal's oldest live session
        live = next((s for s in mine.values() if not s.expired(ctx.now)), None)
        if live is not None:
            online[live.username] = live
    return [{"username": s.username, "level": int(s.level), "kind": s.kind.value,
             "online_since": s.created} for s in sorted(online.values(),
                                                        key=lambda s: s.username)]


def services(ctx: CallContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    """The services the caller may call: built-in ones and those offered by workers.

    Services above the caller's level, and those for other kinds of principal (membership
    is for services), are left out. ``workers`` is null for built-ins.
    """
    level, kind = ctx.session.level, ctx.session.kind
    offered = [{"name": s.name, "level": int(s.level), "description": s.description,
                "workers": None} for s in ctx.core.services.values() if kind in s.callers]
    offered += ctx.core.workers.listing()
    return sorted((s for s in offered if s["level"] <= level), key=lambda s: s["name"])


def notes_services(notes: NotesStore) -> list[Service]:
    """notes.write / notes.read / notes.list over one store (see broker.notes)."""

    def write(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        level = args.get("level")
        try:
            level = None if level is None else Level.parse(level)
        except ValueError as exc:
            raise RemoteError(ErrorCode.BAD_REQUEST, str(exc)) from None
        return notes.write(ctx.session.username, ctx.session.level,
                           field(args, "title", str), field(args, "text", str), level, ctx.now)

    def read(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return notes.read(ctx.session.level, id_field(args, "id"))

    def list_notes(ctx: CallContext, args: dict[str, Any]) -> list[dict[str, Any]]:
        before = id_field(args, "before") if "before" in args else None
        limit = field(args, "limit", int) if "limit" in args else MAX_LISTED
        if not 1 <= limit <= MAX_LISTED:
            raise RemoteError(ErrorCode.BAD_REQUEST, f"limit must be 1 to {MAX_LISTED}")
        return notes.list(ctx.session.level, before, limit)

    return [
        Service("notes.write", Level.PUBLIC, "store a classified note (title, text, level "
                ">= yours: no write down)", write),
        Service("notes.read", Level.PUBLIC, "read a note by id, if at or below your level "
                "(no read up)", read),
        Service("notes.list", Level.PUBLIC, f"notes at or below your level, newest first "
                f"({MAX_LISTED} at a time; before=ID for older ones)", list_notes),
    ]


SERVICES_ONLY = frozenset({PrincipalKind.SERVICE})


def builtin_services(notes: NotesStore | None = None) -> dict[str, Service]:
    """The broker's own services; the notes store ones when ``notes`` is given."""
    services_ = [
        Service("whoami", Level.PUBLIC, "who you are, your level and your session", whoami),
        Service("echo", Level.PUBLIC, "returns its arguments unchanged", echo),
        Service("lookup", Level.PUBLIC, "a principal's public key and where they listen",
                lookup),
        Service("membership", Level.PUBLIC, "every registered member's key and level, "
                "versioned (service principals only)", membership, SERVICES_ONLY),
        Service("time", Level.PUBLIC, "the broker's clock", time_service),
        Service("directory", Level.PUBLIC, "who is online now, with their level", directory),
        Service("services", Level.PUBLIC, "the services you may call", services),
        *(notes_services(notes) if notes is not None else []),
        *mailbox_services(),
    ]
    return {s.name: s for s in services_}
