"""The auctioneer's engine and a bidder's view, without sockets and without sleeping."""

from __future__ import annotations

import pytest

from agents.auction import AuctionClient
from agents.auction_view import AuctionView
from agora.auction_wire import new_request_id, seal_request
from agora.crypto import SigningKey
from agora.envelope import peek, timestamp_counter
from agora.errors import ProtocolError, RemoteError, UnauthenticatedRefusal
from agora.protocol import MEMBERSHIP_SILENCE_LIMIT, ErrorCode, Kind
from tests.auction_helpers import T0, Harness, item


def refused(call, *args, **kwargs) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        call(*args, **kwargs)
    return info.value


def test_join_answers_group_secrets_to_a_registered_key():
    h = Harness()
    ana = h.bidder("ana")
    join = h.join(ana)
    assert (join.username, join.group, join.port) == ("ana", "239.255.1.2", 5000)
    assert join.verify_key == bytes(h.signing_key.verify_key)
    assert join.snapshot["epoch"] == h.core.epoch


def test_join_refuses_an_unregistered_key():
    h = Harness()
    err = refused(h.join, h.bidder("mallory", registered=False))
    assert err.code is ErrorCode.UNKNOWN_USER


def test_join_refuses_a_revoked_key():
    h = Harness()
    ana = h.bidder("ana")
    h.revoke(ana)
    assert refused(h.join, ana).code is ErrorCode.REVOKED


def test_join_with_someone_elses_public_key_is_refused():
    h = Harness()
    ana, mallory = h.bidder("ana"), h.bidder("mallory", registered=False)
    frames = mallory.frames(Kind.JOIN, {}, T0)
    frames[0] = ana.public_key  # claims ana's key, but cannot seal with ana's private key
    with pytest.raises(UnauthenticatedRefusal) as info:
        ana.answer(h.core.handle(frames, T0), frames)
    assert info.value.code == "bad-request"
    assert ana.public_key not in h.core.members


def test_join_answer_from_another_key_is_not_believed():
    h, impostor = Harness(), Harness()
    ana = h.bidder("ana")
    impostor.register(ana.public_key, "ana")
    frames = ana.frames(Kind.JOIN, {}, T0)
    reply = impostor.core.handle(frames, T0)
    with pytest.raises(UnauthenticatedRefusal):  # the impostor cannot even read the request
        ana.answer(reply, frames)


def test_malformed_requests_get_a_clear_refusal():
    h = Harness()
    ana = h.bidder("ana")
    good = ana.frames(Kind.JOIN, {}, T0)
    for frames in ([], [b"junk"], [b"k" * 32, b"x"], [b"short", good[1]],
                   [*good, b"extra"], [good[0], b"AGORA01A" + good[1][7:]]):
        reply = h.core.handle(frames, T0)
        assert len(reply) == 1 and peek(reply[0]).kind == Kind.ERROR
        assert b"bad-request" in reply[0]


def test_first_bid_must_reach_the_starting_price():
    h = Harness()
    h.core.open_item(item(start=1000), "lamp.json", T0)
    ana = h.bidder("ana")
    h.join(ana)
    err = refused(h.bid, ana, 999)
    assert err.code is ErrorCode.BID_TOO_LOW and "10.00" in err.message
    assert h.bid(ana, 1000)["accepted"]


def test_bid_must_beat_the_best_by_the_increment_so_a_tie_loses():
    h = Harness()
    h.core.open_item(item(start=1000, increment=100), "lamp.json", T0)
    ana, bob = h.bidder("ana"), h.bidder("bob")
    h.join(ana), h.join(bob)
    h.bid(ana, 1000)
    assert refused(h.bid, bob, 1000).code is ErrorCode.BID_TOO_LOW
    assert refused(h.bid, bob, 1099).code is ErrorCode.BID_TOO_LOW
    h.bid(bob, 1100)
    assert h.core.lot.best.username == "bob"


def test_bid_from_a_key_that_has_not_joined_is_refused():
    h = Harness()
    h.core.open_item(item(), "lamp.json", T0)
    assert refused(h.bid, h.bidder("ana"), 5000).code is ErrorCode.NOT_JOINED


def test_bid_when_no_auction_is_open_is_refused():
    h = Harness()
    ana = h.bidder("ana")
    h.join(ana)
    assert refused(h.bid, ana, 5000).code is ErrorCode.AUCTION_CLOSED


def test_bid_after_closing_time_is_refused():
    h = Harness()
    h.core.open_item(item(duration=30), "lamp.json", T0)
    ana = h.bidder("ana")
    h.join(ana)
    assert refused(h.bid, ana, 5000, now=T0 + 30).code is ErrorCode.AUCTION_CLOSED


def test_bid_for_another_item_is_refused():
    h = Harness()
    h.core.open_item(item("lamp"), "lamp.json", T0)
    ana = h.bidder("ana")
    h.join(ana)
    assert refused(h.bid, ana, 5000, item_id="vase").code is ErrorCode.AUCTION_CLOSED


def test_malformed_bid_is_refused_and_nothing_stored():
    h = Harness()
    h.core.open_item(item(), "lamp.json", T0)
    ana = h.bidder("ana")
    h.join(ana)
    for body in (b"", b"lamp", bytes(8) + b"lamp", (10**13).to_bytes(8, "big") + b"lamp",
                 (1200).to_bytes(8, "big"), (1200).to_bytes(8, "big") + b"\xff\xfe",
                 (1200).to_bytes(8, "big") + b"x" * 201):
        # A request id of its own for each: one id and counter again would be answered from
        # the reply cache, and the body never looked at.
        frames = [ana.public_key, seal_request(ana.key, Kind.BID, new_request_id(),
                                               timestamp_counter(T0), body)]
        err = refused(ana.answer, h.core.handle(frames, T0), frames)
        assert err.code is ErrorCode.BAD_REQUEST, body
    assert h.store.bids("lamp") == []


def test_forged_bid_under_another_members_key_is_refused():
    h = Harness()
    h.core.open_item(item(), "lamp.json", T0)
    ana, mallory = h.bidder("ana"), h.bidder("mallory")
    h.join(ana), h.join(mallory)
    frames = mallory.frames(Kind.BID, {"item": "lamp", "amount": 9000}, T0)
    frames[0] = ana.public_key
    with pytest.raises(UnauthenticatedRefusal):
        ana.answer(h.core.handle(frames, T0), frames)
    assert h.store.bids("lamp") == []


def test_replayed_bid_is_not_stored_twice():
    h = Harness()
    h.core.open_item(item(), "lamp.json", T0)
    ana = h.bidder("ana")
    h.join(ana)
    frames = ana.frames(Kind.BID, {"item": "lamp", "amount": 1000}, T0)
    first = h.core.handle(frames, T0)
    again = h.core.handle(frames, T0 + 1)
    assert again == first and len(h.store.bids("lamp")) == 1


def test_stale_bid_is_refused():
    h = Harness()
    h.core.open_item(item(duration=1000), "lamp.json", T0)
    ana = h.bidder("ana")
    h.join(ana)
    frames = ana.frames(Kind.BID, {"item": "lamp", "amount": 1000}, T0)
    err = refused(ana.answer, h.core.handle(frames, T0 + 500), frames)
    assert err.code is ErrorCode.STALE and h.store.bids("lamp") == []


def test_bid_in_the_soft_close_window_extends_the_end():
    h = Harness(soft_close=10)
    h.core.open_item(item(duration=30), "lamp.json", T0)
    ana = h.bidder("ana")
    h.join(ana)
    assert not h.bid(ana, 1000, now=T0 + 5)["extended"]
    answer = h.bid(ana, 1100, now=T0 + 25)
    assert answer["extended"] and answer["closes_at"] == T0 + 40
    assert h.core.tick(T0 + 35) == []
    assert h.core.tick(T0 + 40) == ["lamp.json"]


def test_closing_announces_winner_and_records_it():
    h = Harness()
    h.core.open_item(item(duration=30), "lamp.json", T0)
    ana, bob = h.bidder("ana"), h.bidder("bob")
    view = h.view(bob)
    h.join(ana)
    h.bid(ana, 1000, now=T0 + 1)
    h.bid(bob, 1500, now=T0 + 2)
    h.core.tick(T0 + 30)
    for datagram in h.core.take_outbox():
        view.feed(datagram)
    assert view.winner["winner"] == "bob" and view.winner["price_cents"] == 1500
    assert h.store.results()[0] == {"item": "lamp", "title": "The lamp", "sold": True,
                                    "winner": "bob", "price_cents": 1500,
                                    "closed_at": T0 + 30}


def test_reserve_not_met_means_not_sold():
    h = Harness()
    h.core.open_item(item(duration=30, reserve=5000), "lamp.json", T0)
    ana = h.bidder("ana")
    h.join(ana)
    h.bid(ana, 1000, now=T0 + 1)
    h.core.tick(T0 + 30)
    result = h.core.last_result
    assert (result["sold"], result["winner"], result["reason"]) == \
        (False, None, "reserve price not met")


def test_each_item_gets_a_new_group_key():
    h = Harness()
    h.core.open_item(item("lamp", duration=5), "lamp.json", T0)
    first = (h.core.epoch, h.core.group_key)
    h.core.tick(T0 + 5)
    h.core.open_item(item("vase"), "vase.json", T0 + 6)
    assert h.core.epoch > first[0] and h.core.group_key != first[1]


def test_an_item_id_is_auctioned_once():
    h = Harness()
    h.core.open_item(item("lamp", duration=5), "lamp.json", T0)
    h.core.tick(T0 + 5)
    with pytest.raises(Exception, match="already auctioned"):
        h.core.open_item(item("lamp"), "lamp-again.json", T0 + 6)


def test_revoked_member_gets_no_new_key_and_cannot_read_what_follows():
    h = Harness()
    h.core.open_item(item(duration=60), "lamp.json", T0)
    ana, bob = h.bidder("ana"), h.bidder("bob")
    ana_view, bob_view = h.view(ana), h.view(bob)
    h.revoke(bob)
    h.bid(ana, 1000, now=T0 + 1)
    outbox = h.core.take_outbox()
    for datagram in outbox:
        ana_view.feed(datagram)
        bob_view.feed(datagram)
    assert ana_view.best["amount"] == 1000
    assert bob_view.best is None and bob_view.epoch == ana_view.epoch
    assert bob_view.epoch not in bob_view.keys
    assert refused(h.ask, bob, Kind.SNAPSHOT, {}).code is ErrorCode.NOT_JOINED


def test_pushed_revocation_removes_the_member_at_once_and_rekeys_without_asking():
    h = Harness()
    h.core.open_item(item(duration=60), "lamp.json", T0)
    ana, bob = h.bidder("ana"), h.bidder("bob")
    h.join(ana)
    h.join(bob)
    epoch = h.core.epoch
    h.revoke(bob, now=T0 + 1)  # the broker's notice: no call, no periodic check
    assert h.core.epoch > epoch  # a new group key, without bob
    assert bob.public_key not in h.core.members
    assert refused(h.bid, bob, 5000, now=T0 + 1).code is ErrorCode.NOT_JOINED
    assert refused(h.join, bob, now=T0 + 1).code is ErrorCode.REVOKED
    assert h.bid(ana, 1000, now=T0 + 2)["accepted"]


def test_bid_from_a_member_the_snapshot_no_longer_lists_is_refused():
    h = Harness()
    h.core.open_item(item(duration=60), "lamp.json", T0)
    ana, bob = h.bidder("ana"), h.bidder("bob")
    h.join(ana)
    h.join(bob)
    h.registry.keys[bob.public_key] = ("bob", True)
    h.registry.version += 5  # notices lost; the next one shows the gap
    h.register(h.bidder("carl", registered=False).public_key, "carl", now=T0 + 1)
    assert h.core.wants_snapshot  # effect out: the shell fetches the snapshot
    h.core.membership_snapshot(h.registry.version, h.registry.snapshot(), T0 + 1)
    assert not h.core.wants_snapshot and bob.public_key not in h.core.members
    assert refused(h.bid, bob, 5000, now=T0 + 2).code is ErrorCode.NOT_JOINED


def test_a_membership_notice_older_than_what_the_core_holds_changes_nothing():
    h = Harness()
    ana = h.bidder("ana")
    late = h.registry.notice(ana.public_key)  # "registered", overtaken by what follows
    h.revoke(ana)
    h.core.member_changed(late, T0)  # arrives after the revocation
    assert refused(h.join, ana).code is ErrorCode.REVOKED


def test_membership_notices_before_the_first_snapshot_wait_for_it():
    h = Harness()
    h.core.roster.version = None  # as after a start, before the broker answered
    ana = h.bidder("ana")  # its notice comes first
    assert h.core.wants_snapshot
    assert refused(h.join, ana).code is ErrorCode.SERVICE_UNAVAILABLE
    h.core.membership_snapshot(h.registry.version, h.registry.snapshot(), T0)
    assert h.join(ana).username == "ana"


def test_a_malformed_membership_notice_is_ignored():
    h = Harness()
    ana = h.bidder("ana")
    h.join(ana)
    for notice in ({}, {"version": "9999", "username": "ana"}, {"version": 9999}):
        h.core.member_changed(notice, T0)
    assert ana.public_key in h.core.members
    assert h.core.roster.version == h.registry.version


def test_auctioneer_fails_closed_when_the_broker_is_unheard_of_too_long():
    h = Harness()
    h.core.open_item(item(duration=600), "lamp.json", T0)
    ana, bob = h.bidder("ana"), h.bidder("bob")
    h.join(ana)
    h.core.broker_heard(T0 + 1)
    h.broker_silent = True  # the broker is down: no notice, no heartbeat
    assert h.bid(ana, 1000, now=T0 + 1 + MEMBERSHIP_SILENCE_LIMIT)["accepted"]
    late = T0 + 2 + MEMBERSHIP_SILENCE_LIMIT
    err = refused(h.bid, ana, 1100, now=late)
    assert err.code is ErrorCode.SERVICE_UNAVAILABLE
    assert "not heard from the broker for 11s" in err.message
    assert refused(h.join, bob, now=late).code is ErrorCode.SERVICE_UNAVAILABLE
    assert h.ask(ana, Kind.SNAPSHOT, {}, late)["state"]["best"]["amount"] == 1000
    h.broker_silent = False  # heard again: served again
    assert h.bid(ana, 1100, now=late + 1)["accepted"]


def test_auctioneer_serves_no_join_before_the_first_membership_snapshot():
    h = Harness()
    ana = h.bidder("ana")
    h.core.roster.version = None  # as after a start, before the broker answered
    assert refused(h.join, ana).code is ErrorCode.SERVICE_UNAVAILABLE


def test_view_drops_duplicates_from_the_second_path():
    h = Harness()
    ana = h.bidder("ana")
    view = h.view(ana)
    h.core.open_item(item(), "lamp.json", T0)
    events = []
    for datagram in h.core.take_outbox():
        events += view.feed(datagram).events  # multicast
        events += view.feed(datagram).events  # the PUB mirror: same bytes again
    assert [e["kind"] for e in events] == ["rekey", "opened"]


def watched_item(h: Harness) -> tuple[AuctionClient, AuctionClient, AuctionView]:
    """An open item, two joined bidders (ana and bob) and ana's view; the outbox emptied."""
    h.core.open_item(item(), "lamp.json", T0)
    ana, bob = h.bidder("ana"), h.bidder("bob")
    view = h.view(ana)
    h.join(bob)
    h.core.take_outbox()
    return ana, bob, view


def test_the_bids_of_one_batch_are_announced_in_one_signed_datagram():
    h = Harness()
    ana, bob, view = watched_item(h)
    for n, who in enumerate([ana, bob, ana]):
        h.bid(who, 1000 + 100 * n, now=T0 + 1)
    (datagram,) = h.core.take_outbox()
    assert [(e["kind"], e["amount"]) for e in view.feed(datagram).events] == \
        [("bid", 1000), ("bid", 1100), ("bid", 1200)]
    assert view.best["amount"] == 1200 and view.minimum == 1300


def test_a_snapshot_counts_the_events_announced_before_it():
    h = Harness()
    ana, bob, view = watched_item(h)
    h.bid(bob, 1000, now=T0 + 1)
    view.apply_snapshot(h.ask(ana, Kind.SNAPSHOT, {}, T0 + 1))  # shows bob's bid...
    h.bid(bob, 1100, now=T0 + 2)
    first, second = h.core.take_outbox()
    assert view.feed(first).events == []  # ...so the datagram that announced it is old news
    assert [e["amount"] for e in view.feed(second).events] == [1100]
    assert [b["amount"] for b in view.bids] == [1100, 1000]


def test_view_notices_a_gap_and_a_snapshot_repairs_it():
    h = Harness()
    ana, bob, view = watched_item(h)  # the view's snapshot already covers what came before
    h.bid(bob, 1000, now=T0 + 1)
    (lost,) = h.core.take_outbox()
    h.bid(bob, 1100, now=T0 + 2)
    (second,) = h.core.take_outbox()
    assert view.feed(second).need_snapshot
    view.apply_snapshot(h.ask(ana, Kind.SNAPSHOT, {}, T0 + 2))
    assert view.best["amount"] == 1100 and [b["amount"] for b in view.bids] == [1100, 1000]


def test_view_rejects_announcements_not_signed_by_the_auctioneer():
    h = Harness()
    ana = h.bidder("ana")
    view = h.view(ana)
    h.core.take_outbox()
    h.core.open_item(item(), "lamp.json", T0)
    rekey, opened = h.core.take_outbox()
    view.feed(rekey)
    forged = opened[:-64] + SigningKey.generate().sign(opened[:-64]).signature
    assert view.feed(forged).events == [] and view.dropped == 1
    tampered = opened[:-1] + bytes([opened[-1] ^ 1])
    assert view.feed(tampered).events == [] and view.dropped == 2
    assert view.feed(b"garbage").events == [] and view.dropped == 3
    assert [e["kind"] for e in view.feed(opened).events] == ["opened"]


def test_view_drops_a_replayed_announcement():
    h = Harness()
    ana = h.bidder("ana")
    view = h.view(ana)
    h.core.take_outbox()
    h.core.open_item(item(duration=5), "lamp.json", T0)
    old = h.core.take_outbox()
    for datagram in old:
        view.feed(datagram)
    h.core.tick(T0 + 5)
    for datagram in h.core.take_outbox():
        view.feed(datagram)
    assert all(view.feed(d).events == [] for d in old)  # replaying "opened" changes nothing
    assert view.status == "closed"


def test_late_joiner_sees_the_current_state_at_once():
    h = Harness()
    h.core.open_item(item(), "lamp.json", T0)
    ana, late = h.bidder("ana"), h.bidder("late")
    h.join(ana)
    h.bid(ana, 1200, now=T0 + 1)
    view = h.view(late, now=T0 + 2)
    assert view.item["id"] == "lamp" and view.best == {"amount": 1200, "bidder": "ana",
                                                       "at": T0 + 1}


def test_snapshot_is_refused_to_a_stranger():
    h = Harness()
    err = refused(h.ask, h.bidder("ana"), Kind.SNAPSHOT, {})
    assert err.code is ErrorCode.NOT_JOINED


def test_restart_resumes_the_open_item_with_its_bids(tmp_path):
    first = Harness(tmp_path / "a.db")
    first.core.open_item(item(duration=60), "lamp.json", T0)
    ana = first.bidder("ana")
    first.join(ana)
    first.bid(ana, 1000, now=T0 + 1)
    first.bid(ana, 1200, now=T0 + 2)
    again = Harness(tmp_path / "a.db", private_key=first.private_key,
                    signing_key=first.signing_key, registry=first.registry, now=T0 + 3)
    assert again.core.lot.item.id == "lamp"
    assert [b.amount for b in again.core.lot.bids] == [1000, 1200]
    assert again.core.epoch > first.core.epoch
    assert again.bid(ana, 1300, now=T0 + 4)["accepted"]  # still a member after restart


def test_a_datagram_too_large_is_dropped_by_the_view():
    h = Harness()
    view = h.view(h.bidder("ana"))
    assert view.feed(b"A" * 70_000).events == [] and view.dropped == 1


def test_malformed_snapshot_is_a_protocol_error():
    h = Harness()
    view = h.view(h.bidder("ana"))
    with pytest.raises(ProtocolError):
        view.apply_snapshot({"epoch": 1})


def test_watch_screen_shows_item_best_bid_time_left_and_winner():
    from rich.console import Console

    from cli.auction_cmd import render

    h = Harness()
    h.core.open_item(item(duration=30), "lamp.json", T0)
    ana = h.bidder("ana")
    view = h.view(ana)
    h.bid(ana, 1250, now=T0 + 1)
    for datagram in h.core.take_outbox():
        view.feed(datagram)
    console = Console(record=True, width=100)
    console.print(render(view, T0 + 10))
    screen = console.export_text()
    assert "The lamp" in screen and "12.50 by ana" in screen and "20s left" in screen
    h.core.tick(T0 + 30)
    for datagram in h.core.take_outbox():
        view.feed(datagram)
    console.print(render(view, T0 + 31))
    assert "lamp: sold to ana for 12.50" in console.export_text()


# -- a retried bid after a crash (defect 3), a revoked bidder (defect 4) ---------------------


def test_bid_stored_before_a_crash_and_retried_after_restart_gets_its_acceptance(tmp_path):
    first = Harness(tmp_path / "auction.db")
    first.core.open_item(item(duration=60), "lamp.json", T0)
    ana = first.bidder("ana")
    first.join(ana)
    frames = ana.frames(Kind.BID, {"item": "lamp", "amount": 1500}, T0 + 1)
    first.core.handle(frames, T0 + 1)  # committed; the reply dies with the process
    again = Harness(tmp_path / "auction.db", private_key=first.private_key,
                    signing_key=first.signing_key, registry=first.registry, now=T0 + 2)
    answer = ana.answer(again.core.handle(frames, T0 + 3), frames)  # the bidder's retry
    assert answer == {"accepted": True, "item": "lamp", "amount": 1500,
                      "closes_at": T0 + 60, "extended": False}
    assert [b["amount_cents"] for b in again.store.bids("lamp")] == [1500]
    assert refused(again.bid, ana, 1500, now=T0 + 4).code is ErrorCode.BID_TOO_LOW


def test_a_bid_sent_again_under_its_request_id_is_not_stored_twice():
    h = Harness()
    h.core.open_item(item(duration=60), "lamp.json", T0)
    ana = h.bidder("ana")
    h.join(ana)
    first = ana.frames(Kind.BID, {"item": "lamp", "amount": 1500}, T0 + 1)
    request_id = peek(first[1]).context
    ana.answer(h.core.handle(first, T0 + 1), first)
    again = ana.frames(Kind.BID, {"item": "lamp", "amount": 1500}, T0 + 2, request_id)
    assert ana.answer(h.core.handle(again, T0 + 2), again) == {
        "accepted": True, "item": "lamp", "amount": 1500, "closes_at": T0 + 60,
        "extended": False}
    assert [b["amount_cents"] for b in h.store.bids("lamp")] == [1500]


def test_revoked_bidder_stops_counting_at_once_and_the_next_valid_bid_wins(tmp_path):
    h = Harness(tmp_path / "auction.db")
    h.core.open_item(item(duration=30), "lamp.json", T0)
    ana, bob = h.bidder("ana"), h.bidder("bob")
    view = h.view(ana)
    h.join(bob)
    h.bid(ana, 1000, now=T0 + 1)
    h.bid(bob, 1500, now=T0 + 2)
    h.revoke(bob, now=T0 + 3)
    assert h.core.state(T0 + 3)["best"]["bidder"] == "ana"
    assert h.bid(ana, 1100, now=T0 + 4)["accepted"]  # the minimum follows the valid best
    restarted = Harness(tmp_path / "auction.db", private_key=h.private_key,
                        signing_key=h.signing_key, registry=h.registry, now=T0 + 5)
    assert restarted.core.lot.best.username == "ana"  # voided in the store, not only here
    h.core.tick(T0 + 30)
    for datagram in h.core.take_outbox():
        view.feed(datagram)
    assert (view.winner["winner"], view.winner["price_cents"]) == ("ana", 1100)
    assert h.store.results()[0]["winner"] == "ana"


def test_revoked_only_bidder_means_no_sale_announced_as_such():
    h = Harness()
    h.core.open_item(item(duration=30), "lamp.json", T0)
    ana, bob = h.bidder("ana"), h.bidder("bob")
    view = h.view(ana)
    h.join(bob)
    h.bid(bob, 1500, now=T0 + 2)
    h.revoke(bob, now=T0 + 3)
    h.core.tick(T0 + 30)
    events = [e for d in h.core.take_outbox() for e in view.feed(d).events]
    voided = next(e for e in events if e["kind"] == "voided")
    assert voided["bidders"] == ["bob"] and voided["best"] is None
    closed = next(e for e in events if e["kind"] == "closed")
    assert (closed["sold"], closed["winner"], closed["reason"]) == \
        (False, None, "no valid bids (bidders revoked)")
