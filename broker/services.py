"""Services built into the broker, each with the level it requires.

A service is a plain function ``(ctx, args) -> JSON-able result``; it raises RemoteError to
refuse. The broker checks the level before calling it, from the level it stores, never from
anything in the request.
"""

from __future__ import annotations

from typing import Any

from agora.protocol import Level
from broker.core import CallContext, Service


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


def builtin_services() -> dict[str, Service]:
    services = [
        Service("whoami", Level.PUBLIC, "who you are, your level and your session", whoami),
        Service("echo", Level.PUBLIC, "returns its arguments unchanged", echo),
    ]
    return {s.name: s for s in services}
