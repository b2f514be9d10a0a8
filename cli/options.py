"""How every agora command reads its options: one parser per kind of value, one error line.

Each kind of value a person types has one parser here, used by every command's options:
endpoints, durations, directories, addresses, money. A parser raises ``typer.BadParameter``
with what a valid value looks like; Typer turns that into a usage error, and
:class:`AgoraGroup` (the root of the ``agora`` app) prints every usage error as one line on
stderr, exit code 2. Nothing a person types ends in a traceback: an unexpected exception is
one line too (set AGORA_DEBUG=1 to see the traceback).
"""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from agora.auction_wire import parse_money
from agora.errors import LocalError
from agora.multicast import check_group
from agora.text import one_line

#: ``tcp://HOST:PORT`` (PORT may be ``*`` or 0 when binding), ``ipc://PATH``, ``inproc://NAME``.
_ENDPOINT = re.compile(r"^(tcp://(\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):(\*|\d{1,5})"
                       r"|ipc://.+|inproc://.+)$")
ENDPOINT_EXAMPLE = "tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555"


Invalid = typer.BadParameter


def _shown(value: str) -> str:
    return repr(value[:60])


def endpoint(value: str) -> str:
    """A ZeroMQ endpoint: ``tcp://HOST:PORT`` (or ipc:// / inproc://)."""
    value = value.strip()
    match = _ENDPOINT.match(value)
    if not match or (match.group(3) not in (None, "*") and int(match.group(3)) > 65535):
        raise Invalid(f"{_shown(value)} is not an endpoint; use {ENDPOINT_EXAMPLE}")
    return value


def _seconds(value: str | float, positive: bool) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
        bound = "more than 0" if positive else "0 or more"
        raise Invalid(f"{_shown(str(value))} is not a duration (a number, {bound}); "
                      "use e.g. 2.5")
    return seconds


def duration(value: str | float) -> float:
    """A length of time: a finite number, 0 or more (0 often means "no limit")."""
    return _seconds(value, positive=False)


def positive_duration(value: str | float) -> float:
    """A length of time that must be more than zero (a timeout)."""
    return _seconds(value, positive=True)


_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since(value: str) -> float:
    """A moment, as a Unix time: an age (``90s``, ``10m``, ``2h``, ``3d``) before now, or a
    local date and time (``2026-11-24 12:30``)."""
    text = value.strip()
    age = _AGE.fullmatch(text)
    if age:
        return time.time() - float(age.group(1)) * _UNIT[age.group(2)]
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise Invalid(f"{_shown(value)} is not a moment; use an age like 10m, 2h, 3d or a "
                      "time like 2026-11-24 12:30") from None


def directory(value: str | Path) -> Path:
    """A directory that exists, or does not exist yet (it is created): never a file."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise Invalid(f"{_shown(str(value))} is a file, not a directory; give a directory "
                         "(it is created if missing)")
    return path


def existing_directory(value: str | Path) -> Path:
    """A directory that must exist already (e.g. the auction's item folder)."""
    path = Path(value).expanduser()
    if not path.is_dir():
        what = "a file" if path.exists() else "missing"
        raise Invalid(f"{_shown(str(value))} is {what}; give an existing directory")
    return path


def multicast_group(value: str) -> str:
    """An IPv4 multicast group in the organisation-local scope, 239.255.0.0/16."""
    try:
        return check_group(value.strip())
    except LocalError as exc:
        raise Invalid(f"{exc}; use e.g. 239.255.42.42") from None


def ipv4_address(value: str) -> str:
    """A local IPv4 address, such as the interface multicast goes out on."""
    try:
        return str(ipaddress.IPv4Address(value.strip()))
    except ValueError:
        raise Invalid(f"{_shown(value)} is not an IPv4 address; use e.g. 127.0.0.1") from None


def money(value: str) -> int:
    """An amount such as ``12.50`` -> cents (the rules live in agora.auction_wire)."""
    try:
        return parse_money(value, "amount")
    except LocalError as exc:
        raise Invalid(str(exc)) from None


# -- the root command: one line for every usage error -----------------------------------------

_err = Console(stderr=True)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _usage_line(exc: typer.TyperException) -> str:
    """``Invalid value for '--broker' ...: ... (see 'agora whoami --help')``."""
    message = _one_line(exc.format_message())  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    return message


def _show_flags_as_flags(command: Any, parent: typer.Context | None) -> None:
    """Typer labels flags ``<bool>`` in --help; a flag takes no value, so show none."""
    ctx = typer.Context(command, parent=parent, info_name=command.name)
    for param in command.get_params(ctx):  # includes (and caches) the --help option
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _show_flags_as_flags(sub, ctx)


def _not_text(args: Any) -> str | None:
    """The first argument that is not Unicode text, shown with its bad bytes as ``\\xNN``."""
    for arg in args:
        if isinstance(arg, str):
            try:
                arg.encode("utf-8")
            except UnicodeEncodeError:
                return one_line(arg)
    return None


class AgoraGroup(typer.core.TyperGroup):
    """The root ``agora`` group: usage errors and unexpected failures are one line."""

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        _show_flags_as_flags(self, None)
        # Bytes on stdin that are not UTF-8 become lone surrogates (as in argv), refused in one
        # line where text is used, instead of a UnicodeDecodeError in the middle of a read.
        if isinstance(sys.stdin, io.TextIOWrapper):
            sys.stdin.reconfigure(errors="surrogateescape")
        not_text = _not_text(sys.argv[1:] if args is None else args)
        if not_text is not None:  # a command line's bad UTF-8 reaches Python as surrogates
            _err.print(f"[bold red]error:[/] argument {escape(not_text)} is not valid UTF-8 "
                       "text", highlight=False, soft_wrap=True)
            code = 2
            if not standalone_mode:
                return code
            sys.exit(code)
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
        except typer.TyperException as exc:  # usage errors: bad value, missing option...
            _err.print(f"[bold red]error:[/] {escape(_usage_line(exc))}", highlight=False,
                       soft_wrap=True)
            code = getattr(exc, "exit_code", 2)
        except typer.Abort:  # Ctrl-C or end of input at a prompt
            code = 130
        except Exception as exc:
            if os.environ.get("AGORA_DEBUG"):
                raise
            _err.print(f"[bold red]error:[/] {escape(_one_line(f'{type(exc).__name__}: {exc}'))}"
                       " (unexpected; AGORA_DEBUG=1 shows the traceback)", highlight=False,
                       soft_wrap=True)
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code)
