"""What every agora command shares: options with environment fall-backs, output, errors.

Library errors become CLI errors only here, at the edge: one line on stderr, exit code 1,
no traceback for anything a user can cause.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from agora.errors import AgoraError, RemoteError
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


def fail(message: str, code: int = 1) -> typer.Exit:
    # Escaped: "[bid-too-low]" in a message is an error code, not Rich markup.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False,
                      soft_wrap=True)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn agora's own errors into a one-line message and exit code 1."""
    try:
        yield
    except RemoteError as exc:
        raise fail(f"{exc.message} [{exc.code.value}]") from None
    except AgoraError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def password(confirm: bool = False, prompt: str = "Password") -> str:
    """The password: AGORA_PASSWORD (for scripts), else asked without echo in a terminal,
    else the first line of standard input (``echo "$PW" | agora login``)."""
    env = os.environ.get("AGORA_PASSWORD")
    if env:
        return env
    if not sys.stdin.isatty():
        line = sys.stdin.readline().rstrip("\n")
        if not line:
            raise fail("no password: set AGORA_PASSWORD, pipe it on standard input, or run "
                       "in a terminal")
        return line
    return typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm)
