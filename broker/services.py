"""Services built into the broker, each with the level it requires.

A service is a plain function ``(ctx, args) -> JSON-able result``; it raises RemoteError to
refuse. The broker checks the level before calling it, from the level it stores, never from
anything in the request.
"""

from __future__ import annotations

from typing import Any

from agora.crypto import b64, unb64
from agora.errors import RemoteError
from agora.protocol import ErrorCode, Level, PrincipalKind
from agora.wire import field
from broker.core import CallContext, Service
from broker.mailbox import mailbox_services


def whoami(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """Who the broker thinks you are, and your session."""
    s = ctx.session
    return {
        "username": s.username, "kind": s.kind.value, "level": int(s.level),
        "level_name": s.level.label, "session": s.short_id, "port": s.port,
        "session_started": s.created, "requests": s.counter,
        "sessions": len(ctx.core.sessions.of_user(s.username)),
    }


def echo(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """Returns its arguments: a connectivity and latency check."""
    return args


def lookup(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """Where a principal listens and which public key is theirs (peers, auctioneer key).

    Read from SQLite: a look-up happens once per conversation, not per message.
    """
    username = field(args, "username", str)
    row = ctx.core.store.get(username)
    if row is None or row["public_key"] is None:
        raise RemoteError(ErrorCode.UNKNOWN_USER, f"unknown user {username[:64]!r}")
    if row["revoked_at"] or row["flagged"]:
        raise RemoteError(ErrorCode.REVOKED, f"{username} is revoked")
    # Peers go to the newest session that listens; one-shot commands (whoami, send...) log
    # in with listen=false so they never hide a running `agora listen`.
    live = sorted((s for s in ctx.core.sessions.of_user(username) if s.listening),
                  key=lambda s: s.created)
    return {
        "username": username, "kind": row["kind"], "level": row["level"],
        "public_key": b64(row["public_key"]), "online": bool(live),
        "port": live[-1].port if live else None,
        "address": live[-1].address if live else None,
    }


def key_status(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """Which registered principal holds a public key (for services such as the auctioneer).

    Only principals of kind "service" may ask: people have no business mapping keys.
    """
    if ctx.session.kind is not PrincipalKind.SERVICE:
        raise RemoteError(ErrorCode.FORBIDDEN, "key_status is for service principals")
    public_key = unb64(field(args, "public_key", str), 32)
    row = ctx.core.store.by_public_key(public_key)
    if row is None:
        return {"registered": False}
    return {"registered": True, "username": row["username"], "kind": row["kind"],
            "level": row["level"], "revoked": bool(row["revoked_at"] or row["flagged"])}


def builtin_services() -> dict[str, Service]:
    services = [
        Service("whoami", Level.PUBLIC, "who you are, your level and your session", whoami),
        Service("echo", Level.PUBLIC, "returns its arguments unchanged", echo),
        Service("lookup", Level.PUBLIC, "a principal's public key and where they listen",
                lookup),
        Service("key_status", Level.PUBLIC, "who holds a public key (service principals "
                "only)", key_status),
        *mailbox_services(),
    ]
    return {s.name: s for s in services}
