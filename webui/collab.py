"""``agora ui``: a collaborator's console — the live auction, peer messages and services.

The page never sees a key, a token or a password: this process holds the logged-in
:class:`~agents.agent.Agent` and does all crypto, ZeroMQ and multicast, through the public
APIs only (``Agent.call/send/messages``, ``AuctionClient``, ``AuctionWatcher``).

Threads, each bounded and stopped by :meth:`CollabConsole.close`:

- :class:`AgentThread` owns the Agent (it is not thread-safe): it runs the jobs that request
  handlers hand it (a call, a send), receives peer messages between jobs, and checks the
  session every :data:`SESSION_CHECK` seconds, so a revocation shows as "signed out".
- :class:`NoticeFollower` follows the notices the broker pushes to this session (its own
  socket): a session ended by the broker signs the page out at once, with the reason.
- :class:`AuctionFollower` joins the auction and runs an ``AuctionWatcher`` in its own thread;
  every announcement becomes a fresh state for the page. No word from the auctioneer for
  :data:`SILENT_AFTER` seconds is shown as such instead of a countdown going on as if
  nothing happened. Bids go through a second ``AuctionClient`` under its own lock.

Both publish to the :class:`~webui.hub.EventHub`; the page gets them over ``/events``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from agents.agent import Agent
from agents.auction import AuctionClient, AuctionWatcher, auctioneer_key
from agents.auction_view import AuctionView
from agents.notices import Notice
from agents.peer_protocol import PeerMessage
from agora.auction_wire import parse_money
from agora.errors import AgoraError, AuctioneerUnreachable, LocalError, RemoteError
from agora.jsontext import loads
from agora.protocol import EndReason, ErrorCode, NoticeType
from webui.assets import template
from webui.hub import EventHub
from webui.security import Access, PageError, read_action, render_page, text_param
from webui.serve import console_app

log = logging.getLogger("agora.ui")

ACTIONS = frozenset({"bid", "send", "call", "refresh"})
#: Seconds between checks that the broker still knows this session (and who is online);
#: each is one audited ``directory`` call. The broker's session-ended notice usually
#: says it first (:class:`NoticeFollower`); this check covers a broker that cannot push.
SESSION_CHECK = 5.0
#: Seconds without any announcement (heartbeats come every second) before the page says
#: the auctioneer has gone silent.
SILENT_AFTER = 3.5
#: Seconds between attempts to (re)join the auction.
REJOIN_INTERVAL = 2.0
#: Bounds: jobs waiting for the agent, conversations kept, messages kept per conversation.
MAX_JOBS = 64
MAX_CONVERSATIONS = 100
MAX_MESSAGES = 200
#: Longest a request waits for the agent thread.
JOB_TIMEOUT = 30.0
#: Longest each of the console's threads waits before it looks at its stop flag again: the
#: console (and `agora ui`) stops within about this, not within a whole poll.
STOP_POLL = 0.05
MAX_TEXT = 4000
#: Refusals that mean the broker no longer accepts this session.
SIGNED_OUT = frozenset({ErrorCode.REVOKED, ErrorCode.FLAGGED, ErrorCode.TOKEN_REUSED,
                        ErrorCode.UNKNOWN_SESSION, ErrorCode.BAD_CREDENTIALS,
                        ErrorCode.UNKNOWN_USER})


def describe(exc: AgoraError) -> str:
    if isinstance(exc, RemoteError):
        return f"{exc.message} [{exc.code.value}]"
    return str(exc)


class AgentThread:
    """Runs every use of the Agent in one thread: submitted jobs, peer receiving, checks."""

    def __init__(self, agent: Agent, on_message: Callable[[PeerMessage], None],
                 on_check: Callable[[Agent], None]) -> None:
        self.agent = agent
        self.on_message = on_message
        self.on_check = on_check
        self.jobs: queue.Queue[tuple[Callable[[Agent], Any], concurrent.futures.Future]] = \
            queue.Queue(MAX_JOBS)
        self.stop = threading.Event()
        self.receiving = True
        self.thread = threading.Thread(target=self._run, name="agent", daemon=True)

    def submit(self, job: Callable[[Agent], Any]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self.stop.is_set():
            raise PageError(503, "the console is stopping")
        try:
            self.jobs.put_nowait((job, future))
        except queue.Full:
            raise PageError(503, "too many requests at once; try again") from None
        return future

    def _run(self) -> None:
        next_check = 0.0
        while not self.stop.is_set():
            for _ in range(MAX_JOBS):
                try:
                    job, future = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(job(self.agent))
                    except BaseException as exc:  # handed to the request that asked
                        future.set_exception(exc)
            if self.receiving:
                try:
                    for message in self.agent.peer.poll(STOP_POLL):
                        self.on_message(message)
                except AgoraError as exc:
                    log.warning("receiving peer messages: %s", describe(exc))
                    self.stop.wait(STOP_POLL)
            else:
                self.stop.wait(STOP_POLL)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + SESSION_CHECK
                self.on_check(self.agent)
        while True:  # nobody will run what is left
            try:
                _, future = self.jobs.get_nowait()
            except queue.Empty:
                break
            future.cancel()


class NoticeFollower:
    """The broker's pushed notices for this session, in their own thread and socket."""

    def __init__(self, console: CollabConsole) -> None:
        self.console = console
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="notices", daemon=True)

    def _run(self) -> None:
        try:
            stream = self.console.agent.subscribe()
        except AgoraError as exc:  # an older broker: the periodic session check remains
            log.info("no session notices from the broker: %s", describe(exc))
            return
        with stream:
            while not self.stop.is_set() and self.console.signed_in:
                for notice in stream.poll(STOP_POLL):
                    self.handle(notice)

    def handle(self, notice: Notice) -> None:
        if not notice.authenticated:
            return  # what the stream saw itself (silence...): a hint, never proof
        if notice.type == NoticeType.SESSION_ENDED.value and \
                notice.reason != EndReason.LOGGED_OUT.value:
            self.console.sign_out(notice.message or f"session ended ({notice.reason})")
        elif notice.type == NoticeType.NEW_LOGIN.value:
            where = notice.fields.get("address") or "somewhere"
            self.console.hub.publish("note", f"another session of yours logged in (from "
                                     f"{where})")
        elif notice.type == NoticeType.LEVEL_CHANGED.value:
            level = notice.fields.get("level")
            if isinstance(level, int) and not isinstance(level, bool):
                self.console.me["level"] = level
                self.console.hub.publish("me", self.console.me)


def auction_state(view: AuctionView | None, link: str, note: str,
                  history: list[dict[str, Any]], now: float) -> dict[str, Any]:
    """What the page draws of the auction (no group key, no reserve amount)."""
    results: dict[str, dict[str, Any]] = {r["item"]: r for r in history if "item" in r}
    state: dict[str, Any] = {"link": link, "note": note, "now": now, "status": "idle",
                             "item": None, "best": None, "minimum": None, "closes_at": None,
                             "bids": [], "reserve": None, "winner": None}
    if view is not None:
        for r in view.results:
            results[r.get("item")] = {**results.get(r.get("item"), {}), **r}
        item, best = view.item, view.best
        reserve = (item or {}).get("reserve_cents")
        state.update({
            "status": view.status, "minimum": view.minimum, "closes_at": view.closes_at,
            "best": best, "bids": list(view.bids), "winner": view.winner,
            "item": None if item is None else {k: item.get(k) for k in (
                "id", "title", "description", "start_cents", "increment_cents")},
            "reserve": None if reserve is None else
            ("met" if best and best.get("amount", 0) >= reserve else "not met")})
    state["results"] = sorted(results.values(), key=lambda r: r.get("closed_at") or 0,
                              reverse=True)[:50]
    return state


class AuctionFollower:
    """Joins the auction, watches it in its own thread, places bids."""

    def __init__(self, console: CollabConsole, auctioneer: str, endpoint: str,
                 interface: str, timeout: float) -> None:
        self.console = console
        self.auctioneer, self.endpoint = auctioneer, endpoint
        self.interface, self.timeout = interface, timeout
        self.private_key = console.agent.private_key
        self.context = console.agent.context
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self._key: bytes | None = None
        self._view: AuctionView | None = None
        self._history: list[dict[str, Any]] = []
        self._link, self._note = "connecting", "joining the auction…"
        self._last_heard = time.monotonic()
        self._results_stale = False
        self._state = auction_state(None, self._link, self._note, [], time.time())
        self._bid_lock = threading.Lock()
        self._bid_client: AuctionClient | None = None
        self.thread = threading.Thread(target=self._run, name="auction", daemon=True)

    # -- the page's view ------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {**self._state, "now": time.time()}

    def _publish(self, link: str | None = None, note: str | None = None) -> None:
        with self.lock:
            if link is not None:
                self._link, self._note = link, note or ""
            self._state = auction_state(self._view, self._link, self._note, self._history,
                                        time.time())
            state = self._state
        self.console.hub.publish("auction", state)

    # -- the watching thread --------------------------------------------------------------

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self._follow()
            except AgoraError as exc:
                self._publish("unavailable", describe(exc))
            except OSError as exc:  # multicast socket
                self._publish("unavailable", f"cannot receive announcements: {exc}")
            self.stop.wait(REJOIN_INTERVAL)

    def _lookup_key(self) -> bytes:
        if self._key is None:
            try:
                future = self.console.agent_thread.submit(
                    lambda agent: auctioneer_key(agent, self.auctioneer))
                self._key = future.result(JOB_TIMEOUT)
            except (PageError, concurrent.futures.TimeoutError,
                    concurrent.futures.CancelledError):
                raise LocalError("the broker did not say who the auctioneer is") from None
        return self._key

    def _follow(self) -> None:
        if not self.console.signed_in:
            self._publish("signed-out", "signed out: the auction is closed to you")
            return
        client = AuctionClient(self.private_key, self._lookup_key(), self.endpoint,
                               self.context, timeout=self.timeout, retries=1)
        try:
            try:
                join = client.join()
            except AuctioneerUnreachable:
                self._publish("unreachable", f"no answer from the auctioneer at "
                              f"{self.endpoint}; retrying")
                return
            watcher = AuctionWatcher(client, join, self._on_event, self.interface)
            try:
                with self.lock:
                    self._view, self._last_heard = watcher.view, time.monotonic()
                self._load_results(client)
                self._publish("live", "")
                while not self.stop.is_set() and not watcher.removed:
                    watcher.serve(timeout=STOP_POLL)
                    if self._results_stale:
                        self._load_results(client)
                        self._publish()
                    self._check_silence()
                if watcher.removed:
                    self._publish("removed", f"the auctioneer removed you: {watcher.removed}")
            finally:
                watcher.close()
        finally:
            client.close()

    def _on_event(self, event: dict[str, Any], view: AuctionView) -> None:
        with self.lock:
            self._last_heard = time.monotonic()
            if event.get("kind") == "closed":
                self._results_stale = True
        self._publish("live", "")

    def _check_silence(self) -> None:
        quiet = time.monotonic() - self._last_heard
        if quiet >= SILENT_AFTER:
            note = f"no word from the auctioneer for {int(quiet)} s"
            if note != self._note:
                self._publish("silent", note)

    def _load_results(self, client: AuctionClient) -> None:
        self._results_stale = False
        try:
            history = client.results()
        except AgoraError as exc:
            log.info("could not load earlier results: %s", describe(exc))
            return
        with self.lock:
            self._history = [r for r in history if isinstance(r, dict)]

    # -- bidding (request threads) --------------------------------------------------------

    def bid(self, params: dict[str, Any]) -> dict[str, Any]:
        state = self.state()
        item = state["item"]
        if state["link"] not in ("live", "silent") or item is None \
                or state["status"] not in ("open", "closing"):
            raise PageError(409, "no item is open for bidding")
        amount = bid_amount(params, state)
        with self._bid_lock:
            if self._bid_client is None:
                self._bid_client = AuctionClient(self.private_key, self._lookup_key(),
                                                 self.endpoint, self.context,
                                                 timeout=self.timeout, retries=1)
            try:
                answer = self._bid_client.bid(item["id"], amount)
            except RemoteError as exc:
                raise PageError(409, f"bid refused: {exc.message} [{exc.code.value}]") from None
            except AgoraError as exc:
                self._bid_client.close()
                self._bid_client = None
                raise PageError(503, f"bid not placed: {describe(exc)}") from None
        if answer.get("accepted") is not True:
            raise PageError(502, "the auctioneer did not confirm the bid")
        return {"accepted": True, "item": answer.get("item"), "amount": answer.get("amount"),
                "extended": bool(answer.get("extended"))}

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        with self._bid_lock:
            if self._bid_client is not None:
                self._bid_client.close()


def bid_amount(params: dict[str, Any], state: dict[str, Any]) -> int:
    """Cents to bid: ``increments`` (1-100) above the best bid, or a typed ``amount``."""
    item = state["item"]
    if "increments" in params:
        count = params["increments"]
        if isinstance(count, str) and count.strip().isdigit():
            count = int(count)
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 100:
            raise PageError(400, "increments must be a whole number from 1 to 100")
        best = state["best"]
        base = best["amount"] if best else item["start_cents"] - item["increment_cents"]
        return base + count * item["increment_cents"]
    amount = params.get("amount")
    if not isinstance(amount, str) or not amount.strip():
        raise PageError(400, "type an amount like 12.50")
    try:
        cents = parse_money(amount.strip(), "amount")
    except LocalError as exc:
        raise PageError(400, str(exc)) from None
    if cents <= 0:
        raise PageError(400, "the amount must be more than 0")
    return cents


class CollabConsole:
    """The state the page shows, and the threads that keep it current."""

    def __init__(self, agent: Agent, hub: EventHub, auctioneer: str, endpoint: str,
                 interface: str, timeout: float, follow_auction: bool = True) -> None:
        if agent.info is None:
            raise LocalError("log in before starting the console")
        self.agent = agent
        self.hub = hub
        self.timeout = timeout
        self.me = {"username": agent.info.username, "level": agent.info.level,
                   "kind": agent.info.kind}
        self.lock = threading.Lock()
        self.signed_in = True
        self.signed_out_reason = ""
        self.broker_note = ""
        self.conversations: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()
        self.online: list[dict[str, Any]] = []
        self.services: list[dict[str, Any]] = []
        self.notes: list[dict[str, Any]] = []
        self.agent_thread = AgentThread(agent, self._on_message, self._check)
        self.notices = NoticeFollower(self)
        self.auction = AuctionFollower(self, auctioneer, endpoint, interface, timeout) \
            if follow_auction else None
        self._closed = False

    def start(self) -> None:
        self.agent_thread.thread.start()
        self.agent_thread.submit(self._load_lists)
        self.notices.thread.start()
        if self.auction is not None:
            self.auction.start()

    def close(self) -> None:
        """Stop the threads, then log out (the agent thread has ended: this one owns it)."""
        if self._closed:
            return
        self._closed = True
        if self.auction is not None:
            self.auction.close()
        self.notices.stop.set()
        self.notices.thread.join(timeout=5)
        self.agent_thread.stop.set()
        self.agent_thread.thread.join(timeout=10)
        if self.agent_thread.thread.is_alive():
            log.warning("the agent thread did not stop; not logging out")
            return
        if self.signed_in:
            with contextlib.suppress(Exception):
                self.agent.logout()
        self.agent.close()

    # -- what the agent thread does --------------------------------------------------------

    def _load_lists(self, agent: Agent) -> None:
        for what in ("services", "notes"):
            with contextlib.suppress(AgoraError):
                self._refresh(agent, what)

    def _refresh(self, agent: Agent, what: str) -> Any:
        if what == "services":
            rows = agent.call("services")
            with self.lock:
                self.services = rows
        elif what == "notes":
            rows = agent.call("notes.list")
            with self.lock:
                self.notes = rows
        else:
            rows = agent.call("directory")
            with self.lock:
                self.online = rows
        self.hub.publish(what, rows)
        return rows

    def _check(self, agent: Agent) -> None:
        """Is the session still good? (and who is online); signed out says why."""
        if not self.signed_in:
            return
        try:
            self._refresh(agent, "online")
        except RemoteError as exc:
            if exc.code in SIGNED_OUT:
                self.sign_out(describe(exc))
            else:
                self._broker(f"the broker refused a check: {describe(exc)}")
            return
        except AgoraError as exc:
            self._broker(f"broker unreachable: {describe(exc)}")
            return
        self._broker("")

    def _broker(self, note: str) -> None:
        if note != self.broker_note:
            self.broker_note = note
            self.hub.publish("session", self.session())

    def sign_out(self, reason: str) -> None:
        with self.lock:
            if not self.signed_in:
                return
            self.signed_in, self.signed_out_reason = False, reason
        self.agent_thread.receiving = False
        log.warning("signed out: %s", reason)
        self.hub.publish("session", self.session())

    def _on_message(self, message: PeerMessage) -> None:
        self._remember(message.sender, {"direction": "in", "text": message.text,
                                        "at": message.sent_at, "status": "received"})

    def _remember(self, peer: str, entry: dict[str, Any]) -> None:
        entry = {"peer": peer, **entry}
        with self.lock:
            if peer not in self.conversations:
                self.conversations[peer] = deque(maxlen=MAX_MESSAGES)
                while len(self.conversations) > MAX_CONVERSATIONS:
                    self.conversations.popitem(last=False)
            self.conversations[peer].append(entry)
            self.conversations.move_to_end(peer)
        self.hub.publish("message", entry)

    # -- what the page reads ---------------------------------------------------------------

    def session(self) -> dict[str, Any]:
        return {"signed_in": self.signed_in, "reason": self.signed_out_reason,
                "broker": self.broker_note}

    def state(self) -> dict[str, Any]:
        with self.lock:
            conversations = {peer: list(msgs) for peer, msgs in self.conversations.items()}
            lists = {"online": list(self.online), "services": list(self.services),
                     "notes": list(self.notes)}
        return {"me": self.me, "session": self.session(), "conversations": conversations,
                **lists, "auction": self.auction.state() if self.auction else None}

    # -- what the page asks for (request threads) ------------------------------------------

    async def on_agent(self, job: Callable[[Agent], Any]) -> Any:
        """Run ``job`` in the agent thread; its refusal becomes a one-line PageError."""
        if not self.signed_in:
            raise PageError(409, f"signed out: {self.signed_out_reason}")
        future = self.agent_thread.submit(job)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), JOB_TIMEOUT)
        except asyncio.TimeoutError:
            raise PageError(504, "no answer in time; try again") from None
        except AgoraError as exc:  # the session check, not a job's refusal, signs out
            raise PageError(400, describe(exc)) from None

    async def act(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        if not self.signed_in:
            raise PageError(409, f"signed out: {self.signed_out_reason}")
        if action == "bid":
            if self.auction is None:
                raise PageError(409, "this console does not follow the auction")
            return await run_in_threadpool(self.auction.bid, params)
        if action == "send":
            return await self._send(text_param(params, "to", 64), _message_text(params))
        if action == "call":
            return await self._call(text_param(params, "service", 64), _call_args(params))
        what = text_param(params, "what", 20)
        if what not in ("services", "notes", "online"):
            raise PageError(400, "refresh what: services, notes or online")
        await self.on_agent(lambda agent: self._refresh(agent, what))
        return {"ok": True}

    async def _send(self, to: str, text: str) -> dict[str, Any]:
        try:
            receipt = await self.on_agent(lambda agent: agent.send(to, text, self.timeout))
        except PageError as exc:
            raise PageError(exc.status, f"not delivered to {to}: {exc.message}") from None
        status = "delivered" if receipt.delivered else f"left in the mailbox: {receipt.reason}"
        self._remember(to, {"direction": "out", "text": text, "at": time.time(),
                            "status": status})
        return {"ok": True, "delivered": receipt.delivered, "status": status}

    async def _call(self, service: str, args: dict[str, Any]) -> dict[str, Any]:
        result = await self.on_agent(lambda agent: agent.call(service, args))
        if service == "notes.write":
            with contextlib.suppress(PageError):
                await self.on_agent(lambda agent: self._refresh(agent, "notes"))
        return {"ok": True, "service": service, "result": result}


def _message_text(params: dict[str, Any]) -> str:
    text = params.get("text")
    if not isinstance(text, str) or not text.strip():
        raise PageError(400, "nothing to send: type a message")
    if len(text) > MAX_TEXT:
        raise PageError(400, f"the message is longer than {MAX_TEXT} characters")
    return text


def _call_args(params: dict[str, Any]) -> dict[str, Any]:
    args = params.get("args", {})
    if isinstance(args, str):  # a form's text field
        try:
            args = loads(args) if args.strip() else {}
        except ValueError:
            raise PageError(400, "the arguments are not valid JSON") from None
    if not isinstance(args, dict):
        raise PageError(400, "the arguments must be a JSON object")
    return args


def collab_app(console: CollabConsole, access: Access) -> Starlette:
    page = template("collab.html")

    async def index(request: Request) -> Response:
        return render_page(page, access, username=console.me["username"])

    async def state(request: Request) -> Response:
        return JSONResponse(console.state())

    async def action(request: Request) -> Response:
        name, params = await read_action(request, ACTIONS)
        return JSONResponse(await console.act(name, params))

    return console_app(index, state, action, console.hub)
