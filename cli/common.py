"""What every agora command shares: options with environment fall-backs, output, errors.

Library errors become CLI errors only here, at the edge: one line on stderr, exit code 1,
no traceback for anything a user can cause.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from agora.errors import AgoraError, RemoteError
from agora.text import one_line
from cli import options

console = Console()
err_console = Console(stderr=True)

DEFAULT_HOME = Path.home() / ".agora"

HomeOption = Annotated[Path, typer.Option(
    "--home", envvar="AGORA_HOME", help="This collaborator's agent directory "
    "(credentials file). [env: AGORA_HOME]", show_default=False, parser=options.directory,
    metavar="DIR")]
BrokerOption = Annotated[str | None, typer.Option(
    "--broker", envvar="AGORA_BROKER", help="Broker endpoint; defaults to the one you "
    "registered with, else tcp://127.0.0.1:5555. [env: AGORA_BROKER]",
    parser=options.endpoint,
    metavar="ENDPOINT")]
DataDirOption = Annotated[Path, typer.Option(
    "--data-dir", envvar="AGORA_BROKER_DIR", help="Broker data directory (database and key "
    "file). [env: AGORA_BROKER_DIR]", show_default=False, parser=options.directory,
    metavar="DIR")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
TimeoutOption = Annotated[float, typer.Option(
    "--timeout", envvar="AGORA_TIMEOUT", help="Seconds to wait for each answer.",
    parser=options.positive_duration, metavar="SECONDS")]


def default_home() -> Path:
    return DEFAULT_HOME / "agent"


def default_data_dir() -> Path:
    return DEFAULT_HOME / "broker"


def shown(text: object) -> str:
    """Text from elsewhere (a peer's message, an item's title, a refusal's reason) for a Rich
    print: one line with control characters escaped, so it can neither forge a line (a
    newline and a made-up sender) nor send escape sequences to the terminal, and its brackets
    shown as written instead of read as markup (where "[/]" would raise)."""
    return escape(one_line(str(text)))


def fail(message: str, code: int = 1) -> typer.Exit:
    # Shown as written: "[bid-too-low]" in a message is an error code, not Rich markup.
    err_console.print(f"[bold red]error:[/] {shown(message)}", highlight=False,
                      soft_wrap=True)
    return typer.Exit(code)


def describe(exc: AgoraError) -> str:
    """One line for one of agora's errors: a refusal with its code in brackets."""
    if isinstance(exc, RemoteError):
        return f"{exc.message} [{exc.code.value}]"
    return str(exc)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn agora's own errors into a one-line message and exit code 1."""
    try:
        yield
    except AgoraError as exc:
        raise fail(describe(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(INTERRUPTED) from None  # Ctrl-C: the person knows; no error line


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


#: Exit code of a command ended with Ctrl-C (128 + SIGINT), the same for every command.
INTERRUPTED = 130

#: The one rule for standard input, quoted in the --help of every command that reads it.
STDIN_RULE = ("Standard input: without a terminal, the password is its first line (a new "
              "password: the first two lines, which must match), and the command's own "
              "input follows; with AGORA_PASSWORD set, all of it is the command's input.")


F = TypeVar("F", bound=Callable[..., Any])


def reads_stdin(command: F) -> F:
    """Append STDIN_RULE to a command's --help: the rule is written once, here."""
    command.__doc__ = f"{(command.__doc__ or '').rstrip()}\n\n    {STDIN_RULE}\n"
    return command


def password(confirm: bool = False, prompt: str = "Password") -> str:
    """The password: AGORA_PASSWORD (for scripts), else asked without echo in a terminal,
    else read from standard input by :data:`STDIN_RULE` (``echo "$PW" | agora login``)."""
    env = os.environ.get("AGORA_PASSWORD")
    if env:
        return env
    if not sys.stdin.isatty():
        line = _stdin_line()
        if not line:
            raise fail("no password: set AGORA_PASSWORD, pipe it on standard input, or run "
                       "in a terminal")
        if confirm:
            again = _stdin_line()
            if not again:
                raise fail("a new password is given twice: put it on the first two lines "
                           "of standard input (or set AGORA_PASSWORD)")
            if again != line:
                raise fail("the two passwords differ; nothing was written")
        return line
    return typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm)


def _stdin_line() -> str:
    return sys.stdin.readline().rstrip("\r\n")


@contextlib.contextmanager
def progress(message: str, quiet: bool = False) -> Iterator[None]:
    """A spinner on stderr while a slow step runs, only when a person watches a terminal:
    nothing when output is piped or ``quiet`` (--json)."""
    if quiet or not (console.is_terminal and err_console.is_terminal):
        yield
        return
    with err_console.status(message, spinner="dots"):
        yield
