"""``agora demo``: the whole system on this machine, in one command, leaving nothing behind.

A real broker process (and, as they land, a worker and an auctioneer) on OS-chosen loopback
ports in a temporary directory; three collaborators at different levels go through what
agora does. Every step states what must happen; the demo exits 0 only if every step did,
and otherwise names the step that failed. ``--json`` prints one JSON event per line.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zmq
from rich.markup import escape

from agents import Agent
from agents.auction import AuctionClient, AuctionWatcher, auctioneer_key
from agora.auction_wire import format_money
from agora.crypto import PrivateKey
from agora.errors import AgoraError, RemoteError
from agora.multicast import free_udp_port, random_group
from agora.protocol import ErrorCode, Level, PrincipalKind
from broker.server import open_store
from cli.processes import AgoraProcess, agora_env

SAMPLE_ITEMS = Path(__file__).resolve().parent.parent / "auctioneer" / "sample_items"

PASSWORDS = {"ana.lima": "ana's long passphrase", "bruno.costa": "bruno's long passphrase",
             "carla.dias": "carla's long passphrase"}
CAST = [("Ana Lima", Level.TOP_SECRET), ("Bruno Costa", Level.CONFIDENTIAL),
        ("Carla Dias", Level.PUBLIC)]


class DemoFailed(Exception):
    """A demo step did not do what it should."""


@dataclass
class Event:
    step: int
    section: str
    actor: str
    action: str
    outcome: str
    detail: str


class Transcript:
    """Prints each step as it happens: Rich lines for people, JSON lines for scripts."""

    def __init__(self, json_out: bool) -> None:
        from rich.console import Console

        self.json_out = json_out
        self.console = Console(highlight=False)
        self.events: list[Event] = []
        self.section = ""

    def heading(self, title: str) -> None:
        self.section = title
        if not self.json_out:
            self.console.rule(f"[bold]{title}")

    def record(self, actor: str, action: str, outcome: str, detail: str) -> None:
        event = Event(len(self.events) + 1, self.section, actor, action, outcome, detail)
        self.events.append(event)
        if self.json_out:
            sys.stdout.write(json.dumps({"event": "step", **asdict(event)}) + "\n")
            sys.stdout.flush()
            return
        mark, colour = {"ok": ("✓", "green"), "refused": ("✗ refused:", "yellow"),
                        "failed": ("FAILED:", "bold red")}[outcome]
        self.console.print(f"[dim]{event.step:>3}[/] [bold cyan]{actor:<12}[/] {escape(action)}")
        self.console.print(f"{'':16}[{colour}]{mark}[/] {escape(detail)}".rstrip())

    def finish(self, ok: bool, message: str, elapsed: float) -> None:
        if self.json_out:
            sys.stdout.write(json.dumps({"event": "summary", "ok": ok, "steps": len(self.events),
                                         "message": message, "seconds": round(elapsed, 2)})
                             + "\n")
            return
        style = "bold green" if ok else "bold red"
        self.console.rule(f"[{style}]{message}[/] ({len(self.events)} steps, {elapsed:.1f} s)")


class Demo:
    def __init__(self, workdir: Path, transcript: Transcript) -> None:
        self.workdir = workdir
        self.out = transcript
        self.context = zmq.Context()
        self.processes: list[AgoraProcess] = []
        self.agents: dict[str, Agent] = {}
        self.broker_endpoint = ""
        self.fingerprint = ""

    # -- step machinery -------------------------------------------------------------------

    def step(self, actor: str, action: str, fn: Callable[[], Any],
             describe: Callable[[Any], str] = lambda r: "") -> Any:
        """Run a step that must succeed."""
        try:
            result = fn()
        except (AgoraError, TimeoutError, OSError) as exc:
            raise self._failed(actor, action, str(exc)) from None
        self.out.record(actor, action, "ok", describe(result))
        return result

    def refused(self, actor: str, action: str, fn: Callable[[], Any],
                code: ErrorCode) -> RemoteError:
        """Run a step that the system must refuse with ``code``; show it as a user sees it."""
        try:
            fn()
        except RemoteError as exc:
            if exc.code is code:
                self.out.record(actor, action, "refused", f"{exc.message} [{exc.code.value}]")
                return exc
            detail = f"expected {code.value}, got {exc.code.value}: {exc.message}"
        except AgoraError as exc:
            detail = f"expected {code.value}, got: {exc}"
        else:
            detail = f"expected a {code.value} refusal, but it was allowed"
        raise self._failed(actor, action, detail)

    def check(self, actor: str, action: str, condition: bool, detail: str) -> None:
        if not condition:
            raise self._failed(actor, action, detail)
        self.out.record(actor, action, "ok", detail)

    def _failed(self, actor: str, action: str, detail: str) -> DemoFailed:
        """Record a failed step; the error names it."""
        self.out.record(actor, action, "failed", detail)
        return DemoFailed(f"step {len(self.out.events)} '{action}' failed: {detail}")

    def start_process(self, *args: str, ready: str, timeout: float = 20,
                      password: str | None = None) -> tuple[AgoraProcess, Any]:
        env = agora_env(AGORA_PASSWORD=password) if password else agora_env()
        proc = AgoraProcess(list(args), env)
        self.processes.append(proc)
        return proc, proc.expect(ready, timeout)

    def close(self) -> None:
        for agent in self.agents.values():
            with contextlib.suppress(Exception):
                agent.logout()
            agent.close()
        for proc in reversed(self.processes):
            proc.terminate(timeout=5)
        self.context.destroy(linger=0)

    # -- the story --------------------------------------------------------------------------

    def run(self) -> None:
        self.identity()
        self.services()
        self.peers()
        self.auction()
        self.token_replay()  # last: it locks Bruno out

    def identity(self) -> None:
        self.out.heading("Enrollment, registration and login")
        data_dir = self.workdir / "broker"
        _, match = self.step("operator", "start the broker (own process, TCP loopback)",
                             lambda: self.start_process(
                                 "broker", "start", "--data-dir", str(data_dir), "--bind",
                                 "tcp://127.0.0.1:0",
                                 ready=r"ready at (\S+) fingerprint (\S+)"),
                             lambda r: r[1].group(1))
        self.broker_endpoint, self.fingerprint = match.group(1), match.group(2)
        store, _ = open_store(data_dir)
        enrolled: list[tuple[str, str]] = []
        for name, level in CAST:
            username, otid = self.step(
                "operator", f"enroll {name} face to face",
                lambda name=name, level=level: store.enroll(name, level, time.time()),
                lambda r, level=level: f"username {r[0]}, level {int(level)} "
                                       f"({level.label}), one-time ID handed over")
            enrolled.append((username, otid))
        store.db.close()
        for username, otid in enrolled:
            agent = Agent(self.workdir / username, broker=self.broker_endpoint,
                          context=self.context)
            self.agents[username] = agent
            self.step(username, "register: own key pair, encrypted credentials file",
                      lambda a=agent, u=username, o=otid: a.register(
                          u, o, self.fingerprint, PASSWORDS[u]),
                      lambda c: f"broker key matches fingerprint {self.fingerprint[:9]}…; "
                                "TOKEN_1 stored")
        for username, agent in self.agents.items():
            # listen=False: these in-process agents never take peer conversations; Bruno's
            # `agora listen` process below does.
            info = self.step(username, "log in (password opens credentials, token rotates)",
                             lambda a=agent, u=username: a.login(PASSWORDS[u], listen=False),
                             lambda i: f"session {i.session}, listening on port {i.port}")
            me = agent.whoami()
            self.check(username, "whoami: the broker's view", me["level"] == info.level,
                       f"level {me['level']} ({me['level_name']}), session {me['session']}")

    def services(self) -> None:
        self.out.heading("Services, gated by security level")
        ana, bruno, carla = (self.agents[u] for u in ("ana.lima", "bruno.costa", "carla.dias"))
        self.step("carla.dias", "call echo (level 1: allowed)",
                  lambda: carla.call("echo", {"text": "hello"}), lambda r: f"result {r}")
        worker = self._service_principal("Text Worker", Level.CONFIDENTIAL)
        self.step("operator", "agora admin services bind wordcount (level 3) to it",
                  lambda: self._bind("wordcount", worker[0], Level.CONFIDENTIAL),
                  lambda r: f"only {worker[0]} may offer wordcount, and callers need level 3")
        self.step(worker[0], "agora worker run agents.examples:word_count (own process)",
                  lambda: self.start_process(
                      "worker", "run", "agents.examples:word_count", "--service", "wordcount",
                      "--level", "3", "--home", str(worker[1]), "--broker",
                      self.broker_endpoint, ready=r"agora worker ready", password=worker[2]),
                  lambda r: "attached to the broker as service 'wordcount', level 3")
        self.step("ana.lima", "call wordcount (level 3, served by the worker process)",
                  lambda: ana.call("wordcount", {"text": "to be or not to be"}),
                  lambda r: f"{r['words']} words, {r['distinct']} distinct")
        self.refused("carla.dias", "call wordcount with level 1",
                     lambda: carla.call("wordcount", {"text": "let me in"}),
                     ErrorCode.FORBIDDEN)
        note = self.step("ana.lima", "notes.write a top-secret note",
                         lambda: ana.call("notes.write", {"title": "Plan B", "level": 5,
                                                          "text": "Meet at the old mill."}),
                         lambda r: f"note {r['id']} at level {r['level']}")
        self.refused("bruno.costa", "notes.read it with level 3 (no read up)",
                     lambda: bruno.call("notes.read", {"id": note["id"]}),
                     ErrorCode.NOT_FOUND)
        self.refused("ana.lima", "notes.write at level 1 (no write down)",
                     lambda: ana.call("notes.write", {"title": "Leak", "level": 1,
                                                      "text": "Plan B is at the old mill."}),
                     ErrorCode.FORBIDDEN)

    def _bind(self, service: str, username: str, level: Level) -> None:
        store, _ = open_store(self.workdir / "broker")
        try:
            store.bind_service(service, username, level, time.time())
        finally:
            store.db.close()

    def _service_principal(self, name: str, level: Level) -> tuple[str, Path, str]:
        """Enroll and register a service principal; (username, home, password)."""
        store, _ = open_store(self.workdir / "broker")
        username, otid = self.step(
            "operator", f"enroll {name} as a service principal",
            lambda: store.enroll(name, level, time.time(), PrincipalKind.SERVICE),
            lambda r: f"username {r[0]}, level {int(level)}")
        store.db.close()
        home, password = self.workdir / username, f"{username}'s long passphrase"
        agent = Agent(home, broker=self.broker_endpoint, context=self.context)
        try:
            self.step(username, "register (its own key pair and credentials)",
                      lambda: agent.register(username, otid, self.fingerprint, password),
                      lambda c: f"level {c.level}, kind {c.kind}")
        finally:
            agent.close()
        return username, home, password

    def peers(self) -> None:
        self.out.heading("Peer-to-peer messages (end-to-end encrypted, over PAIR sockets)")
        listener, match = self.step(
            "bruno.costa", "agora listen (its own process)",
            lambda: self.start_process("listen", "--home", str(self.workdir / "bruno.costa"),
                                       "--broker", self.broker_endpoint, "--json",
                                       ready=r'^\{.*"listening"', password=PASSWORDS[
                                           "bruno.costa"]),
            lambda r: f"listening on port {json.loads(r[1].string)['port']}")
        for sender, text in (("ana.lima", "The draft is on your desk."),
                             ("carla.dias", "Lunch at noon?")):
            self.step(sender, f"send bruno.costa {text!r}",
                      lambda s=sender, t=text: self.agents[s].send("bruno.costa", t,
                                                                   queue=False),
                      lambda r: f"acknowledged by Bruno's session (seq {r.seq}, "
                                f"{r.round_trip * 1000:.1f} ms round trip)")
            line = self.step("bruno.costa", "the message arrives in agora listen",
                             lambda: listener.expect(r'"from"', timeout=10),
                             lambda m: _message_line(m.string))
            got = json.loads(line.string)
            self.check("bruno.costa", "sender and text are what was sent",
                       (got["from"], got["text"]) == (sender, text),
                       f"from {got['from']}, checked against the broker's directory")
        receipt = self.step("ana.lima", "send carla.dias (not listening) a note",
                            lambda: self.agents["ana.lima"].send("carla.dias", "Call me."),
                            lambda r: f"left in the broker's mailbox, still encrypted "
                                      f"({r.reason})")
        self.check("ana.lima", "the note is queued, not lost", receipt.queued,
                   "Carla sees it at her next agora listen")
        self.step("bruno.costa", "stop agora listen (SIGTERM: logs out)",
                  lambda: listener.terminate(), lambda code: f"exit code {code}")

    def auction(self) -> None:
        self.out.heading("Auction (UDP multicast + PUB mirror, encrypted and signed)")
        username, home, password = self._service_principal("Auctioneer", Level.PUBLIC)
        items = self.workdir / "items"
        shutil.copytree(SAMPLE_ITEMS, items)
        group, port = random_group(), free_udp_port()
        _, match = self.step(
            username, "agora auctioneer start (its own process)",
            lambda: self.start_process(
                "auctioneer", "start", "--items", str(items), "--home", str(home),
                "--broker", self.broker_endpoint, "--data-dir", str(self.workdir / "auction"),
                "--bind", "tcp://127.0.0.1:0", "--pub", "tcp://127.0.0.1:0", "--group", group,
                "--port", str(port), "--soft-close", "3", "--pause", "0.5",
                ready=r"ready at (\S+) pub (\S+) group (\S+)", password=password),
            lambda r: f"requests {r[1].group(1)}, multicast {r[1].group(3)}, "
                      f"mirror {r[1].group(2)}")
        endpoint = match.group(1)
        bidders = ("ana.lima", "bruno.costa", "carla.dias")
        key = auctioneer_key(self.agents["ana.lima"], username)  # from the broker's directory
        clients = {u: AuctionClient(self.agents[u].private_key, key, endpoint, self.context)
                   for u in bidders}
        for u in bidders:
            self.step(u, "join: key checked with the broker, group key received",
                      clients[u].join,
                      lambda j: f"group {j.group}:{j.port}, answer authenticated (Box)")
        stranger = AuctionClient(PrivateKey.generate(), key, endpoint, self.context)
        self.refused("stranger", "join with an unregistered key", stranger.join,
                     ErrorCode.UNKNOWN_USER)
        stranger.close()
        watchers = [_Watcher(self.agents[u].private_key, key, endpoint, self.context, u)
                    for u in bidders]
        try:
            lamp = self._open_item(clients["ana.lima"], "brass-lamp")
            self._bid(clients, "ana.lima", lamp, 1250)
            self._bid(clients, "bruno.costa", lamp, 1300)
            self.refused("carla.dias", "bid 13.10 on brass-lamp",
                         lambda: clients["carla.dias"].bid(lamp["id"], 1310),
                         ErrorCode.BID_TOO_LOW)
            self._sleep_until(clients["ana.lima"], lamp["id"], before_close=2.0)
            answer = self._bid(clients, "bruno.costa", lamp, 1400)
            self.check("bruno.costa", "soft close: the late bid extends the auction",
                       answer.get("extended") is True, "closing time moved by 3 s, "
                       "announced to all")
            atlas = self._open_item(clients["ana.lima"], "atlas-1920")
            self._bid(clients, "carla.dias", atlas, 2000)
            self._bid(clients, "ana.lima", atlas, 3600)
            for w in watchers:
                w.thread.join(timeout=30)
            for item_id in ("brass-lamp", "atlas-1920"):
                seen = {w.username: w.result(item_id) for w in watchers}
                outcomes = {json.dumps(r, sort_keys=True) for r in seen.values()}
                first = next(iter(seen.values()))
                self.check("everyone", f"winner of {item_id} announced; all agents agree",
                           len(outcomes) == 1 and first is not None,
                           _result_text(first) + f" (seen by {', '.join(seen)})")
        finally:
            for w in watchers:
                w.stop.set()
                w.thread.join(timeout=5)
            for c in clients.values():
                c.close()

    def _open_item(self, client: AuctionClient, item_id: str) -> dict[str, Any]:
        def wait() -> dict[str, Any]:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                state = client.snapshot()["state"]
                if (state.get("item") or {}).get("id") == item_id:
                    return dict(state["item"], closes_at=state["closes_at"])
                time.sleep(0.1)
            raise TimeoutError(f"item {item_id} did not open")
        return self.step("auctioneer", f"item {item_id} opens", wait,
                         lambda i: f"{i['title']}, from {format_money(i['start_cents'])}")

    def _bid(self, clients: dict[str, AuctionClient], bidder: str, item: dict[str, Any],
             cents: int) -> dict[str, Any]:
        return self.step(bidder, f"bid {format_money(cents)} on {item['id']}",
                         lambda: clients[bidder].bid(item["id"], cents),
                         lambda a: "accepted (stored, then acknowledged)")

    def _sleep_until(self, client: AuctionClient, item_id: str, before_close: float) -> None:
        state = client.snapshot()["state"]
        if (state.get("item") or {}).get("id") == item_id:
            time.sleep(max(0.0, min(10.0, state["closes_at"] - before_close - time.time())))

    def token_replay(self) -> None:
        self.out.heading("A stolen token")
        bruno = self.agents["bruno.costa"]
        stolen = self.step("thief", "copy Bruno's credentials file (and his password)",
                           bruno.file.reload, lambda c: "holds TOKEN_n")
        self.step("bruno.costa", "log in again (token rotates to TOKEN_n+1)", bruno.login,
                  lambda i: f"session {i.session}")
        thief = Agent(self.workdir / "thief", broker=self.broker_endpoint, context=self.context)
        self.agents["thief"] = thief
        shutil.copytree(bruno.home, thief.home)
        thief.unlock(PASSWORDS["bruno.costa"])
        thief.file.save(stolen)
        self.refused("thief", "log in with the stolen, now old, token", thief.login,
                     ErrorCode.TOKEN_REUSED)
        self.refused("bruno.costa", "use his session after the reuse", bruno.whoami,
                     ErrorCode.FLAGGED)
        store, _ = open_store(self.workdir / "broker")
        row = store.get("bruno.costa")
        store.db.close()
        self.check("operator", "agora admin list shows Bruno flagged", bool(row["flagged"]),
                   f"flagged: {row['flagged']}")


@contextlib.contextmanager
def workspace(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    path = Path(tempfile.mkdtemp(prefix="agora-demo-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_demo(json_out: bool = False, keep: Path | None = None) -> bool:
    """Run the whole demo; True if every step did what it should."""
    transcript = Transcript(json_out)
    started = time.monotonic()
    with workspace(keep) as workdir:
        demo = Demo(workdir, transcript)
        try:
            demo.run()
        except DemoFailed as exc:
            transcript.finish(False, str(exc), time.monotonic() - started)
            return False
        finally:
            demo.close()
    transcript.finish(True, "every step did what it should", time.monotonic() - started)
    return True


class _Watcher:
    """One collaborator's watcher of the announcements, in a thread of its own."""

    def __init__(self, private_key: PrivateKey, auctioneer_public_key: bytes, endpoint: str,
                 context: zmq.Context, username: str) -> None:
        self.username = username
        self.stop = threading.Event()
        self.results: list[dict[str, Any]] = []
        self.error: str | None = None
        self._args = (private_key, auctioneer_public_key, endpoint, context)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        client = AuctionClient(*self._args)  # sockets made and used in this thread only
        try:
            watcher = AuctionWatcher(client, client.join())
            watcher.stop = self.stop
            try:
                view = watcher.serve(until=lambda v: len(v.results) >= 2, timeout=40)
                self.results = list(view.results)
            finally:
                watcher.close()
        except AgoraError as exc:
            self.error = str(exc)
        finally:
            client.close()

    def result(self, item_id: str) -> dict[str, Any] | None:
        for r in self.results:
            if r.get("item") == item_id:
                return {k: r.get(k) for k in ("item", "sold", "winner", "price_cents")}
        return None


def _message_line(line: str) -> str:
    msg = json.loads(line)
    return f"{msg['from']}: {msg['text']!r}"


def _result_text(result: dict[str, Any] | None) -> str:
    if not result:
        return "no result seen"
    if result.get("sold"):
        return f"sold to {result['winner']} for {format_money(result['price_cents'])}"
    return "not sold"
