"""``agora admin ui``: the operator's console over the broker's data directory.

Principals with level, kind and state (flagged ones stand out), enroll (the one-time ID and
fingerprint shown once, in the answer, never in the page's state), set-level, revoke,
re-enroll and restore (confirmed by typing the username), and the audit trail with
filters. Every change goes through :mod:`broker.admin`, the functions ``agora admin`` uses,
on this process's own connection to the store, so a running broker picks it up as it does
any operator change.

A watcher thread asks SQLite every half second whether another connection (the broker, an
``agora admin`` command) committed, and tells the open pages, which then reload.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from agora.errors import AgoraError
from broker import admin
from broker.server import open_store
from webui.assets import template
from webui.hub import EventHub
from webui.security import Access, PageError, read_action, render_page, text_param
from webui.serve import console_app

ACTIONS = frozenset({"enroll", "set-level", "revoke", "reenroll", "restore"})
#: Seconds between checks for changes made by other connections.
WATCH_INTERVAL = 0.5
DECISIONS = ("", "ok", "refused")


class OperatorConsole:
    """The store, its lock (one SQLite connection, many request threads) and the watcher."""

    def __init__(self, data_dir: Path, hub: EventHub) -> None:
        self.data_dir = Path(data_dir)
        self.store, self.keys = open_store(self.data_dir)
        self.hub = hub
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="store-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with self.lock:
            self.store.db.close()

    def _watch(self) -> None:
        with self.lock:
            version = self.store.data_version()
        while not self.stop.wait(WATCH_INTERVAL):
            with self.lock:
                now = self.store.data_version()
            if now != version:
                version = now
                self.hub.publish("changed")

    # -- reads ----------------------------------------------------------------------------

    def state(self, principal: str = "", decision: str = "") -> dict[str, Any]:
        with self.lock:
            return {"principals": admin.principal_rows(self.store),
                    "audit": admin.audit_rows(self.store, principal or None, decision or None),
                    "fingerprint": self.keys.fingerprint, "data_dir": str(self.data_dir)}

    # -- changes --------------------------------------------------------------------------

    def act(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        """One operator action; LocalError (via AgoraError) for what the store refuses."""
        with self.lock:
            if action == "enroll":
                result = admin.enroll(self.store, self.keys, text_param(params, "name", 100),
                                      text_param(params, "level", 20),
                                      text_param(params, "kind", 20, required=False)
                                      or "person",
                                      allow_similar=params.get("allow_similar") in (True, "on"),
                                      username=text_param(params, "username", 32,
                                                          required=False) or None)
                message = (f"enrolled {result['name']} as {result['username']}: hand over "
                           "the one-time ID and fingerprint in person")
            elif action == "set-level":
                username = text_param(params, "username", 64)
                lvl = admin.set_level(self.store, username, text_param(params, "level", 20))
                result, message = {}, f"{username} is now level {int(lvl)} ({lvl.label})"
            elif action == "revoke":
                username = text_param(params, "username", 64)
                admin.revoke(self.store, username)
                result, message = {}, f"{username} revoked: their sessions end now"
            else:  # reenroll, restore: a new one-time ID, confirmed by typing the username
                username = text_param(params, "username", 64)
                doing = "re-enrolling" if action == "reenroll" else "restoring"
                if text_param(params, "confirm", 64, required=False) != username:
                    raise PageError(400, f"{doing} {username} needs confirmation: type the "
                                    "username")
                issue = admin.reenroll if action == "reenroll" else admin.restore
                result = issue(self.store, self.keys, username)
                done = "re-enrolled" if action == "reenroll" else "revocation lifted"
                message = (f"{username} {done}: their old keys no longer work; hand over the "
                           "new one-time ID in person")
        self.hub.publish("changed")
        return {"ok": True, "message": message, **result}


def operator_app(console: OperatorConsole, access: Access) -> Starlette:
    page = template("operator.html")

    async def index(request: Request) -> Response:
        return render_page(page, access, data_dir=str(console.data_dir))

    def state(request: Request) -> Response:
        principal = request.query_params.get("principal", "")[:64]
        decision = request.query_params.get("decision", "")
        if decision not in DECISIONS:
            raise PageError(400, "decision must be ok or refused")
        return JSONResponse(console.state(principal, decision))

    async def action(request: Request) -> Response:
        name, params = await read_action(request, ACTIONS)
        try:
            return JSONResponse(await run_in_threadpool(console.act, name, params))
        except AgoraError as exc:
            raise PageError(400, str(exc)) from None

    return console_app(index, state, action, console.hub)
