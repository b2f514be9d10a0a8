"""The auction store's group commit: a batch of bids is stored all at once, or not at all."""

from __future__ import annotations

import sqlite3

import pytest

from auctioneer.store import AuctionStore
from tests.auction_helpers import T0, item


@pytest.fixture
def store(tmp_path):
    s = AuctionStore(tmp_path / "auction.db")
    s.open_item(item(), "lamp.json", T0, T0 + 60)
    yield s
    s.close()


def stored_bids(tmp_path) -> int:
    """Bids a second connection sees: only what is committed."""
    with sqlite3.connect(tmp_path / "auction.db") as other:
        return other.execute("SELECT count(*) FROM bids").fetchone()[0]


def test_bids_of_a_batch_are_committed_together_at_its_end(store, tmp_path):
    with store.batch():
        store.add_bid("lamp", 1000, "ana", b"k" * 32, T0 + 1, T0 + 60, bytes([1]) * 16, False)
        store.add_bid("lamp", 1100, "bob", b"j" * 32, T0 + 2, T0 + 60, bytes([2]) * 16, False)
        assert stored_bids(tmp_path) == 0  # not acknowledged yet, so not yet visible
    assert stored_bids(tmp_path) == 2
    assert [b["amount_cents"] for b in store.bids("lamp")] == [1000, 1100]


def test_a_bid_outside_a_batch_is_committed_at_once(store, tmp_path):
    store.add_bid("lamp", 1000, "ana", b"k" * 32, T0 + 1, T0 + 70, bytes([3]) * 16, True)
    assert stored_bids(tmp_path) == 1
    assert store.open_items()[0]["closes_at"] == T0 + 70  # extended: the item's time moved


def test_bids_since_a_time_name_their_requests(store):
    store.add_bid("lamp", 1000, "ana", b"k" * 32, T0 + 1, T0 + 60, bytes([6]) * 16, False)
    store.add_bid("lamp", 1100, "bob", b"j" * 32, T0 + 5, T0 + 70, bytes([7]) * 16, True)
    assert store.bids_since(T0 + 2) == [(b"j" * 32, bytes([7]) * 16, "lamp", 1100, T0 + 70,
                                         True)]
    assert [b[3] for b in store.bids_since(T0)] == [1000, 1100]
    assert store.bids_since(T0 + 6) == []


def test_a_checkpoint_moves_committed_bids_into_the_database_file(store, tmp_path):
    before = (tmp_path / "auction.db").stat().st_size
    with store.batch():
        for n in range(200):
            store.add_bid("lamp", 1000 + n, "ana", b"k" * 32, T0 + 1, T0 + 60,
                          n.to_bytes(16, "big"), False)
    assert store.checkpoint() == 0
    assert (tmp_path / "auction.db").stat().st_size > before
    assert len(store.bids("lamp")) == 200


def test_a_failed_write_rolls_back_the_whole_batch(store, tmp_path):
    with pytest.raises(sqlite3.Error):  # noqa: PT012 - the error leaves at the batch's end
        with store.batch():
            store.add_bid("lamp", 1000, "ana", b"k" * 32, T0 + 1, T0 + 60, bytes([4]) * 16, False)
            with pytest.raises(sqlite3.Error):
                store.add_bid("lamp", {"not": "a number"}, "bob", b"j" * 32, T0 + 2, T0 + 60,
                              bytes([5]) * 16, False)
    assert stored_bids(tmp_path) == 0
    assert store.bids("lamp") == []


def test_a_damaged_database_is_refused_in_one_line_and_left_as_it_is(tmp_path):
    from agora.errors import LocalError

    path = tmp_path / "auction.db"
    path.write_bytes(b"not a database, and longer than SQLite's header check")
    with pytest.raises(LocalError, match=f"cannot open the database {path}: file is not a "
                                         "database"):
        AuctionStore(path)
    assert path.read_bytes() == b"not a database, and longer than SQLite's header check"
