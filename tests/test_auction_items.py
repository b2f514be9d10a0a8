"""Item files and money: what the auctioneer accepts, and the one-line reason when not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agora.auction_wire import format_money, parse_money
from agora.errors import LocalError
from auctioneer.items import ItemFolder, parse_item

SAMPLES = Path(__file__).resolve().parent.parent / "auctioneer" / "sample_items"


def doc(**changes: object) -> bytes:
    base = {"id": "lamp", "title": "Lamp", "description": "", "starting_price": "12.50",
            "min_increment": "0.50", "duration": 5}
    base.update(changes)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


def reason(data: bytes) -> str:
    with pytest.raises(LocalError) as info:
        parse_item(data)
    return str(info.value)


def test_decimal_strings_and_integer_cents_are_both_money():
    assert parse_money("12.50") == 1250 and parse_money("3") == 300 and parse_money(7) == 7
    assert format_money(1250) == "12.50" and format_money(5) == "0.05"


def test_float_money_is_refused():
    assert "decimal string" in reason(doc(starting_price=12.5))
    with pytest.raises(LocalError):
        parse_money(0.1)


def test_money_with_too_many_decimals_or_negative_is_refused():
    assert "two decimals" in reason(doc(min_increment="0.005"))
    assert "between" in reason(doc(starting_price="99999999999999"))
    for text in ("-1", "+1", "1e30", "1e3", "NaN", "inf", "1.", ".5", "1_000"):
        assert "is not an amount like" in reason(doc(starting_price=text)), text


def test_integer_in_a_currency_field_is_ambiguous_and_refused():
    assert "starting_price_cents" in reason(doc(starting_price=1250))


def test_cents_fields_are_read_as_cents():
    item = parse_item(doc(starting_price=None, starting_price_cents=1250, reserve_price="20"))
    assert (item.start_cents, item.increment_cents, item.reserve_cents) == (1250, 50, 2000)


def test_missing_or_bad_fields_have_one_line_reasons():
    assert reason(b"[1, 2]") == "item file must hold a JSON object"
    assert reason(doc(id="../etc")).startswith("id must be")
    assert reason(doc(title=" ")).startswith("title must be")
    assert reason(doc(duration=0)).startswith("duration must be")
    assert reason(doc(duration=True)).startswith("duration must be")
    assert reason(doc(min_increment=None)) == "missing min_increment"
    assert reason(doc(min_increment="0")) == "min_increment must be at least 0.01"
    assert "KiB" in reason(b" " * 70_000)


def test_bad_json_and_badly_typed_fields_have_one_line_reasons():
    assert reason(b"{oops") == "not valid JSON"
    assert reason(b'{"id": "\xff"}') == "not valid JSON"  # not UTF-8
    assert reason(b'{"id": ' + b"[" * 50_000) == "not valid JSON"  # nested too deeply
    for bad in (5, "x" * 4001):
        assert reason(doc(description=bad)).startswith("description must be"), bad
    for bad in ("1250", 12.5, True):
        assert reason(doc(starting_price=None, starting_price_cents=bad)) == \
            "starting_price_cents must be an integer number of cents", bad


def test_sample_items_are_valid():
    items = [parse_item(p.read_bytes()) for p in sorted(SAMPLES.glob("*.json"))]
    assert [i.id for i in items] == ["brass-lamp", "atlas-1920"]


def test_folder_lists_in_name_order_and_moves_files_aside(tmp_path):
    for name in ("b.json", "a.json", "notes.txt"):
        (tmp_path / name).write_text("{}")
    folder = ItemFolder(tmp_path)
    assert [p.name for p in folder.pending()] == ["a.json", "b.json"]
    folder.reject(tmp_path / "a.json", "not valid JSON\nsecond line dropped")
    folder.finish("b.json")
    assert (tmp_path / "rejected" / "a.json.reason").read_text() == "not valid JSON\n"
    assert (tmp_path / "done" / "b.json").exists() and folder.pending() == []


def test_missing_items_folder_is_a_clear_error(tmp_path):
    with pytest.raises(LocalError, match="does not exist"):
        ItemFolder(tmp_path / "nope")
