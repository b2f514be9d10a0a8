"""``agora services``, ``agora call`` and ``agora worker run``: using and offering services.

Calls go through the broker over the logged-in, encrypted session (see cli.agent_cmd
session()); the broker decides what you may call, from the level it stores for you.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from agents.worker import ServiceWorker
from agora.errors import LocalError
from agora.jsontext import TooDeep, loads
from agora.protocol import Level
from cli.agent_cmd import ended_by_broker, session
from cli.common import (
    BrokerOption,
    HomeOption,
    JsonOption,
    TimeoutOption,
    console,
    fail,
    print_json,
    shown,
    user_errors,
)

worker_app = typer.Typer(help="Offer a service to the broker from this process.",
                         no_args_is_help=True)


def parse_call_args(pairs: list[str], json_text: str | None, data: str | None,
                    ) -> dict[str, Any]:
    """Merge ``--data @file``, ``--json TEXT`` and ``key=value`` pairs (later ones win).

    A value that parses as JSON is taken as such (``n=3`` is a number, ``ok=true`` a
    boolean); anything else is a string.
    """
    args: dict[str, Any] = {}
    for source, text in (("--data", _read_data(data)), ("--json", json_text)):
        if text is None:
            continue
        try:
            obj = loads(text)
        except TooDeep:
            raise LocalError(f"{source} is nested too deeply") from None
        except ValueError as exc:  # json's JSONDecodeError says where, in .msg; NotJSON what
            reason = getattr(exc, "msg", None) or str(exc)
            raise LocalError(f"{source} is not valid JSON: {reason}") from None
        if not isinstance(obj, dict):
            raise LocalError(f"{source} must be a JSON object")
        args.update(obj)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LocalError(f"argument {pair!r} is not key=value")
        try:
            args[key] = loads(value)
        except ValueError:  # not JSON (or too deep to be): the text itself
            args[key] = value
    return args


def _read_data(data: str | None) -> str | None:
    if data is None:
        return None
    if not data.startswith("@"):
        return data
    path = Path(data[1:])
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LocalError(f"cannot read {path}: {exc.strerror}") from None


def services(
    home: HomeOption = None,  # type: ignore[assignment]
    broker: BrokerOption = None,
    timeout: TimeoutOption = 2.5,
    json_out: JsonOption = False,
) -> None:
    """List the services you may call: name, required level, description, workers.

    Services above your level are not shown. "broker" in the workers column
    means the broker serves it itself; a number is how many worker processes
    serve it now.
    """
    with user_errors(), session(home, broker, timeout) as agent:
        rows = agent.call("services")
        if json_out:
            print_json(rows)
            return
        table = Table("service", "level", "workers", "description")
        for r in rows:
            workers = "broker" if r["workers"] is None else str(r["workers"])
            table.add_row(r["name"], f"{r['level']} {Level(r['level']).label}", workers,
                          shown(r["description"]), style="dim" if r["workers"] == 0 else "")
        console.print(table)


def call(
    service: Annotated[str, typer.Argument(help="Service name (see `agora services`).")],
    args: Annotated[list[str] | None, typer.Argument(
        help="Arguments as key=value; values that parse as JSON are JSON (n=3, ok=true).",
        show_default=False)] = None,
    json_text: Annotated[str | None, typer.Option(
        "--json", help='Arguments as one JSON object, e.g. \'{"text": "hi"}\'.')] = None,
    data: Annotated[str | None, typer.Option(
        "--data", help="Arguments as a JSON object from a file: --data @args.json.")] = None,
    home: HomeOption = None,  # type: ignore[assignment]
    broker: BrokerOption = None,
    timeout: TimeoutOption = 2.5,
) -> None:
    """Call a service through the broker and print its result as JSON.

    Exits 0 with the result on stdout, or 1 with a one-line error on stderr
    (unknown service, forbidden by your level, service unavailable, timeout...).

    Examples: `agora call echo text=hello`,
    `agora call notes.write title=x text=y level=3`,
    `agora call wordcount --data @doc.json`.
    """
    with user_errors():
        call_args = parse_call_args(args or [], json_text, data)
        with session(home, broker, timeout) as agent:
            print_json(agent.call(service, call_args))


def load_handler(spec: str) -> Callable[..., Any]:
    """``package.module:function`` -> the function (the current directory is importable)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise LocalError(f"{spec!r} is not MODULE:FUNCTION")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LocalError(f"cannot import {module_name}: {exc}") from None
    except Exception as exc:
        # The module's own code failed (a syntax error, a raise): the operator's to fix, so
        # one line that says where, not agora's "unexpected" error.
        raise LocalError(f"cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    handler = getattr(module, attr, None)
    if not callable(handler):
        raise LocalError(f"{module_name} has no function {attr!r}")
    return handler


@worker_app.command("run")
def run(
    target: Annotated[str, typer.Argument(help="The handler, as MODULE:FUNCTION.")],
    service: Annotated[str, typer.Option("--service", help="Service name to offer.")],
    level: Annotated[str, typer.Option("--level", help="Level callers need, 1-5 or a name; "
                                       "at most this worker principal's own level.")],
    description: Annotated[str, typer.Option("--description",
                                             help="One line for `agora services`; "
                                             "default: the function's docstring.")] = "",
    home: HomeOption = None,  # type: ignore[assignment]
    broker: BrokerOption = None,
    timeout: TimeoutOption = 2.5,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve SERVICE with MODULE:FUNCTION until Ctrl-C or SIGTERM.

    --home holds the credentials of a principal of kind "service" (enrolled with
    `agora admin enroll --kind service`, registered with `agora register`); the
    password comes from AGORA_PASSWORD or is asked. The function gets the call's
    arguments as keyword arguments (plus `caller` if it has such a parameter).
    Run the command several times to have the broker balance calls across the
    workers.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s")
    with user_errors():
        try:
            lvl = Level.parse(level)
        except ValueError as exc:
            raise fail(str(exc)) from None
        handler = load_handler(target)
        with session(home, broker, timeout) as agent:
            worker = ServiceWorker(agent, service, handler, lvl, description)

            def stop(signum: int, frame: object) -> None:
                worker.stop.set()
                if worker.in_call:  # a handler that hangs must not keep the process alive
                    raise _Stopped

            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)
            announced = False

            def announce() -> None:  # printed on stdout so scripts (and tests) can wait
                nonlocal announced
                if worker.attached.wait(worker.attach_timeout) and not announced:
                    announced = True
                    print(f"agora worker ready: {service} (level {int(lvl)}) as "
                          f"{agent.username} at {agent.broker}", flush=True)

            threading.Thread(target=announce, daemon=True).start()
            try:
                with ended_by_broker(agent, worker.stop):
                    worker.serve()
            except _Stopped:
                console.print(f"worker {service} stopped during a call (abandoned; its "
                              f"caller gets service-failed) after {worker.served} call(s)")
                return
        console.print(f"worker {service} stopped after {worker.served} call(s)")


class _Stopped(BaseException):  # noqa: N818 - control flow, not an error
    """Raised by the signal handler into a running handler call: stop means stop."""
