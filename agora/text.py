"""Text a peer sent, made safe for one log line or one audit cell.

Anything that arrived over the network (a username before authentication, a service name, a
reason a worker gave) is attacker-chosen: a newline in it forges a second log line, an
escape sequence rewrites the operator's terminal. :func:`printable` is the one helper every
log line and audit row uses for such text; :class:`OneLineFormatter` is the safety net that
keeps every log record on one line whatever a caller forgot.
"""

from __future__ import annotations

import logging

#: Longest peer-sent text kept in a log line or audit cell (escaped characters count).
MAX_PRINTABLE = 80

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if ch.isprintable():
        return ch
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 \
        else f"\\U{code:08x}"


def printable(value: object, limit: int = MAX_PRINTABLE) -> str:
    """``value`` (str, bytes or anything) as one line of printable text, at most ``limit``.

    Backslashes, control and other non-printable characters (newlines, ANSI escapes, bidi
    overrides, U+2028) become backslash escapes; invalid UTF-8 becomes ``\\xNN``. Longer
    text is cut and ends in ``...``, so the result is never mistaken for the whole value.
    """
    if value is None:
        return "-"
    if (type(value) is str and len(value) <= limit and value.isprintable()
            and "\\" not in value):
        return value  # nothing to escape or cut (the common case: our own names)
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value).decode("utf-8", "surrogateescape")
    else:
        text = str(value)
    out: list[str] = []
    size = 0
    for ch in text:
        piece = _escape_char(ch)
        if size + len(piece) > limit:
            out.append("...")
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


def one_line(text: str) -> str:
    """Escape only what breaks a line or the terminal (control characters), keep the rest."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == "\\" else _escape_char(ch) for ch in text)


class OneLineFormatter(logging.Formatter):
    """A formatter whose message part is always one line: a forged line cannot appear.

    Tracebacks (``exc_info``) are appended by :class:`logging.Formatter` after this and keep
    their lines; they come from our code, not from a peer.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging API
        return one_line(super().formatMessage(record))
