"""The broker's audit buffer: counted rows, bounded memory, batch writes (sans-I/O).

Every decision the broker audits goes through :meth:`AuditBuffer.add` on the request path:
a dict update, never a SQLite write. Decisions of one minute with the same key are one
*counted* row, so a stranger flooding junk LOGINs from one address adds one row per minute
and refusal code, however many requests (and however many made-up usernames) it sends.

- Key: (minute, source, action, outcome, detail) and, for authenticated actions only, the
  username. A refusal before authentication names a username nobody proved, so it is not
  part of the key: the row keeps the first name seen, escaped, and how many others came.
- Bounded: at most ``max_keys`` keys wait between flushes; past that, decisions are counted
  in one ``audit-overflow`` row of the minute, so memory and the next write stay bounded.
- :meth:`take` hands the rows to write; a key already written this minute comes back as an
  update of its row's count (the store returns the row ids), so a minute-long flood is one
  row, not one per flush.

Everything is escaped with :func:`agora.text.printable` before it is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from agora.text import printable

#: Distinct keys kept between two flushes; more are counted in the overflow row.
MAX_AUDIT_KEYS = 2000
#: Longest username / action / detail kept in an audit cell.
MAX_CELL = 80

Key = tuple[int, str, str | None, str, str, str]


@dataclass
class AuditRow:
    """One counted row: the first and last time it happened and how often."""

    ts: float
    last_ts: float
    source: str
    username: str | None
    action: str
    outcome: str
    detail: str
    count: int = 1
    #: Usernames seen for a pre-authentication row, beyond the one kept (at most noted).
    other_names: int = 0
    #: The row id once written; later flushes of the same minute add to its count.
    row_id: int | None = None
    pending: int = 0

    def to_dict(self) -> dict[str, object]:
        detail = self.detail
        if self.other_names:
            detail = f"{detail} (+{self.other_names} other usernames)".strip()
        return {"id": self.row_id, "ts": self.ts, "last_ts": self.last_ts,
                "source": self.source, "username": self.username, "action": self.action,
                "outcome": self.outcome, "detail": detail, "count": self.count}


class AuditBuffer:
    """Aggregates audit decisions by minute and key; see the module docstring."""

    def __init__(self, max_keys: int = MAX_AUDIT_KEYS) -> None:
        self.max_keys = max_keys
        self._rows: dict[Key, AuditRow] = {}
        self._minute = -1
        self.overflowed = 0

    def add(self, now: float, username: str | None, action: str, outcome: str,
            detail: str = "", source: str = "", authenticated: bool = True) -> None:
        minute = int(now // 60)
        if minute != self._minute:
            self._new_minute(minute)
        name = None if username is None else printable(username, MAX_CELL)
        action, detail = printable(action, MAX_CELL), printable(detail, MAX_CELL)
        source = printable(source, 64)
        key: Key = (minute, source, name if authenticated else None, action, outcome, detail)
        row = self._rows.get(key)
        if row is None:
            if len(self._rows) >= self.max_keys:
                self.overflowed += 1
                key = (minute, "", None, "audit-overflow", "dropped", "")
                row = self._rows.get(key)
                if row is None:  # one slot beyond max_keys, for the overflow row
                    row = self._rows[key] = AuditRow(now, now, "", None, "audit-overflow",
                                                     "dropped", "buffer full", 0)
                row.count += 1
                row.pending += 1
                row.last_ts = now
                return
            row = self._rows[key] = AuditRow(now, now, source, name, action, outcome,
                                             detail, 0)
        elif not authenticated and name != row.username:
            row.other_names += 1
        row.count += 1
        row.pending += 1
        row.last_ts = now

    def _new_minute(self, minute: int) -> None:
        # Rows of the old minute that are written already need no memory any more; rows
        # still pending stay until the next take().
        self._rows = {k: r for k, r in self._rows.items() if r.pending}
        self._minute = minute

    def __len__(self) -> int:
        return sum(1 for r in self._rows.values() if r.pending)

    def take(self) -> list[AuditRow]:
        """The rows with news since the last take (new rows and count updates)."""
        rows = [r for r in self._rows.values() if r.pending]
        for r in rows:
            r.pending = 0
        # Only this minute's rows can grow again.
        self._rows = {k: r for k, r in self._rows.items() if k[0] == self._minute}
        return rows
