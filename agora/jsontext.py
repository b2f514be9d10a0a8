"""Compact JSON for the call path: the standard library's own C encoder and scanner, made
once instead of on every message. ``loads`` is also agora's one reader of JSON it did not
write (wire bodies, files, command lines, web forms): it refuses every bad text, however
deeply nested, with a ``ValueError``.

Why this module exists: ``json.dumps`` builds a new C encoder object for every call and
``json.loads`` runs a whitespace regular expression before and after the C scanner, each
through three or four Python frames. For the small bodies of a service call (tens of bytes)
that set-up is most of the cost, and it is paid four times per call (the caller's args, the
server's parse of them, the result, the caller's parse of it), cold, between two network
waits. Made once, the same C code does the same work in a third to a half of the time
(measured in docs/BENCHMARKS.md, "What bounds each figure").

The output and the accepted input are exactly the standard library's: the encoder is checked
against a known answer when this module loads and is not used if it writes anything else
(another Python version, or an interpreter without the C accelerator: then
``json.JSONEncoder`` encodes), and any text the fast scan does not take whole (leading or
trailing whitespace, trailing data, an error) goes to ``json.loads``, which accepts it or
raises its usual ``ValueError``. Two differences, both on purpose: JSON nested deeper than
the scanner can follow raises :class:`TooDeep`, a ``ValueError``, where ``json.loads`` raises
``RecursionError`` (so every reader of untrusted JSON refuses it with the one ``except
ValueError`` it has for any other bad text); and a circular structure given to ``dumps``
raises ``RecursionError`` rather than ``ValueError`` (no marker table is kept between calls, so
the encoder holds no state and threads can share it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

_reference = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
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
                                False, False, True)
        if "".join(encode(_PROBE, 0)) != _PROBE_TEXT:  # a known answer, not json.dumps:
            return _reference.encode                  # that may run this same encoder
    except (ImportError, TypeError, ValueError):
        return _reference.encode
    join = "".join

    def dumps(obj: Any) -> str:
        return join(encode(obj, 0))

    return dumps


#: ``obj`` as compact JSON text (no spaces, keys in their order, non-ASCII kept).
dumps: Callable[[Any], str] = _make_dumps()

_scan = json.JSONDecoder().scan_once


class TooDeep(ValueError):
    """JSON nested deeper than the parser follows (Python's recursion limit)."""


def loads(text: str | bytes) -> Any:
    """The value of JSON ``text``, as ``json.loads`` gives it, and a ValueError if none:
    :class:`TooDeep` for nesting too deep to read. Bytes are read as ``json.loads`` reads
    them (UTF-8, -16 or -32); the wire decodes its own bytes as UTF-8 first."""
    try:
        if type(text) is str:
            try:
                value, end = _scan(text, 0)
            except StopIteration:  # nothing parses at 0: leading whitespace, or not JSON
                pass
            else:
                if end == len(text):  # else trailing whitespace (fine) or data (an error)
                    return value
        return json.loads(text)
    except RecursionError:
        raise TooDeep("JSON nested too deeply") from None
