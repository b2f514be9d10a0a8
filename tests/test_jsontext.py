"""agora.jsontext: the call path's JSON is the standard library's JSON, byte for byte, in
both directions, only made faster; and it falls back to the standard library where it
cannot prove that."""

from __future__ import annotations

import json
import random
import sys

import pytest

from agora import jsontext

reference_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False,
                                   allow_nan=False).encode

SCALARS = [0, 1, -1, 2**63, -(2**70), 0.5, -1e-300, 1e300, 2.5e-8, 1.7976931348623157e308,
           True, False, None, "", "text", "é ü ß", "日本", "\u2028", "\x00\x1f", '"\\/',
           "\U0001f600"]


def random_value(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return rng.choice(SCALARS)
    if roll < 0.75:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["a", "b", "é", "", "key with space", "1"]) + str(i):
            random_value(rng, depth + 1) for i in range(rng.randrange(4))}


VALUES = [random_value(random.Random(seed)) for seed in range(500)] + SCALARS + [[], {}]


def test_dumps_writes_what_the_standard_library_writes() -> None:
    for value in VALUES:
        assert jsontext.dumps(value) == reference_dumps(value), value


def test_loads_reads_back_what_the_standard_library_reads() -> None:
    for value in VALUES:
        text = reference_dumps(value)
        assert reference_dumps(jsontext.loads(text)) == reference_dumps(json.loads(text)), text


@pytest.mark.parametrize("text", [" {}", "{} ", "\n[1, 2]\t", ' "x" ', "1", " 1e5 "])
def test_loads_takes_whitespace_around_a_value_as_json_loads_does(text: str) -> None:
    assert reference_dumps(jsontext.loads(text)) == reference_dumps(json.loads(text))


@pytest.mark.parametrize("text", ["", " ", "{} x", "{}{}", "[1,]", '{"a":}', "\ufeff{}",
                                  '"unterminated', "{'a': 1}", "nul", "01", b"\xff{}", b"{} x"])
def test_loads_refuses_what_json_loads_refuses_with_a_value_error(text: str | bytes) -> None:
    with pytest.raises(ValueError) as ours:
        jsontext.loads(text)
    with pytest.raises(ValueError) as theirs:
        json.loads(text)
    assert ours.type is theirs.type


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a":' * 100_000, b"[" * 100_000,
                                  " " + "[" * 100_000])
def test_loads_refuses_nesting_too_deep_with_a_value_error_not_a_recursion_error(
        text: str | bytes) -> None:
    # json.loads raises RecursionError here, which no reader's `except ValueError` catches.
    with pytest.raises(jsontext.TooDeep, match="nested too deeply"):
        jsontext.loads(text)


@pytest.mark.parametrize("data", ['{"é":[1]}'.encode(), b'\xef\xbb\xbf{"a":1}',
                                  '{"a":"é"}'.encode("utf-16"), b" 2 "])
def test_loads_reads_bytes_as_json_loads_does(data: bytes) -> None:
    assert jsontext.loads(data) == json.loads(data)


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "[1, NaN]", '{"a":Infinity}',
                                  "1e999", "[-1e400]", " NaN", b"NaN", b'{"a": 1e999}'])
def test_loads_refuses_nan_infinity_and_numbers_no_double_holds_as_not_json(
        text: str | bytes) -> None:
    # Python's json takes them; RFC 8259 does not, nor JSON.parse or another language's reader.
    with pytest.raises(jsontext.NotJSON):
        jsontext.loads(text)


@pytest.mark.parametrize("text", ['"\\ud800"', '{"a": ["x\\udfff"]}', '{"\\uD83D": 1}',
                                  '"\\ude00\\ud83d"', '"caf\udcc3"', b'["\\ud800"]',
                                  "[" * 500 + '"\\ud800"' + "]" * 500])
def test_loads_refuses_a_string_holding_a_lone_surrogate_as_not_json(text: str | bytes) -> None:
    # Not Unicode text: UTF-8, SQLite and other languages refuse it further on.
    with pytest.raises(jsontext.NotJSON, match="lone surrogate"):
        jsontext.loads(text)


def test_loads_reads_an_escaped_surrogate_pair_as_the_one_character_it_is() -> None:
    assert jsontext.loads('["\\ud83d\\ude00", "\\u00e9"]') == ["\U0001f600", "\u00e9"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {"a": [-float("inf")]}])
def test_dumps_refuses_nan_and_infinity_with_a_value_error(value: object) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        jsontext.dumps(value)


def test_dumps_refuses_what_json_cannot_encode_with_the_usual_type_error() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        jsontext.dumps({"a": {1, 2}})


def test_dumps_of_a_circular_structure_raises_rather_than_looping() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises((ValueError, RecursionError)):
        jsontext.dumps(loop)


def test_an_encoder_that_writes_other_text_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # Another Python's C encoder with other arguments: made, it writes something else.
    import json.encoder

    real = json.encoder.c_make_encoder
    monkeypatch.setattr(json.encoder, "c_make_encoder",
                        lambda *args: real(*args[:5], ", ", *args[6:]))
    assert jsontext._make_dumps() == jsontext._reference.encode


def test_an_encoder_that_would_write_nan_is_not_used_and_the_fallback_refuses_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Same probe text, but allow_nan left on: it would send NaN, which is not JSON.
    import json.encoder

    real = json.encoder.c_make_encoder
    monkeypatch.setattr(json.encoder, "c_make_encoder", lambda *args: real(*args[:8], True))
    assert jsontext._make_dumps() == jsontext._reference.encode
    monkeypatch.undo()
    with pytest.raises(ValueError, match="not JSON compliant"):  # the fallback itself
        jsontext._reference.encode(float("nan"))


def test_an_encoder_that_takes_other_arguments_is_not_used(monkeypatch: pytest.MonkeyPatch,
                                                           ) -> None:
    import json.encoder

    def other_signature(markers: object, default: object) -> None:
        raise AssertionError("not reached: Python refuses the call with TypeError first")

    monkeypatch.setattr(json.encoder, "c_make_encoder", other_signature)
    assert jsontext._make_dumps() == jsontext._reference.encode


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="CPython's C encoder")
def test_this_python_uses_the_fast_encoder() -> None:
    # On CPython the fast path must not fall back without anyone noticing.
    assert jsontext.dumps != jsontext._reference.encode


def test_without_the_c_encoder_the_standard_library_encodes(monkeypatch: pytest.MonkeyPatch,
                                                            ) -> None:
    import json.encoder

    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    assert jsontext._make_dumps() == jsontext._reference.encode
