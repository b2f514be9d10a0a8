"""Membership as the broker pushes it to service principals (the auctioneer): who holds
which key, at which level, in which state — and a version that orders every change.

:class:`Membership` is plain state, no I/O: ``update(rows)`` takes the store's principals
after any change and returns the members that changed, each stamped with the next version;
``snapshot()`` is the whole valid membership at the current version. A subscriber that
subscribes first and then fetches the snapshot applies only the notices with a greater
version, and sees every change exactly once (PROTOCOL.md 4.5).

Versions start at the broker's start time in milliseconds and grow by one per change, so
they also grow across broker restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agora.crypto import b64
from agora.envelope import timestamp_counter
from broker.store import principal_state


class MemberState:
    """A member's state as subscribers see it (broker.store.principal_state's words); only
    REGISTERED keys are valid."""

    REGISTERED = "registered"  # has a key and a token: may log in, may bid
    ENROLLED = "enrolled"  # a one-time ID waits: never registered yet
    RE_ENROLLED = "re-enrolled"  # a one-time ID waits: the old key is dead
    REVOKED = "revoked"
    FLAGGED = "flagged"  # token reuse: locked until re-enrolled


@dataclass(frozen=True)
class Member:
    username: str
    kind: str
    level: int
    state: str
    public_key: bytes | None

    def to_dict(self) -> dict[str, Any]:
        return {"username": self.username, "kind": self.kind, "level": self.level,
                "state": self.state,
                "public_key": b64(self.public_key) if self.public_key else None}


def member_of(row: dict[str, Any]) -> Member:
    """A store row as a member."""
    return Member(row["username"], row["kind"], int(row["level"]), principal_state(row),
                  row["public_key"])


def change_of(old: Member | None, new: Member) -> str | None:
    """What happened to a member, in one word (its new state, ``re-registered`` or
    ``level-changed``); None when nothing a subscriber sees did."""
    if old == new:
        return None
    if old is None or old.state != new.state:
        return new.state
    if old.public_key != new.public_key:
        return "re-registered"
    return "level-changed"


class Membership:
    """Every principal's (key, level, state), versioned."""

    def __init__(self, rows: list[dict[str, Any]], now: float) -> None:
        self.members = {m.username: m for m in map(member_of, rows)}
        self.version = timestamp_counter(now)

    def update(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Apply the store's current rows; the membership notices for what changed."""
        changes: list[dict[str, Any]] = []
        current = {m.username: m for m in map(member_of, rows)}
        for username, new in current.items():
            change = change_of(self.members.get(username), new)
            if change is not None:
                self.version += 1
                changes.append({"type": "membership", "version": self.version,
                                "change": change, **new.to_dict()})
        for username, old in self.members.items():
            if username not in current:  # deleted from the store by hand
                self.version += 1
                gone = Member(old.username, old.kind, old.level, MemberState.REVOKED,
                              old.public_key)
                changes.append({"type": "membership", "version": self.version,
                                "change": "removed", **gone.to_dict()})
        self.members = current
        return changes

    def snapshot(self) -> dict[str, Any]:
        """Registered (valid) members and the version they are current at."""
        return {"version": self.version,
                "members": [m.to_dict() for m in sorted(self.members.values(),
                                                        key=lambda m: m.username)
                            if m.state == MemberState.REGISTERED]}
