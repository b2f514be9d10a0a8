"""``agora ui``: a collaborator's console against a real broker and a real auctioneer.

Driven over HTTP as its page drives it (cookie, Origin, CSRF); the console holds a real
logged-in Agent, joins the auction and follows it over multicast and the PUB mirror.
"""

from __future__ import annotations

import time

import pytest

from agents.notices import Notice
from tests.conftest import PASSWORD
from tests.test_auction_net import auction, write_item
from tests.webui_helpers import console_client, post
from webui import collab
from webui.collab import CollabConsole, auction_state, bid_amount, collab_app
from webui.hub import EventHub
from webui.security import Access, PageError

__all__ = ["auction"]  # the fixture, shared with test_auction_net


def wait_for(check, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Page:
    """One collaborator's console and an HTTP client signed in to it."""

    def __init__(self, agent, auction, port: int, auctioneer: str | None = None,
                 endpoint: str | None = None) -> None:
        """Follows ``auction`` (its auctioneer's name and endpoint unless given), or none."""
        self.agent = agent
        self.console = CollabConsole(
            agent, EventHub(),
            auctioneer or (auction.agent.username if auction else "auctioneer"),
            endpoint or (auction.server.endpoint if auction else "tcp://127.0.0.1:1"),
            "127.0.0.1", 2.0, follow_auction=auction is not None)
        self.console.start()
        self.access = Access(port)
        self.client = console_client(collab_app(self.console, self.access), self.access)

    def act(self, **body):
        return post(self.client, self.access, body)

    def state(self):
        return self.client.get("/api/state").json()

    def close(self) -> None:
        self.client.close()
        self.console.close()


@pytest.fixture
def pages(broker, auction):
    opened: list[Page] = []

    def open_page(name: str, level: int = 3, follow: bool = True) -> Page:
        page = Page(broker.agent(name, level=level), auction if follow else None,
                    48200 + len(opened))
        opened.append(page)
        return page

    yield open_page
    for page in opened:
        page.close()


def live_item(page: Page, item_id: str) -> dict:
    return wait_for(lambda: (a := page.state()["auction"])["link"] == "live"
                    and a["item"] and a["item"]["id"] == item_id and a, what=f"{item_id} open")


def test_the_state_holds_no_secret(pages):
    page = pages("Ana Lima")
    wait_for(lambda: page.state()["auction"]["link"] == "live", what="joined")
    text = page.client.get("/api/state").text
    creds = page.agent.credentials
    for secret in (creds.token, creds.private_key, creds.symmetric_key):
        assert secret.hex() not in text and secret.hex()[:16] not in text
    assert "group_key" not in text and "session_key" not in text
    html = page.client.get("/").text
    assert page.access.token not in html and page.access.csrf in html


def test_a_bid_by_increment_is_accepted_and_shown_on_the_other_page(pages, auction):
    ana, bruno = pages("Ana Lima"), pages("Bruno Costa")
    write_item(auction.items, "01-lamp.json", "lamp", duration=30)
    live_item(ana, "lamp")
    live_item(bruno, "lamp")
    first = ana.act(action="bid", increments=1)
    assert first.status_code == 200, first.text
    assert first.json() == {"accepted": True, "item": "lamp", "amount": 1000, "extended": False}
    seen = wait_for(lambda: (b := bruno.state()["auction"]["best"]) and b["bidder"] == "ana.lima"
                    and b, timeout=3, what="the bid on the other page")
    assert seen["amount"] == 1000
    five = bruno.act(action="bid", increments=5)
    assert five.json()["amount"] == 1500  # best 10.00 + 5 x 1.00
    low = ana.act(action="bid", amount="15.50")
    assert low.status_code == 409
    assert low.json() == {"error": "bid refused: bid must be at least 16.00 [bid-too-low]"}


@pytest.mark.parametrize("body,error", [
    ({"amount": "abc"}, "amount 'abc' is not an amount like "),  # parse_money's words
    ({"amount": "12.345"}, "amount '12.345' "),
    ({"amount": 12}, "type an amount like 12.50"),
    ({"increments": "many"}, "increments must be a whole number from 1 to 100"),
    ({"increments": 1000}, "increments must be a whole number from 1 to 100"),
])
def test_bad_bids_get_a_clear_error_and_nothing_is_sent(pages, auction, body, error):
    ana = pages("Ana Lima")
    write_item(auction.items, "01-vase.json", "vase", duration=30)
    live_item(ana, "vase")
    answer = ana.act(action="bid", **body)
    assert answer.status_code == 400 and answer.json()["error"].startswith(error)
    assert ana.state()["auction"]["best"] is None


ITEM = {"item": {"start_cents": 1000, "increment_cents": 100}, "best": None}


@pytest.mark.parametrize("params,cents", [
    ({"increments": 1}, 1000),  # the first bid: the starting price
    ({"increments": " 3 "}, 1200),  # a form's text field
    ({"amount": " 12.50 "}, 1250),
    ({"amount": "7"}, 700),
])
def test_a_bid_amount_is_increments_above_the_best_or_the_typed_amount(params, cents):
    assert bid_amount(params, ITEM) == cents
    assert bid_amount({"increments": 2}, {**ITEM, "best": {"amount": 5000}}) == 5200


@pytest.mark.parametrize("params,error", [
    ({"amount": "0.00"}, "the amount must be more than 0"),
    ({"amount": "0"}, "the amount must be more than 0"),
    ({"increments": "0"}, "increments must be a whole number from 1 to 100"),
    ({"increments": True}, "increments must be a whole number from 1 to 100"),
    ({"increments": "-2"}, "increments must be a whole number from 1 to 100"),
    ({}, "type an amount like 12.50"),
])
def test_a_bid_amount_that_is_not_one_is_refused_in_one_line(params, error):
    with pytest.raises(PageError) as refused:
        bid_amount(params, ITEM)
    assert (refused.value.status, refused.value.message) == (400, error)


def test_a_console_that_does_not_follow_the_auction_refuses_a_bid(pages):
    ana = pages("Ana Lima", follow=False)
    answer = ana.act(action="bid", increments=1)
    assert (answer.status_code, answer.json()) == (
        409, {"error": "this console does not follow the auction"})


def test_the_page_refreshes_services_notes_and_who_is_online_and_nothing_else(pages, broker):
    ana = pages("Ana Lima", level=3, follow=False)
    wait_for(lambda: ana.state()["services"], what="the lists loaded at start")
    broker.agent("Bruno Costa", level=3).call("notes.write",
                                              {"title": "From Bruno", "text": "hi", "level": 3})
    assert ana.state()["notes"] == []  # written elsewhere: the page learns it on refresh
    for what in ("services", "notes", "online"):
        answer = ana.act(action="refresh", what=what)
        assert (answer.status_code, answer.json()) == (200, {"ok": True}), what
    assert [n["title"] for n in ana.state()["notes"]] == ["From Bruno"]
    assert "echo" in {s["name"] for s in ana.state()["services"]}
    bogus = ana.act(action="refresh", what="passwords")
    assert (bogus.status_code, bogus.json()) == (
        400, {"error": "refresh what: services, notes or online"})


def test_no_item_open_means_no_bid(pages):
    ana = pages("Ana Lima")
    wait_for(lambda: ana.state()["auction"]["link"] == "live", what="joined")
    answer = ana.act(action="bid", increments=1)
    assert (answer.status_code, answer.json()) == (409, {"error": "no item is open for bidding"})


def test_the_winner_is_the_same_on_both_pages_and_listed_in_results(pages, auction):
    ana, bruno = pages("Ana Lima"), pages("Bruno Costa")
    write_item(auction.items, "01-clock.json", "clock", duration=2)
    live_item(ana, "clock")
    assert ana.act(action="bid", amount="12.00").status_code == 200
    for page in (ana, bruno):
        winner = wait_for(lambda p=page: p.state()["auction"]["winner"], timeout=10,
                          what="the winner")
        assert (winner["item"], winner["winner"], winner["price_cents"]) == \
            ("clock", "ana.lima", 1200)
    results = wait_for(lambda: bruno.state()["auction"]["results"], what="results")
    assert results[0]["winner"] == "ana.lima"


def test_a_silent_auctioneer_is_shown_as_silent(pages, auction):
    ana = pages("Ana Lima")
    write_item(auction.items, "01-bell.json", "bell", duration=60)
    live_item(ana, "bell")
    auction.stop()
    state = wait_for(lambda: (a := ana.state()["auction"])["link"] == "silent" and a,
                     timeout=collab.SILENT_AFTER + 5, what="silence")
    assert state["note"].startswith("no word from the auctioneer for ")


def test_a_bid_to_a_silent_auctioneer_says_it_was_not_placed(pages, auction):
    ana = pages("Ana Lima")
    write_item(auction.items, "01-drum.json", "drum", duration=60)
    live_item(ana, "drum")
    auction.stop()
    wait_for(lambda: ana.state()["auction"]["link"] == "silent",
             timeout=collab.SILENT_AFTER + 5, what="silence")
    answer = ana.act(action="bid", increments=1)
    assert answer.status_code == 503
    assert answer.json()["error"].startswith("bid not placed: auctioneer unreachable at ")
    assert ana.state()["auction"]["best"] is None


def test_a_bid_the_auctioneer_did_not_confirm_is_not_shown_as_accepted(pages, auction,
                                                                      monkeypatch):
    ana = pages("Ana Lima")
    write_item(auction.items, "01-harp.json", "harp", duration=60)
    live_item(ana, "harp")
    monkeypatch.setattr("agents.auction.AuctionClient.bid",
                        lambda self, item, amount: {"accepted": False, "item": item})
    answer = ana.act(action="bid", increments=1)
    assert (answer.status_code, answer.json()) == \
        (502, {"error": "the auctioneer did not confirm the bid"})


def test_messages_arrive_live_and_offline_ones_when_the_page_opens(pages, broker):
    ana, bruno = pages("Ana Lima", follow=False), pages("Bruno Costa", follow=False)
    sent = ana.act(action="send", to="bruno.costa", text="the draft is ready")
    assert sent.status_code == 200 and sent.json()["delivered"], sent.text
    got = wait_for(lambda: bruno.state()["conversations"].get("ana.lima"), what="the message")
    assert [(m["direction"], m["text"]) for m in got] == [("in", "the draft is ready")]
    assert [m["text"] for m in ana.state()["conversations"]["bruno.costa"]] == \
        ["the draft is ready"]
    # Carla is registered but has no console open: the message waits in the mailbox.
    carla = broker.agent("Carla Dias", login=False)
    queued = ana.act(action="send", to="carla.dias", text="see you at noon")
    assert queued.json()["delivered"] is False
    carla.login(PASSWORD)
    carla_page = Page(carla, None, 48299)
    try:
        letters = wait_for(lambda: carla_page.state()["conversations"].get("ana.lima"),
                           what="the offline message")
        assert [m["text"] for m in letters] == ["see you at noon"]
    finally:
        carla_page.close()


def test_message_refusals_are_clear(pages):
    ana = pages("Ana Lima", follow=False)
    unknown = ana.act(action="send", to="nobody.here", text="hi")
    assert unknown.status_code == 400
    assert unknown.json()["error"].startswith("not delivered to nobody.here: ")
    empty = ana.act(action="send", to="bruno.costa", text="   ")
    assert empty.json() == {"error": "nothing to send: type a message"}


def test_services_notes_and_calls(pages, broker):
    ana = pages("Ana Lima", level=3, follow=False)
    state = wait_for(lambda: (s := ana.state())["services"] and s, what="services")
    names = {s["name"] for s in state["services"]}
    assert {"echo", "whoami", "notes.write"} <= names
    echo = ana.act(action="call", service="echo", args={"text": "hi"})
    assert echo.json() == {"ok": True, "service": "echo", "result": {"text": "hi"}}
    wrote = ana.act(action="call", service="notes.write",
                    args={"title": "Plan", "text": "noon", "level": 3})
    assert wrote.status_code == 200, wrote.text
    notes = ana.state()["notes"]
    assert [(n["title"], n["level"]) for n in notes] == [("Plan", 3)]
    unknown = ana.act(action="call", service="teleport", args={})
    assert unknown.status_code == 400 and "[unknown-service]" in unknown.json()["error"]
    bad_args = ana.act(action="call", service="echo", args="{not json")
    assert bad_args.json() == {"error": "the arguments are not valid JSON"}
    too_deep = ana.act(action="call", service="echo", args="[" * 20_000)
    assert too_deep.json() == {"error": "the arguments are not valid JSON"}
    for not_an_object in ("[1, 2]", [1, 2], '"text"'):
        refused = ana.act(action="call", service="echo", args=not_an_object)
        assert refused.json() == {"error": "the arguments must be a JSON object"}


def test_revoking_the_collaborator_signs_the_page_out(pages, broker):
    ana = pages("Ana Lima", follow=False)
    broker.admin.revoke("ana.lima", time.time())
    session = wait_for(lambda: (s := ana.state()["session"]) and not s["signed_in"] and s,
                       what="signed out")
    assert "revoked" in session["reason"]
    refused = ana.act(action="send", to="bruno.costa", text="hi")
    assert refused.status_code == 409 and refused.json()["error"].startswith("signed out: ")


def test_the_page_says_when_the_broker_is_unreachable_and_when_it_is_back(broker,
                                                                          monkeypatch):
    monkeypatch.setattr(collab, "SESSION_CHECK", 0.2)
    ana = Page(broker.agent("Ana Lima", timeout=0.3), None, 48250)
    try:
        broker.pause()  # the broker stops answering
        session = wait_for(lambda: (s := ana.state()["session"])["broker"] and s,
                           what="the broker note")
        assert session["broker"].startswith("broker unreachable: ")
        assert session["signed_in"]  # unreachable is not signed out
        broker.resume()  # back, with the same sessions
        assert wait_for(lambda: ana.state()["session"]["broker"] == "", what="note cleared")
    finally:
        ana.close()


def test_auction_state_says_whether_the_reserve_is_met_never_the_reserve():
    class View:
        item = {"id": "lamp", "title": "Lamp", "description": "", "start_cents": 1000,
                "increment_cents": 100, "reserve_cents": 5000}
        best = {"amount": 4000, "bidder": "ana", "at": 1.0}
        status, minimum, closes_at, bids, results, winner = "open", 4100, 10.0, [], [], None

    state = auction_state(View(), "live", "", [], 1.0)  # type: ignore[arg-type]
    assert state["reserve"] == "not met" and "reserve_cents" not in state["item"]
    View.best = {"amount": 5000, "bidder": "ana", "at": 2.0}
    assert auction_state(View(), "live", "", [], 1.0)["reserve"] == "met"  # type: ignore[arg-type]



def test_the_brokers_session_ended_notice_signs_out_with_its_reason(pages):
    ana = pages("Ana Lima", follow=False)
    notices = ana.console.notices
    notices.handle(Notice("session-ended", {"reason": "logged-out", "message": "bye"}))
    notices.handle(Notice("session-ended", {"reason": "revoked", "message": "forged"},
                          authenticated=False))
    assert ana.state()["session"]["signed_in"]  # own logout, or unauthenticated: no
    notices.handle(Notice("level-changed", {"level": 4}))
    assert ana.state()["me"]["level"] == 4
    notices.handle(Notice("session-ended", {"reason": "revoked",
                                            "message": "revoked by the operator"}))
    assert ana.state()["session"] == {"signed_in": False, "reason": "revoked by the operator",
                                      "broker": ""}


@pytest.mark.parametrize("where,link,note", [
    ({"auctioneer": "no.such.auctioneer"}, "unavailable",
     "unknown user 'no.such.auctioneer' [unknown-user]"),
    ({"endpoint": "tcp://127.0.0.1:9"}, "unreachable",
     "no answer from the auctioneer at tcp://127.0.0.1:9; retrying"),
], ids=["unknown-to-the-broker", "not-answering"])
def test_an_auctioneer_out_of_reach_is_named_on_the_page_and_the_rest_works(broker, auction,
                                                                           where, link, note):
    page = Page(broker.agent("Ana Lima"), auction, 48300, **where)
    try:
        state = wait_for(lambda: (a := page.state()["auction"])["link"] == link and a,
                         what=link)
        assert state["note"] == note
        assert page.state()["session"]["signed_in"]  # the rest of the console goes on
        assert page.act(action="call", service="echo", args={"text": "hi"}).status_code == 200
    finally:
        page.close()


def test_a_full_request_queue_is_refused_503_and_what_it_holds_still_runs():
    worker = collab.AgentThread(object(), on_message=lambda message: None,
                                on_check=lambda agent: None)
    worker.receiving = False  # no peer traffic in this test: only the submitted jobs
    queued = [worker.submit(lambda agent, n=n: n) for n in range(collab.MAX_JOBS)]
    with pytest.raises(PageError) as refused:
        worker.submit(lambda agent: "one too many")
    assert (refused.value.status, refused.value.message) == (
        503, "too many requests at once; try again")
    worker.thread.start()
    try:
        assert [future.result(timeout=5) for future in queued] == list(range(collab.MAX_JOBS))
    finally:
        worker.stop.set()
        worker.thread.join(5)
