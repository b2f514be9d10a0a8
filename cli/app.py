"""The ``agora`` Typer app: sub-commands grouped by role.

- operator (broker host): ``agora broker start``, ``agora admin ...``
- collaborator: ``agora register``, ``login``, ``whoami`` (+ services, peers, auction)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli import agent_cmd, bench_cmd, options, peer_cmd, service_cmd, ui_cmd
from cli.auction_cmd import auction_app, auctioneer_app
from cli.broker_cmd import admin_app, broker_app
from cli.options import AgoraGroup

app = typer.Typer(
    name="agora",
    cls=AgoraGroup,  # one line on stderr for every usage error
    help="agora: a secure message bus for a closed group of collaborators.\n\n"
    "Operator: `agora broker start`, `agora admin enroll`. "
    "Collaborator: `agora register`, then `agora login` / `whoami`, `agora services`, "
    "`agora call`; peer messages with `agora listen`, `agora send`, `agora chat`; auctions "
    "with `agora auction`. Service processes: `agora worker run`, `agora auctioneer start`.",
    no_args_is_help=True,
    # Locals in a traceback can hold keys and tokens: never show them.
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
OPERATOR, COLLABORATOR, SERVICE = "Operator (broker host)", "Collaborator", "Service processes"
app.add_typer(broker_app, name="broker", rich_help_panel=OPERATOR)
app.add_typer(admin_app, name="admin", rich_help_panel=OPERATOR)
app.command("register", rich_help_panel=COLLABORATOR)(agent_cmd.register)
app.command("login", rich_help_panel=COLLABORATOR)(agent_cmd.login)
app.command("whoami", rich_help_panel=COLLABORATOR)(agent_cmd.whoami)
app.command("services", rich_help_panel=COLLABORATOR)(service_cmd.services)
app.command("call", rich_help_panel=COLLABORATOR)(service_cmd.call)
app.command("listen", rich_help_panel=COLLABORATOR)(peer_cmd.listen)
app.command("send", rich_help_panel=COLLABORATOR)(peer_cmd.send)
app.command("chat", rich_help_panel=COLLABORATOR)(peer_cmd.chat)
app.add_typer(auction_app, name="auction", rich_help_panel=COLLABORATOR)
# Web consoles (cli.ui_cmd): `agora ui` for a collaborator, `agora admin ui` for the operator.
app.command("ui", rich_help_panel=COLLABORATOR)(ui_cmd.ui)
admin_app.command("ui")(ui_cmd.admin_ui)
app.add_typer(service_cmd.worker_app, name="worker", rich_help_panel=SERVICE)
app.add_typer(auctioneer_app, name="auctioneer", rich_help_panel=SERVICE)
app.command("bench", rich_help_panel="Try it")(bench_cmd.bench)


@app.command("demo", rich_help_panel="Try it")
def demo(
    json_out: Annotated[bool, typer.Option("--json", help="One JSON event per line.")] = False,
    keep: Annotated[Path | None, typer.Option(
        "--keep", help="Keep the demo's data (databases, credentials, logs) in this "
        "directory instead of a temporary one.", metavar="DIR",
        parser=options.directory)] = None,
) -> None:
    """Run the whole system on this machine, step by step, and clean up after.

    Starts a real broker on loopback with OS-chosen ports, enrolls, registers
    and logs in three collaborators, and shows what agora refuses. Exits 0 only
    if every step did what it should; otherwise names the step that failed.
    """
    from cli.demo import run_demo

    if not run_demo(json_out, keep):
        raise typer.Exit(1)


def main() -> None:
    app()
