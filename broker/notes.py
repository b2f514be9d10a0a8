"""The classified notes store: the built-in service where security levels matter for real.

Every note carries a level. The rules are Bell-LaPadula's:

- *no read up*: a collaborator reads and lists only notes at or below their level;
- *no write down*: a collaborator writes only at or above their level (a level-4 reader
  cannot copy what they read into a level-2 note).

A note above the reader's level is answered exactly like a note that does not exist, so
its existence does not leak either. Notes live in the broker's SQLite file, table
``notes``; they are written synchronously (a note is not a hot path) and never logged.
"""

from __future__ import annotations

from typing import Any

import sqlite_utils

from agora.errors import RemoteError
from agora.protocol import ErrorCode, Level
from agora.wire import MAX_ROW_ID

MAX_TITLE = 200
MAX_TEXT = 64 * 1024
#: Notes in one notes.list answer, newest first: 200 of the longest titles (800 octets of
#: UTF-8 each) still fit one message, however many notes there are.
MAX_LISTED = 200


class NotesStore:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self.db["notes"].create(
            {"id": int, "title": str, "text": str, "level": int, "author": str,
             "created_at": float},
            pk="id", not_null={"title", "text", "level", "author", "created_at"},
            if_not_exists=True,
        )

    def write(self, author: str, author_level: Level, title: str, text: str,
              level: Level | None, now: float) -> dict[str, Any]:
        """Store a new note at ``level`` (default: the author's); never below the author."""
        level = author_level if level is None else level
        if level < author_level:
            raise RemoteError(ErrorCode.FORBIDDEN, f"no write down: you have level "
                              f"{int(author_level)}, so notes you write are at least that")
        if not 0 < len(title) <= MAX_TITLE or len(text) > MAX_TEXT:
            raise RemoteError(ErrorCode.BAD_REQUEST, f"title must be 1-{MAX_TITLE} characters "
                              f"and text at most {MAX_TEXT // 1024} KiB")
        with self.db.conn:
            table = self.db["notes"]
            table.insert({"title": title, "text": text, "level": int(level),
                          "author": author, "created_at": now})
            note_id = table.last_pk
        return {"id": note_id, "title": title, "level": int(level)}

    def read(self, reader_level: Level, note_id: int) -> dict[str, Any]:
        rows = list(self.db.query(
            "select id, title, text, level, author, created_at from notes "
            "where id = ? and level <= ?", [note_id, int(reader_level)]))
        if not rows:  # absent, or above the reader: the same answer
            raise RemoteError(ErrorCode.NOT_FOUND, f"no note {note_id} at or below your level")
        return rows[0]

    def list(self, reader_level: Level, before: int | None = None,
             limit: int = MAX_LISTED) -> list[dict[str, Any]]:
        """The newest ``limit`` notes at or below ``reader_level`` (with ids below
        ``before``, to page back), newest first, without their text."""
        return list(self.db.query(
            "select id, title, level, author, created_at from notes where level <= ? "
            "and id < ? order by id desc limit ?",
            [int(reader_level), MAX_ROW_ID if before is None else before, limit]))
