"""Auction items: parsing an item file, and the folder the auctioneer takes them from.

An item file is a JSON object::

    {"id": "lamp-1", "title": "Brass lamp", "description": "...",
     "starting_price": "12.50", "min_increment": "0.50", "duration": 30,
     "reserve_price": "20.00"}

Money is a Decimal string in currency units (``"12.50"``) or, with a ``_cents`` suffix on
the field name, an integer count of cents (``"starting_price_cents": 1250``); a float is
refused. ``duration`` is in seconds; ``reserve_price`` is optional.

:class:`ItemFolder` lists ``*.json`` in name order and moves each file, when its auction is
over, to ``done/`` — or at once to ``rejected/`` beside a ``.reason`` file saying why.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agora.auction_wire import parse_money
from agora.errors import LocalError
from agora.jsontext import loads

log = logging.getLogger("agora.auctioneer")

MAX_ITEM_FILE = 64 * 1024
MIN_DURATION = 0.1  # short items are for demos and tests
MAX_DURATION = 7 * 24 * 3600
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Item:
    id: str
    title: str
    description: str
    start_cents: int
    increment_cents: int
    duration: float
    reserve_cents: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Item:
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__})


def _money(doc: dict[str, Any], name: str, required: bool = True) -> int | None:
    if f"{name}_cents" in doc:
        value = doc[f"{name}_cents"]
        if not isinstance(value, int) or isinstance(value, bool):
            raise LocalError(f"{name}_cents must be an integer number of cents")
        return parse_money(value, name)
    if name in doc:
        value = doc[name]
        if isinstance(value, int) and not isinstance(value, bool):
            raise LocalError(f"{name} must be a string like \"12.50\" (or use {name}_cents)")
        return parse_money(value, name)
    if required:
        raise LocalError(f"missing {name}")
    return None


def parse_item(data: bytes) -> Item:
    """An Item from a file's bytes; LocalError with a one-line reason otherwise."""
    if len(data) > MAX_ITEM_FILE:
        raise LocalError(f"item file is over {MAX_ITEM_FILE // 1024} KiB")
    try:
        doc = loads(data)
    except ValueError:
        raise LocalError("not valid JSON") from None
    if not isinstance(doc, dict):
        raise LocalError("item file must hold a JSON object")
    item_id, title = doc.get("id"), doc.get("title")
    if not isinstance(item_id, str) or not _ID.match(item_id):
        raise LocalError("id must be 1-64 letters, digits, '.', '_' or '-'")
    if not isinstance(title, str) or not title.strip() or len(title) > 200:
        raise LocalError("title must be a non-empty string of at most 200 characters")
    description = doc.get("description", "")
    if not isinstance(description, str) or len(description) > 4000:
        raise LocalError("description must be a string of at most 4000 characters")
    duration = doc.get("duration")
    if isinstance(duration, bool) or not isinstance(duration, int | float) \
            or not MIN_DURATION <= duration <= MAX_DURATION:
        raise LocalError(f"duration must be a number of seconds between {MIN_DURATION} and "
                         f"{MAX_DURATION}")
    start = _money(doc, "starting_price")
    increment = _money(doc, "min_increment")
    reserve = _money(doc, "reserve_price", required=False)
    assert start is not None and increment is not None
    if increment < 1:
        raise LocalError("min_increment must be at least 0.01")
    return Item(item_id, title.strip(), description, start, increment, float(duration),
                reserve)


class ItemFolder:
    """The items directory with its ``done/`` and ``rejected/`` sub-directories."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise LocalError(f"items directory {self.path} does not exist")
        self.done = self.path / "done"
        self.rejected = self.path / "rejected"
        self.done.mkdir(exist_ok=True)
        self.rejected.mkdir(exist_ok=True)

    def pending(self) -> list[Path]:
        """Item files waiting, in file-name order."""
        return sorted(p for p in self.path.glob("*.json") if p.is_file())

    def read(self, path: Path) -> Item:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_ITEM_FILE + 1)
        except OSError as exc:
            raise LocalError(f"cannot read: {exc.strerror}") from None
        return parse_item(data)

    def finish(self, name: str) -> None:
        self._move(name, self.done)

    def reject(self, path: Path, reason: str) -> None:
        """Move a broken file aside with its reason; never raises (a bad file must not stop
        the auctioneer)."""
        log.warning("rejected item file %s: %s", path.name, reason)
        self._move(path.name, self.rejected)
        try:
            (self.rejected / f"{path.name}.reason").write_text(reason.splitlines()[0] + "\n")
        except OSError as exc:
            log.warning("could not write the reason for %s: %s", path.name, exc.strerror)

    def _move(self, name: str, where: Path) -> None:
        try:
            os.replace(self.path / name, where / name)
        except OSError as exc:
            log.warning("could not move %s to %s/: %s", name, where.name, exc.strerror)
