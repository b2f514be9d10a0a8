"""The broker's durable state in SQLite, through sqlite-utils.

Tables:

- ``principals``: one row per enrolled collaborator or service. Holds the one-time ID and the
  current token *hashed*, the registered public key, the symmetric key (the broker must use
  it, so it is stored as is: the database file is 0600 inside a 0700 directory), the last
  reported port, and the revoked / flagged state the operator sees.
- ``retired_tokens``: hashes of every token that was replaced; presenting one is theft.
- ``live_sessions``: the broker's live sessions as the operator may see them (short id,
  principal, start, address, port, listening) — a mirror the broker writes about once a
  second and empties when it starts; never a key. ``agora admin list`` reads it.
- ``service_bindings``: which service principals may offer which worker-served service,
  and at which level (the operator's record: ``agora admin services``). One row per
  (service, principal); a service has one level, the same in all its rows. A worker
  offering a name not bound to its principal is refused; the level callers need is this
  one, never the one a worker asks for.
- ``audit``: who did what and what the broker decided. Never arguments, tokens or keys.
  Counted rows (see :mod:`broker.audit`): one row per minute and key with a ``count``,
  ``ts`` the first and ``last_ts`` the last time; ``source`` the peer's address. Every text
  cell is escaped (:func:`agora.text.printable`). Rows older than the retention bound are
  pruned in small batches (:meth:`Store.prune_audit`).

Every change that must happen together is one transaction, and the database runs in WAL
mode, so a ``kill -9`` at any moment leaves either the old or the new state.
"""

from __future__ import annotations

import re
import sqlite3
import unicodedata
from pathlib import Path
from typing import Any

import sqlite_utils

from agora.crypto import hash_secret, new_one_time_id, normalize_one_time_id
from agora.errors import LocalError, RemoteError
from agora.files import opening_database
from agora.protocol import (
    DEFAULT_ONE_TIME_ID_TTL,
    SERVICE_NAME_RE,
    ErrorCode,
    Level,
    PrincipalKind,
)
from agora.text import printable
from broker.audit import AuditRow


class NotFoundError(LocalError):
    """No principal with that username."""


#: What a username is: lowercase letters and digits, dots between them (``ana.lima``).
USERNAME = re.compile(r"[a-z0-9]+(?:\.[a-z0-9]+)*")
MAX_USERNAME_CHOSEN = 32


def check_username(text: str) -> str:
    """A username an operator chose (``--username``): the shape derived ones have."""
    if len(text) > MAX_USERNAME_CHOSEN or not USERNAME.fullmatch(text):
        raise LocalError(f"username {text[:40]!r} must be 1-{MAX_USERNAME_CHOSEN} lowercase "
                         "letters a-z and digits, with single dots between (e.g. li.wei)")
    return text


class SimilarName(LocalError):
    """The name's username is taken: enrolling would silently create ``name2``."""


class StillRevoked(LocalError):
    """Re-enrolling a revoked principal would lift the revocation: ``restore`` does that."""


def principal_state(row: dict[str, Any]) -> str:
    """One word for a principal's standing, said the same way by ``admin list``, errors and
    the audit trail: revoked (by the operator), flagged (locked after token reuse),
    enrolled / re-enrolled (a one-time ID waits to be used), or registered."""
    if row["revoked_at"]:
        return "revoked"
    if row["flagged"]:
        return "flagged"
    if row["one_time_id_hash"] is not None:
        return "re-enrolled" if row["registered_at"] is not None else "enrolled"
    return "registered"


def refuse_unavailable(row: dict[str, Any]) -> None:
    """Raise the refusal a peer or service gets about a revoked or flagged principal."""
    state = principal_state(row)
    if state == "revoked":
        raise RemoteError(ErrorCode.REVOKED, f"{row['username']} is revoked")
    if state == "flagged":
        raise RemoteError(ErrorCode.FLAGGED, f"{row['username']} is flagged (locked after "
                          "token reuse until the operator re-enrolls them)")


class Store:
    """All SQLite access of the broker. Pass ``path=None`` for an in-memory store (tests)."""

    def __init__(self, path: Path | None) -> None:
        # The broker uses its store from one thread at a time, but not always the thread
        # that opened it (tests run the broker in a thread).
        connection = sqlite3.connect(path or ":memory:", check_same_thread=False)
        self.db = sqlite_utils.Database(connection)
        with opening_database(path, connection):
            if path is not None:
                self.db.enable_wal()
                # NORMAL is durable against process crashes (kill -9) in WAL mode; only an
                # OS crash can lose the last commits, which then fall back to the previous
                # token.
                self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA busy_timeout=5000")
            self._create_tables()
        #: Counts this connection's own membership changes (registration, token-reuse flag),
        #: which PRAGMA data_version does not see.
        self.membership_writes = 0

    def _create_tables(self) -> None:
        self.db["principals"].create(
            {
                "username": str, "name": str, "kind": str, "level": int, "created_at": float,
                "one_time_id_hash": bytes, "one_time_id_expires": float,
                "registered_at": float, "public_key": bytes, "symmetric_key": bytes,
                "token_hash": bytes, "port": int, "address": str, "last_login_at": float,
                "last_login_ts": float,
                "last_login_digest": bytes, "last_login_reply": bytes,
                "revoked_at": float, "flagged": str,
            },
            pk="username", not_null={"name", "kind", "level", "created_at"}, if_not_exists=True,
        )
        self.db["retired_tokens"].create(
            {"token_hash": bytes, "username": str, "retired_at": float},
            pk="token_hash", if_not_exists=True,
        )
        self.db["audit"].create(
            {"id": int, "ts": float, "username": str, "action": str, "outcome": str,
             "detail": str, "source": str, "count": int, "last_ts": float},
            pk="id", if_not_exists=True,
        )
        columns = self.db["audit"].columns_dict
        for name, kind in (("source", str), ("count", int), ("last_ts", float)):
            if name not in columns:  # a database from before counted rows
                self.db["audit"].add_column(name, kind)
        self.db["audit"].create_index(["username"], if_not_exists=True)
        self.db["live_sessions"].create(
            {"session": str, "username": str, "started_at": float, "address": str,
             "port": int, "listening": int},
            pk="session", if_not_exists=True,
        )
        self.db["service_bindings"].create(
            {"service": str, "username": str, "level": int, "bound_at": float},
            pk=("service", "username"), not_null={"level"}, if_not_exists=True,
        )
        self.db["audit"].create_index(["ts"], if_not_exists=True)

    # -- reads ----------------------------------------------------------------------------

    def get(self, username: str) -> dict[str, Any] | None:
        rows = list(self.db.query(
            "select * from principals where username = ?", [username]))
        return rows[0] if rows else None

    def require(self, username: str) -> dict[str, Any]:
        row = self.get(username)
        if row is None:
            raise NotFoundError(f"no such user: {username}")
        return row

    def principals(self) -> list[dict[str, Any]]:
        return list(self.db.query("select * from principals order by username"))

    def by_public_key(self, public_key: bytes) -> dict[str, Any] | None:
        rows = list(self.db.query(
            "select * from principals where public_key = ?", [public_key]))
        return rows[0] if rows else None

    def is_retired_token(self, username: str, token_hash: bytes) -> bool:
        rows = list(self.db.query(
            "select 1 from retired_tokens where token_hash = ? and username = ?",
            [token_hash, username]))
        return bool(rows)

    def audit_rows(self, username: str | None = None, limit: int = 100,
                   outcome: str | None = None, since: float | None = None,
                   after_id: int = 0) -> list[dict[str, Any]]:
        """Newest first; only ``username``'s, only ``outcome``, only from ``since`` on,
        only rows after ``after_id`` (for following the trail)."""
        clauses, args = ["id > ?"], [after_id]
        for clause, value in (("username = ?", username), ("outcome = ?", outcome),
                              ("ts >= ?", since)):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        return list(self.db.query(
            f"select * from audit where {' and '.join(clauses)} "  # noqa: S608 - fixed text
            "order by id desc limit ?", [*args, limit]))

    def data_version(self) -> int:
        """Changes whenever *another* connection commits (e.g. ``agora admin``)."""
        return next(self.db.query("PRAGMA data_version"))["data_version"]

    # -- operator actions ------------------------------------------------------------------

    def enroll(self, name: str, level: Level, now: float,
               kind: PrincipalKind = PrincipalKind.PERSON,
               ttl: float = DEFAULT_ONE_TIME_ID_TTL,
               allow_similar: bool = True, username: str | None = None) -> tuple[str, str]:
        """Create a principal; return (username, one-time ID). The ID is stored hashed.

        The username is ``username`` if given (refused if taken), else made from the name
        (:meth:`username_for`). When that one is taken the new one gets a number
        (``ana.lima2``); with ``allow_similar=False`` that raises :class:`SimilarName`
        instead. A name with no letter or digit in a-z, 0-9 (``李伟``) needs ``username``.
        """
        name = " ".join(name.split())
        if not name or len(name) > 100:
            raise LocalError("name must be 1-100 characters")
        chosen = check_username(username) if username is not None else None
        base = self.username_for(name)
        if chosen is None and not base:
            raise LocalError(f"{name[:40]!r} gives no username (it has no letter a-z or "
                             "digit); choose one with --username")
        one_time_id = new_one_time_id()
        with self.db.conn:
            if chosen is not None:
                taken = self.get(chosen)
                if taken is not None:
                    raise LocalError(f"{chosen} is already enrolled ({taken['name']})")
                username = chosen
            else:
                username = self._free_username(base)
                if username != base and not allow_similar:
                    raise SimilarName(f"{base} is already enrolled "
                                      f"({self.require(base)['name']}); add --allow-similar "
                                      f"to enroll another as {username}")
            self.db["principals"].insert({
                "username": username, "name": name, "kind": PrincipalKind(kind).value,
                "level": int(level), "created_at": now,
                "one_time_id_hash": hash_secret(normalize_one_time_id(one_time_id)),
                "one_time_id_expires": now + ttl,
            })
            self._audit(username, "enroll", "ok",
                        f"level={int(level)} kind={PrincipalKind(kind).value}", now)
        return username, one_time_id

    def reenroll(self, username: str, now: float,
                 ttl: float = DEFAULT_ONE_TIME_ID_TTL) -> str:
        """New one-time ID for a principal whose keys must be replaced (lost or stolen,
        or flagged after token reuse). Never lifts a revocation: see :meth:`restore`."""
        if self.require(username)["revoked_at"]:
            raise StillRevoked(f"{username} is revoked; re-enrolling does not lift that: run "
                               f"'agora admin restore {username}' to lift the revocation "
                               "and issue a new one-time ID")
        return self._new_one_time_id(username, "reenroll", now, ttl)

    def restore(self, username: str, now: float,
                ttl: float = DEFAULT_ONE_TIME_ID_TTL) -> str:
        """Lift a revocation, on purpose: a new one-time ID, the old keys stay dead."""
        if not self.require(username)["revoked_at"]:
            raise LocalError(f"{username} is not revoked; to replace lost keys run "
                             f"'agora admin reenroll {username}'")
        return self._new_one_time_id(username, "restore", now, ttl)

    def _new_one_time_id(self, username: str, action: str, now: float, ttl: float) -> str:
        one_time_id = new_one_time_id()
        with self.db.conn:
            self.db["principals"].update(username, {
                "one_time_id_hash": hash_secret(normalize_one_time_id(one_time_id)),
                "one_time_id_expires": now + ttl, "token_hash": None, "flagged": None,
                "revoked_at": None, "last_login_digest": None, "last_login_reply": None,
            })
            self._audit(username, action, "ok", "", now)
        return one_time_id

    def revoke(self, username: str, now: float) -> None:
        self.require(username)
        with self.db.conn:
            self.db["principals"].update(username, {"revoked_at": now, "token_hash": None})
            self._audit(username, "revoke", "ok", "", now)

    def set_level(self, username: str, level: Level, now: float) -> None:
        self.require(username)
        with self.db.conn:
            self.db["principals"].update(username, {"level": int(level)})
            self._audit(username, "set-level", "ok", f"level={int(level)}", now)

    # -- live sessions (written by the broker, read by the operator) ----------------------

    def live_sessions(self) -> dict[str, list[dict[str, Any]]]:
        """username -> that principal's live sessions, oldest first."""
        out: dict[str, list[dict[str, Any]]] = {}
        for r in self.db.query("select * from live_sessions order by started_at"):
            out.setdefault(r["username"], []).append(r)
        return out

    def mirror_sessions(self, added: list[dict[str, Any]], removed: list[str],
                        reset: bool = False) -> None:
        """Apply the broker's session changes since the last call (one transaction)."""
        with self.db.conn:
            if reset:
                self.db.execute("delete from live_sessions")
            self.db.conn.executemany("delete from live_sessions where session = ?",
                                     [(s,) for s in removed])
            self.db.conn.executemany(
                "insert or replace into live_sessions (session, username, started_at, "
                "address, port, listening) values (:session, :username, :started_at, "
                ":address, :port, :listening)", added)

    # -- service bindings -----------------------------------------------------------------

    def bindings(self) -> dict[str, dict[str, Any]]:
        """Every bound service: name -> {"service", "level", "usernames": [...]}."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.db.query("select * from service_bindings order by service, username"):
            entry = out.setdefault(r["service"], {"service": r["service"], "level": r["level"],
                                                  "usernames": []})
            entry["usernames"].append(r["username"])
        return out

    def bind_service(self, service: str, username: str, level: Level, now: float) -> None:
        """Let ``username`` (a service principal) offer ``service``, which needs ``level``.

        A service has one level: binding it at another level changes it for every principal
        bound to it. The running broker applies the change within a fraction of a second.
        """
        if not SERVICE_NAME_RE.match(service):
            raise LocalError(f"{printable(service)!s} is not a service name: 1-64 of a-z 0-9 "
                             ". _ -, starting with a letter")
        row = self.require(username)
        if row["kind"] != PrincipalKind.SERVICE.value:
            raise LocalError(f"{username} is not a service principal (enroll it with "
                             "--kind service)")
        if int(level) > row["level"]:
            raise LocalError(f"{username} has level {row['level']}; it cannot offer a level "
                             f"{int(level)} service")
        others = self.bindings().get(service, {"usernames": []})["usernames"]
        for other in others:
            if other != username and self.require(other)["level"] < int(level):
                raise LocalError(f"{other} (also bound to {service}) has level "
                                 f"{self.require(other)['level']}; it cannot offer a level "
                                 f"{int(level)} service")
        with self.db.conn:
            self.db["service_bindings"].insert(
                {"service": service, "username": username, "level": int(level),
                 "bound_at": now}, replace=True)
            self.db.execute("update service_bindings set level = ? where service = ?",
                            [int(level), service])
            self._audit(username, f"bind:{service}", "ok", f"level={int(level)}", now)

    def unbind_service(self, service: str, now: float, username: str | None = None) -> None:
        """Take ``service`` from ``username``, or from every principal when None."""
        entry = self.bindings().get(service)
        if entry is None or (username is not None and username not in entry["usernames"]):
            who = f" to {username}" if username else ""
            raise NotFoundError(f"{printable(service)} is not bound{who}")
        with self.db.conn:
            for name in entry["usernames"]:
                if username is None or name == username:
                    self.db["service_bindings"].delete((service, name))
                    self._audit(name, f"unbind:{service}", "ok", "", now)

    # -- protocol transitions (each one transaction) --------------------------------------

    def complete_registration(self, username: str, public_key: bytes, symmetric_key: bytes,
                              token_hash: bytes, now: float) -> None:
        """Burn the one-time ID and bind the keys and TOKEN_1 to the principal."""
        with self.db.conn:
            self.db["principals"].update(username, {
                "one_time_id_hash": None, "one_time_id_expires": None,
                "registered_at": now, "public_key": public_key, "symmetric_key": symmetric_key,
                "token_hash": token_hash, "flagged": None,
            })
            self._audit(username, "register", "ok", "", now)
        self.membership_writes += 1

    def rotate_token(self, username: str, old_hash: bytes, new_hash: bytes, port: int,
                     address: str, login_digest: bytes, reply: bytes, request_ts: float,
                     now: float) -> None:
        """TOKEN_n -> TOKEN_n+1, record the port and the reply for exact retransmissions.

        ``request_ts`` is the login request's own timestamp (the client's clock), kept to
        tell a replayed older request from a fresh one made with a stolen token.
        """
        with self.db.conn:
            self.db["retired_tokens"].insert(
                {"token_hash": old_hash, "username": username, "retired_at": now}, replace=True)
            self.db["principals"].update(username, {
                "token_hash": new_hash, "port": port, "address": address,
                "last_login_at": now, "last_login_ts": request_ts,
                "last_login_digest": login_digest,
                "last_login_reply": reply,
            })
            self._audit(username, "login", "ok", f"port={port}", now)

    def flag(self, username: str, reason: str, now: float) -> None:
        """Token reuse: void the current token so nobody (owner or thief) can log in."""
        with self.db.conn:
            self.db["principals"].update(username, {"flagged": reason, "token_hash": None})
            self._audit(username, "login", "flagged", reason, now)
        self.membership_writes += 1

    def audit(self, username: str | None, action: str, outcome: str, detail: str,
              now: float) -> None:
        with self.db.conn:
            self._audit(username, action, outcome, detail, now)

    def write_audit(self, rows: list[AuditRow]) -> None:
        """Write counted rows from :class:`broker.audit.AuditBuffer` in one transaction.

        A row written before (``row_id`` set) gets its count, last time and detail updated;
        a new one is inserted and learns its id.
        """
        if not rows:
            return
        with self.db.conn:  # plain execute: sqlite-utils' insert costs ~10x more
            for r in rows:
                d = r.to_dict()
                if r.row_id is None:
                    cur = self.db.conn.execute(
                        "insert into audit (ts, last_ts, source, username, action, outcome, "
                        "detail, count) values (:ts, :last_ts, :source, :username, :action, "
                        ":outcome, :detail, :count)", d)
                    r.row_id = cur.lastrowid
                else:
                    self.db.conn.execute(
                        "update audit set count = :count, last_ts = :last_ts, "
                        "detail = :detail where id = :id", d)

    def prune_audit(self, before: float, limit: int = 2000) -> int:
        """Delete at most ``limit`` audit rows older than ``before``; how many went."""
        with self.db.conn:
            cur = self.db.conn.execute(
                "delete from audit where id in "
                "(select id from audit where ts < ? order by ts limit ?)", [before, limit])
        return cur.rowcount

    def _audit(self, username: str | None, action: str, outcome: str, detail: str,
               now: float) -> None:
        self.db["audit"].insert({
            "ts": now, "last_ts": now, "source": "", "count": 1,
            "username": None if username is None else printable(username),
            "action": printable(action), "outcome": printable(outcome),
            "detail": printable(detail)})

    @staticmethod
    def username_for(name: str) -> str:
        """The username a name gets when nobody has it yet: ``Ana Lima`` -> ``ana.lima``,
        ``Zoë Ångström`` -> ``zoe.angstrom``; empty when nothing of it is in a-z, 0-9."""
        name = " ".join(name.split())
        ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
        return re.sub(r"[^a-z0-9]+", ".", ascii_name.lower()).strip(".")[:32].rstrip(".")

    def _free_username(self, base: str) -> str:
        username, n = base, 1
        while self.get(username) is not None:
            n += 1
            username = f"{base}{n}"
        return username
