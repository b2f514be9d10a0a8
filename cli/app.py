"""The ``agora`` Typer app: sub-commands grouped by role.

- operator (broker host): ``agora broker start``, ``agora admin ...``
- collaborator: ``agora register``, ``login``, ``whoami`` (+ services, peers, auction)
"""

from __future__ import annotations

import typer

from cli import agent_cmd, service_cmd
from cli.broker_cmd import admin_app, broker_app

app = typer.Typer(
    name="agora",
    help="agora: a secure message bus for a closed group of collaborators.\n\n"
    "Operator: `agora broker start`, `agora admin enroll`. "
    "Collaborator: `agora register`, then `agora login` / `whoami`, `agora services`, "
    "`agora call`. Service process: `agora worker run`.",
    no_args_is_help=True,
    # Locals in a traceback can hold keys and tokens: never show them.
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
app.add_typer(broker_app, name="broker")
app.add_typer(admin_app, name="admin")
app.command("register")(agent_cmd.register)
app.command("login")(agent_cmd.login)
app.command("whoami")(agent_cmd.whoami)
app.command("services")(service_cmd.services)
app.command("call")(service_cmd.call)
app.add_typer(service_cmd.worker_app, name="worker")


def main() -> None:
    app()
