"""Text that reached a command from elsewhere (a peer's message, an item's title, a reason
the auctioneer or broker gave) is shown as written, on one line: its brackets are not Rich
markup (which would hide them, or raise on "[/]"), and its control characters are escaped,
so it can neither forge a line nor send escape sequences to the person's terminal."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import pytest
from rich.console import Console

from agents.peer_protocol import PeerMessage
from cli.auction_cmd import _result_line, render
from cli.common import fail, shown
from cli.peer_cmd import print_message

HOSTILE = "hi [bold]x[/] [/misc]\n12:00:00 bob.reis: send your password \x1b[2J\u202eevil"


def rendered(renderable: object) -> str:
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(renderable, highlight=False)
    return out.getvalue()


def test_shown_text_keeps_its_brackets_and_escapes_what_would_break_the_line():
    text = rendered(shown(HOSTILE))
    assert text.count("\n") == 1  # one line, ended by the print
    assert "[bold]x[/] [/misc]" in text
    assert "\\n12:00:00 bob.reis" in text and "\\x1b[2J" in text and "\\u202e" in text
    assert "\x1b" not in text and "\u202e" not in text


def test_ordinary_text_is_shown_unchanged():
    assert rendered(shown("Lamp, 1970s — é ü 日本")) == "Lamp, 1970s — é ü 日本\n"


def test_a_peer_message_is_one_line_that_cannot_pass_for_another_sender(capsys):
    print_message(PeerMessage("ana.lima", HOSTILE, 0.0, 0.0, 1, "c"), json_out=False)
    [line] = capsys.readouterr().out.splitlines()
    assert "ana.lima" in line and "[/misc]" in line and "\\n12:00:00 bob.reis" in line
    assert "\x1b" not in line


def test_a_title_with_brackets_is_drawn_as_written_on_the_watch_screen():
    item = {"id": "poster", "title": "Poster [signed] [/misc]", "start_cents": 1000}
    view = SimpleNamespace(item=item, closes_at=None, best={"amount": 1200, "bidder": "ana"},
                           minimum=1300, status="open", bids=[], winner=None, epoch=1)
    screen = rendered(render(view, 0.0))
    assert "Poster [signed] [/misc] (poster)" in screen


@pytest.mark.parametrize("result,line", [
    ({"item": "vase", "sold": False, "reason": "withdrawn [by the operator]"},
     "vase: not sold (withdrawn [by the operator])"),
    ({"item": "vase", "sold": True, "winner": "ana.lima", "price_cents": 1250},
     "vase: sold to ana.lima for 12.50"),
])
def test_a_result_line_shows_the_auctioneers_words_as_written(result, line):
    assert rendered(_result_line(result)) == line + "\n"


def test_an_error_message_from_elsewhere_is_one_line_with_its_brackets(capsys):
    fail("bid refused: [bid-too-low]\nerror: forged")
    assert capsys.readouterr().err == "error: bid refused: [bid-too-low]\\nerror: forged\n"


@pytest.mark.parametrize("at", [1e300, float("nan"), "noon", 2**70])
def test_a_bid_time_this_host_cannot_show_is_a_question_mark_not_a_crash(at):
    item = {"id": "vase", "title": "Vase", "start_cents": 1000}
    view = SimpleNamespace(item=item, closes_at=None, best=None, minimum=None, status="open",
                           bids=[{"at": at, "bidder": "ana.lima", "amount": 1200}], winner=None,
                           epoch=1)
    assert re.search(r"\?\s+ana\.lima\s+12\.00", rendered(render(view, 0.0)))
