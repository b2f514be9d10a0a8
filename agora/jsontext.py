"""Compact JSON for the call path: the standard library's own C encoder and scanner, made
once instead of on every message. ``loads`` is also agora's one reader of JSON it did not
write (wire bodies, files, command lines, web forms): it refuses every bad text, however
deeply nested, with a ``ValueError``. Both directions are JSON as RFC 8259 defines it:
``NaN``, ``Infinity`` and numbers too large for a double (``1e999``), which Python's json
reads and writes by default, are refused, so agora never sends what a strict JSON reader in
another language (or a browser's ``JSON.parse``) would choke on, nor takes it in; and a
string read that holds a lone surrogate (``"\\ud800"``), which is not Unicode text, is
refused before it reaches a store or an encoder that would fail on it.

Why this module exists: ``json.dumps`` builds a new C encoder object for every call and
``json.loads`` runs a whitespace regular expression before and after the C scanner, each
through three or four Python frames. For the small bodies of a service call (tens of bytes)
that set-up is most of the cost, and it is paid four times per call (the caller's args, the
server's parse of them, the result, the caller's parse of it), cold, between two network
waits. Made once, the same C code does the same work in a third to a half of the time
(measured in docs/BENCHMARKS.md, "What bounds each figure").

The output and the accepted input are the standard library's but for those refusals: the
encoder is checked against a known answer when this module loads and is not used if it
writes anything else (another Python version, or an interpreter without the C accelerator:
then ``json.JSONEncoder`` encodes), and any text the fast scan does not take whole (leading
or trailing whitespace, trailing data, an error) goes to ``json.loads``, which accepts it or
raises its usual ``ValueError``. The differences, all on purpose: JSON nested deeper than
the scanner can follow raises :class:`TooDeep`, a ``ValueError``, where ``json.loads``
raises ``RecursionError`` (so every reader of untrusted JSON refuses it with the one
``except ValueError`` it has for any other bad text); the values that are not JSON raise
:class:`NotJSON` in ``loads`` and the standard library's "Out of range float values are not
JSON compliant" ``ValueError`` in ``dumps``; and a circular structure given to ``dumps``
raises ``RecursionError`` rather than ``ValueError`` (no marker table is kept between calls,
so the encoder holds no state and threads can share it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


class TooDeep(ValueError):
    """JSON nested deeper than the parser follows (Python's recursion limit)."""


class NotJSON(ValueError):
    """``NaN``, ``Infinity`` or a number beyond a double (Python's json takes them, JSON does
    not: RFC 8259, section 6), or a string holding a lone surrogate (not Unicode text)."""


_reference = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_PROBE = {"a": [1, -2.5, None, True, False, "é\n\"\\\x01"], "b": {}, "c": 1e300, "d": []}
_PROBE_TEXT = '{"a":[1,-2.5,null,true,false,"é\\n\\"\\\\\\u0001"],"b":{},"c":1e+300,"d":[]}'


def _make_dumps() -> Callable[[Any], str]:
    try:
        from json.encoder import c_make_encoder, encode_basestring
        if c_make_encoder is None:
            return _reference.encode
        # The call json.JSONEncoder.iterencode makes (CPython 3.11): markers, default,
        # encoder, indent, key and item separators, sort_keys, skipkeys, allow_nan. Another
        # signature raises TypeError or fails the probe, and the plain encoder is used.
        encode = c_make_encoder(None, _reference.default, encode_basestring, None, ":", ",",
                                False, False, False)
        if "".join(encode(_PROBE, 0)) != _PROBE_TEXT:  # a known answer, not json.dumps:
            return _reference.encode                  # that may run this same encoder
        try:
            encode(float("nan"), 0)
        except ValueError:  # refused: allow_nan is False, as asked
            pass
        else:
            return _reference.encode
    except (ImportError, TypeError, ValueError):
        return _reference.encode
    join = "".join

    def dumps(obj: Any) -> str:
        return join(encode(obj, 0))

    return dumps


#: ``obj`` as compact JSON text (no spaces, keys in their order, non-ASCII kept); a
#: ValueError for NaN and Infinity, which are not JSON.
dumps: Callable[[Any], str] = _make_dumps()

_INFINITY = float("inf")


def _constant(token: str) -> float:
    raise NotJSON(f"{token} is not JSON")


def _finite(token: str) -> float:
    value = float(token)
    if value == _INFINITY or value == -_INFINITY:  # 1e999: no double holds it
        raise NotJSON("a number too large for JSON")
    return value


# Called by the C scanner only for those tokens (constants) and for numbers with a fraction
# or an exponent (floats): integers and the rest parse as fast as before.
_STRICT: dict[str, Any] = {"parse_constant": _constant, "parse_float": _finite}
_scan = json.JSONDecoder(**_STRICT).scan_once


def loads(text: str | bytes) -> Any:
    """The value of JSON ``text``, as ``json.loads`` gives it, and a ValueError if none:
    :class:`TooDeep` for nesting too deep to read, :class:`NotJSON` for NaN, Infinity,
    1e999 or a string holding a lone surrogate. Bytes are read as ``json.loads`` reads them
    (UTF-8, -16 or -32); the wire decodes its own bytes as UTF-8 first."""
    try:
        end = -1
        if type(text) is str:
            try:
                value, end = _scan(text, 0)
            except StopIteration:  # nothing parses at 0: leading whitespace, or not JSON
                pass
        if end != len(text):  # trailing whitespace (fine) or data (an error), or bytes
            value = json.loads(text, **_STRICT)
    except RecursionError:
        raise TooDeep("JSON nested too deeply") from None
    # A lone surrogate ("\ud800", or one already in text from elsewhere) is not Unicode
    # text: UTF-8, SQLite and other languages refuse it, so a string holding one would fail
    # far from here. Only text with an escape or outside ASCII can hold one.
    if (_ESCAPE if type(text) is str else _ESCAPE_BYTES) in text or not text.isascii():
        _refuse_lone_surrogates(value)
    return value


_ESCAPE, _ESCAPE_BYTES = "\\u", b"\\u"


def _refuse_lone_surrogates(value: Any) -> None:
    pending = [value]  # a loop, not recursion: the value may be nested as deep as it parsed
    while pending:
        item = pending.pop()
        if type(item) is str:
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise NotJSON("a string holds a lone surrogate, which is not text") from None
        elif type(item) is dict:
            pending.extend(item)
            pending.extend(item.values())
        elif type(item) is list:
            pending.extend(item)
