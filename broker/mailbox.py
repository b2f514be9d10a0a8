"""The offline mailbox: letters for collaborators who are not listening, kept by the broker.

A letter is one AGORA/2 envelope (channel LETTER) sealed by its sender under the box key of
the sender's and the recipient's key pairs before it reaches the broker, so the broker stores
ciphertext it cannot read or forge (it checks only that the clear header says LETTER). It
records only who deposited it (from the session, never from the request), for whom, when and
its size. The recipient's agent fetches its letters when it starts listening (and every little while
after), opens them with the sender's key from the directory, and then deletes them.

Bounded: at most MAILBOX_MAX_LETTERS letters and MAILBOX_MAX_BYTES bytes per recipient, each
at most MAX_LETTER_SIZE bytes; letters older than MAILBOX_TTL are deleted unread.

Services (session, level public): ``mailbox_deposit {to, sealed}``, ``mailbox_fetch {}``,
``mailbox_delete {upto}``. Table ``mailbox`` in the broker's SQLite file.
"""

from __future__ import annotations

from typing import Any

import sqlite_utils

from agora.crypto import b64, unb64
from agora.envelope import MIN_SEALED, peek
from agora.errors import ProtocolError, RemoteError
from agora.protocol import MAILBOX_TTL, MAX_LETTER_SIZE, Channel, ErrorCode, Kind, Level
from agora.wire import field, id_field
from broker.core import CallContext, Service
from broker.store import refuse_unavailable

MAILBOX_MAX_LETTERS = 100
MAILBOX_MAX_BYTES = 2 * 1024 * 1024
#: A fetch answers at most this many sealed bytes (the reply must stay under the size limit).
FETCH_MAX_BYTES = 128 * 1024


def _table(db: sqlite_utils.Database) -> sqlite_utils.db.Table:
    table = db["mailbox"]
    if not table.exists():
        table.create({"id": int, "recipient": str, "sender": str, "sealed": bytes,
                      "size": int, "deposited_at": float},
                     pk="id", not_null={"recipient", "sender", "sealed", "size",
                                        "deposited_at"}, if_not_exists=True)
        table.create_index(["recipient", "id"], if_not_exists=True)
    return table  # type: ignore[return-value]


def deposit(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """Keep a sealed letter for ``to`` until they fetch it (or it expires)."""
    recipient = field(args, "to", str)
    sealed = unb64(field(args, "sealed", str))
    if len(sealed) > MAX_LETTER_SIZE:
        raise RemoteError(ErrorCode.TOO_LARGE, f"letter is over {MAX_LETTER_SIZE} bytes")
    if len(sealed) < MIN_SEALED:
        raise ProtocolError("letter is too short to be sealed")
    header = peek(sealed)  # the broker cannot open it, but can refuse what is no letter
    if (header.channel, header.kind) != (Channel.LETTER, Kind.LETTER):
        raise ProtocolError("not a letter (AGORA/2 channel LETTER, kind LETTER)")
    row = ctx.core.store.get(recipient)
    if row is None or row["public_key"] is None:
        raise RemoteError(ErrorCode.UNKNOWN_USER, f"unknown user {recipient[:64]!r}")
    refuse_unavailable(row)
    db = ctx.core.store.db
    table = _table(db)
    with db.conn:
        db.execute("delete from mailbox where deposited_at < ?", [ctx.now - MAILBOX_TTL])
        count, total = db.execute(
            "select count(*), coalesce(sum(size), 0) from mailbox where recipient = ?",
            [recipient]).fetchone()
        if count >= MAILBOX_MAX_LETTERS or total + len(sealed) > MAILBOX_MAX_BYTES:
            raise RemoteError(ErrorCode.MAILBOX_FULL, f"{recipient}'s mailbox is full; "
                              "try again after they log in")
        table.insert({"recipient": recipient, "sender": ctx.session.username,
                      "sealed": sealed, "size": len(sealed), "deposited_at": ctx.now})
    ctx.core.audit_later(ctx.session.username, "mailbox:deposit", "ok", ctx.now,
                         f"to={recipient} size={len(sealed)}")
    return {"to": recipient, "queued": count + 1}


def fetch(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """The caller's oldest letters, as many as fit in one reply; ``more`` if some are left."""
    db = ctx.core.store.db
    _table(db)
    rows = db.execute(
        "select id, sender, sealed, deposited_at from mailbox where recipient = ? "
        "and deposited_at >= ? order by id limit ?",
        [ctx.session.username, ctx.now - MAILBOX_TTL, MAILBOX_MAX_LETTERS + 1]).fetchall()
    letters, size = [], 0
    for letter_id, sender, sealed, deposited_at in rows:
        if letters and size + len(sealed) > FETCH_MAX_BYTES:
            break
        size += len(sealed)
        letters.append({"id": letter_id, "from": sender, "sealed": b64(sealed),
                        "deposited_at": deposited_at})
    return {"letters": letters, "more": len(letters) < len(rows)}


def count(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """How many letters wait for the caller (``agora login`` says it)."""
    db = ctx.core.store.db
    _table(db)
    waiting = db.execute("select count(*) from mailbox where recipient = ? and "
                         "deposited_at >= ?",
                         [ctx.session.username, ctx.now - MAILBOX_TTL]).fetchone()[0]
    return {"waiting": waiting}


def delete(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    """Delete the caller's letters up to id ``upto`` (after the agent has kept them)."""
    upto = id_field(args, "upto")
    db = ctx.core.store.db
    _table(db)
    with db.conn:
        deleted = db.execute("delete from mailbox where recipient = ? and id <= ?",
                             [ctx.session.username, upto]).rowcount
    return {"deleted": deleted}


def mailbox_services() -> list[Service]:
    return [
        Service("mailbox_deposit", Level.PUBLIC, "leave an end-to-end encrypted letter for an "
                "offline collaborator", deposit),
        Service("mailbox_fetch", Level.PUBLIC, "your letters waiting at the broker", fetch),
        Service("mailbox_delete", Level.PUBLIC, "delete your letters up to an id", delete),
        Service("mailbox_count", Level.PUBLIC, "how many letters wait for you", count),
    ]
