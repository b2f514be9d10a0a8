"""The operator's actions on the broker's store, shared by ``agora admin`` and ``agora admin ui``.

Both front ends parse their input and show the outcome; what an action *does* lives here,
once: the level parsed the same way, the store method called the same way (so the running
broker picks the change up as it does for any other connection), the principal's state read
the same way. Errors are :class:`~agora.errors.LocalError` with a one-line message.
"""

from __future__ import annotations

import time
from typing import Any

from agora.errors import LocalError
from agora.keyfile import KeyPair
from agora.protocol import DEFAULT_ONE_TIME_ID_TTL, Level, PrincipalKind
from broker.store import Store
from broker.store import principal_state as store_state

#: Audit rows shown at most; a decision filter looks through at most AUDIT_SCAN rows.
AUDIT_LIMIT = 200
AUDIT_SCAN = 5000


def parse_level(value: int | str) -> Level:
    try:
        return Level.parse(value)
    except ValueError as exc:
        raise LocalError(str(exc)) from None


def parse_kind(value: PrincipalKind | str) -> PrincipalKind:
    if isinstance(value, PrincipalKind):
        return value
    try:
        return PrincipalKind(str(value).strip().lower())
    except ValueError:
        kinds = ", ".join(k.value for k in PrincipalKind)
        raise LocalError(f"kind must be one of: {kinds}") from None


_STATE_TEXT = {"re-enrolled": "re-enrolled, awaiting registration"}


def principal_state(row: dict[str, Any]) -> str:
    """What the operator reads for a principal: revoked, FLAGGED: why, enrolled / re-enrolled
    (awaiting registration), registered (the word itself from :func:`store.principal_state`)."""
    state = store_state(row)
    if state == "flagged":
        return f"FLAGGED: {row['flagged']}"
    return _STATE_TEXT.get(state, state)


def principal_rows(store: Store) -> list[dict[str, Any]]:
    """Every principal as the operator sees it (no key, no hash), with the live sessions
    the broker published (more than one: each was told of the others)."""
    live = store.live_sessions()
    return [{"username": r["username"], "name": r["name"], "kind": r["kind"],
             "level": r["level"], "level_name": Level(r["level"]).label,
             "state": principal_state(r), "flagged": r["flagged"],
             "revoked": bool(r["revoked_at"]), "port": r["port"],
             "last_login_at": r["last_login_at"],
             "sessions": [{k: s[k] for k in ("session", "started_at", "address", "port")}
                          | {"listening": bool(s["listening"])}
                          for s in live.get(r["username"], [])]}
            for r in store.principals()]


def enroll(store: Store, keys: KeyPair, name: str, level: int | str,
           kind: PrincipalKind | str = PrincipalKind.PERSON,
           ttl_hours: float = DEFAULT_ONE_TIME_ID_TTL / 3600,
           now: float | None = None, allow_similar: bool = False,
           username: str | None = None) -> dict[str, Any]:
    """Enroll; the answer holds the one-time ID: it is the hand-over, show it once.

    The username is ``username`` if given, else made from the name. A name whose username
    is taken is refused (SimilarName) unless ``allow_similar``; then ``similar_to`` names
    the taken one.
    """
    lvl = parse_level(level)
    kind = parse_kind(kind)
    if not ttl_hours > 0:
        raise LocalError("the one-time ID's lifetime must be more than 0 hours")
    enrolled, one_time_id = store.enroll(name, lvl, _now(now), kind, ttl_hours * 3600,
                                         allow_similar=allow_similar, username=username)
    base = username or store.username_for(name)
    return {"username": enrolled, "name": " ".join(name.split()),
            "one_time_id": one_time_id, "fingerprint": keys.fingerprint, "level": int(lvl),
            "level_name": lvl.label, "kind": kind.value, "expires_in_hours": ttl_hours,
            "similar_to": base if base != enrolled else None}


def reenroll(store: Store, keys: KeyPair, username: str,
             ttl_hours: float = DEFAULT_ONE_TIME_ID_TTL / 3600,
             now: float | None = None) -> dict[str, Any]:
    """A new one-time ID (lost device, or flagged after token reuse); the old keys die.
    Refused for a revoked principal: :func:`restore` lifts a revocation, on purpose."""
    if not ttl_hours > 0:
        raise LocalError("the one-time ID's lifetime must be more than 0 hours")
    one_time_id = store.reenroll(username, _now(now), ttl_hours * 3600)
    return {"username": username, "one_time_id": one_time_id,
            "fingerprint": keys.fingerprint, "expires_in_hours": ttl_hours,
            "state": store_state(store.require(username))}


def restore(store: Store, keys: KeyPair, username: str,
            ttl_hours: float = DEFAULT_ONE_TIME_ID_TTL / 3600,
            now: float | None = None) -> dict[str, Any]:
    """Lift a revocation: a new one-time ID; the old keys stay dead."""
    if not ttl_hours > 0:
        raise LocalError("the one-time ID's lifetime must be more than 0 hours")
    one_time_id = store.restore(username, _now(now), ttl_hours * 3600)
    return {"username": username, "one_time_id": one_time_id,
            "fingerprint": keys.fingerprint, "expires_in_hours": ttl_hours,
            "state": store_state(store.require(username))}


def revoke(store: Store, username: str, now: float | None = None) -> None:
    store.revoke(username, _now(now))


def set_level(store: Store, username: str, level: int | str,
              now: float | None = None) -> Level:
    lvl = parse_level(level)
    store.set_level(username, lvl, _now(now))
    return lvl


def audit_rows(store: Store, principal: str | None = None, decision: str | None = None,
               limit: int = AUDIT_LIMIT, since: float | None = None,
               after_id: int = 0) -> list[dict[str, Any]]:
    """Newest first; ``decision`` is "ok", "refused" (anything but ok) or an exact outcome;
    ``since`` a Unix time; ``after_id`` the last row already shown (following the trail)."""
    rows = store.audit_rows(principal or None, AUDIT_SCAN if decision else limit,
                            since=since, after_id=after_id)
    if decision == "refused":
        rows = [r for r in rows if r["outcome"] != "ok"]
    elif decision:
        rows = [r for r in rows if r["outcome"] == decision]
    return rows[:limit]


def _now(now: float | None) -> float:
    return time.time() if now is None else now
