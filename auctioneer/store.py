"""The auctioneer's SQLite file: items and their outcome, bids, members, the epoch counter.

Nothing secret is stored: group keys live in memory only (a restart simply starts a new
epoch). Each write commits before it returns, so a bid the auctioneer has acknowledged
survives ``kill -9``; WAL with ``synchronous=NORMAL`` keeps that true for a process crash
without an fsync per bid.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlite_utils

from agora.files import opening_database
from auctioneer.items import Item

#: WAL pages after which a commit checkpoints by itself (SQLite's default is 1 000): only
#: reached if the server's checkpoint thread is not keeping up, or not running.
AUTOCHECKPOINT_PAGES = 20_000
#: Seconds a stored bid's time may be out of order (a clock stepped back), for bids_since.
CLOCK_SLACK = 600.0


class AuctionStore:
    def __init__(self, path: Path | None) -> None:
        # Opened by the thread that builds the server, used by the one that serves it (one
        # at a time), hence check_same_thread=False.
        self.path = path
        connection = sqlite3.connect(path or ":memory:", check_same_thread=False)
        self.db = sqlite_utils.Database(connection)
        with opening_database(path, connection):
            if path:
                self.db.enable_wal()
                self.db.execute("PRAGMA synchronous=NORMAL")
                # Checkpoints (the only fsyncs in WAL + NORMAL) are left to :meth:`checkpoint`,
                # which the server runs on a thread of its own, so a commit never waits for
                # one; this bound is a safety net only, should that thread not run.
                self.db.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
            self._create_tables()
        self._batching = False
        self._failed: BaseException | None = None
        self._checkpointer: sqlite3.Connection | None = None

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: the bids stored inside are committed together, once, at the end.

        The caller must not acknowledge or announce any of them before this returns. If
        any write inside failed, or the commit itself (a full disk), the whole batch is
        rolled back and that error raised here: none of its bids was stored, so none may
        be acknowledged.
        """
        self._batching, self._failed = True, None
        try:
            yield
        finally:
            self._batching = False
        failed, self._failed = self._failed, None
        try:
            if failed is not None:
                raise failed
            self.db.conn.commit()
        except BaseException:
            # Also when COMMIT itself failed, which can leave the transaction open: a later
            # commit must not store, unannounced, the bids this one could not.
            self.db.conn.rollback()
            raise

    def _create_tables(self) -> None:
        if "items" not in self.db.table_names():
            self.db["items"].create({
                "id": str, "file": str, "item": str, "state": str, "opened_at": float,
                "closes_at": float, "closed_at": float, "winner": str, "price_cents": int,
            }, pk="id")
        if "bids" not in self.db.table_names():
            self.db["bids"].create({
                "id": int, "item_id": str, "amount_cents": int, "username": str,
                "public_key": bytes, "ts": float,
            }, pk="id", foreign_keys=[("item_id", "items", "id")])
            self.db["bids"].create_index(["item_id"])
        # Since AGORA/2: a bid's request id answers its retries (even after a crash), and a
        # bid is voided, not deleted, when its bidder is revoked.
        for name, kind in (("request_id", bytes), ("closes_at", float), ("extended", int),
                           ("void", int)):
            if name not in self.db["bids"].columns_dict:
                self.db["bids"].add_column(name, kind, not_null_default=0
                                           if name in ("extended", "void") else None)
        # A retried bid is found in memory (AuctioneerCore, among the recent bids that
        # bids_since loads at start): this index only cost every bid a random page write.
        self.db.execute("DROP INDEX IF EXISTS idx_bids_request")
        if "members" not in self.db.table_names():
            self.db["members"].create({"public_key": bytes, "username": str,
                                       "joined_at": float}, pk="public_key")
        if "meta" not in self.db.table_names():
            self.db["meta"].create({"key": str, "value": int}, pk="key")

    # -- items ----------------------------------------------------------------------------

    def known_item(self, item_id: str) -> bool:
        return bool(self.db.execute("SELECT 1 FROM items WHERE id = ?", [item_id]).fetchone())

    def open_item(self, item: Item, file: str, now: float, closes_at: float) -> None:
        with self.db.conn:
            self.db["items"].insert({"id": item.id, "file": file,
                                     "item": _json(item.to_dict()), "state": "open",
                                     "opened_at": now, "closes_at": closes_at})

    def open_items(self) -> list[dict[str, Any]]:
        return list(self.db["items"].rows_where("state = 'open'", order_by="opened_at"))

    def set_closes_at(self, item_id: str, closes_at: float) -> None:
        with self.db.conn:
            self.db["items"].update(item_id, {"closes_at": closes_at})

    def close_item(self, item_id: str, sold: bool, winner: str | None, price: int | None,
                   now: float) -> None:
        with self.db.conn:
            self.db["items"].update(item_id, {"state": "sold" if sold else "unsold",
                                              "closed_at": now, "winner": winner,
                                              "price_cents": price})

    def results(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.db["items"].rows_where("state != 'open'", order_by="closed_at desc",
                                           limit=limit)
        out = []
        for r in rows:
            item = Item.from_dict(_unjson(r["item"]))
            out.append({"item": item.id, "title": item.title, "sold": r["state"] == "sold",
                        "winner": r["winner"], "price_cents": r["price_cents"],
                        "closed_at": r["closed_at"]})
        return out

    # -- bids -----------------------------------------------------------------------------

    def add_bid(self, item_id: str, amount: int, username: str, public_key: bytes,
                now: float, closes_at: float, request_id: bytes, extended: bool) -> None:
        """Store a bid, with the request that made it and the closing time it may have
        pushed back, in one transaction, committed here or with the rest of its
        :meth:`batch`."""
        # Plain statements: sqlite-utils' insert() looks the table up again on every call.
        conn = self.db.conn
        try:
            conn.execute("INSERT INTO bids (item_id, amount_cents, username, public_key, ts, "
                         "request_id, closes_at, extended, void) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
                         (item_id, amount, username, public_key, now, request_id, closes_at,
                          int(extended)))
            if extended:  # the item's closing time moved (soft close)
                conn.execute("UPDATE items SET closes_at = ? WHERE id = ?",
                             (closes_at, item_id))
        except BaseException as exc:
            if self._batching:
                self._failed = self._failed or exc  # the batch's earlier bids go too
            else:
                conn.rollback()
            raise
        if not self._batching:
            conn.commit()

    def bids_since(self, since: float) -> list[tuple[bytes, bytes, str, int, float, bool]]:
        """``(public key, request id, item, amount, closes at, extended)`` of every bid
        stored at or after ``since``, oldest first (the ones a retry may still ask about)."""
        # Newest first, by rowid (the order they were stored), until well before ``since``:
        # a start reads the last minutes of bids, never the whole table. The slack allows
        # for a clock that stepped back.
        rows = self.db.conn.execute(
            "SELECT public_key, request_id, item_id, amount_cents, closes_at, extended, ts "
            "FROM bids ORDER BY id DESC")
        out = []
        for r in rows:
            if r[6] < since - CLOCK_SLACK:
                break
            if r[6] >= since and r[1] is not None:
                out.append((bytes(r[0]), bytes(r[1]), r[2], r[3], r[4], bool(r[5])))
        out.reverse()
        return out

    def void_bids(self, item_id: str, public_key: bytes) -> None:
        """A revoked bidder's bids on an item no longer count (kept, marked void)."""
        self.db.conn.execute("UPDATE bids SET void = 1 WHERE item_id = ? AND public_key = ?",
                             [item_id, public_key])
        if not self._batching:
            self.db.conn.commit()

    def bids(self, item_id: str) -> list[dict[str, Any]]:
        return list(self.db["bids"].rows_where("item_id = ?", [item_id], order_by="id"))

    # -- members and epochs ---------------------------------------------------------------

    def add_member(self, public_key: bytes, username: str, now: float) -> None:
        with self.db.conn:
            self.db["members"].upsert({"public_key": public_key, "username": username,
                                       "joined_at": now}, pk="public_key")

    def remove_member(self, public_key: bytes) -> None:
        with self.db.conn:
            self.db.execute("DELETE FROM members WHERE public_key = ?", [public_key])

    def members(self) -> dict[bytes, str]:
        return {r["public_key"]: r["username"] for r in self.db["members"].rows}

    def next_epoch(self) -> int:
        """A new epoch number, never used before (also across restarts)."""
        with self.db.conn:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            epoch = (row[0] if row else 0) + 1
            self.db["meta"].upsert({"key": "epoch", "value": epoch}, pk="key")
        return epoch

    def checkpoint(self) -> int:
        """Copy committed pages from the WAL into the database file (a PASSIVE checkpoint,
        fsyncs included), on a connection of the calling thread's own: writers go on
        meanwhile, and what was committed was durable against a crash already. Returns
        the WAL frames left to copy (0: the file holds everything committed)."""
        if self.path is None:
            return 0
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(self.path, check_same_thread=False)
        _, frames, copied = self._checkpointer.execute(
            "PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return max(0, frames - copied)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        self.db.close()


def _json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True)


def _unjson(text: str) -> dict[str, Any]:
    return json.loads(text)
