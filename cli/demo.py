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
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zmq

from agents import Agent
from agora.errors import AgoraError, RemoteError
from agora.protocol import ErrorCode, Level
from broker.server import open_store
from cli.processes import AgoraProcess, agora_env

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
        self.console.print(f"[dim]{event.step:>3}[/] [bold cyan]{actor:<12}[/] {action}")
        self.console.print(f"{'':16}[{colour}]{mark}[/] {detail}".rstrip())

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
            self.out.record(actor, action, "failed", str(exc))
            raise DemoFailed(f"step {len(self.out.events)} '{action}' failed: {exc}") from None
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
        self.out.record(actor, action, "failed", detail)
        raise DemoFailed(f"step {len(self.out.events)} '{action}' failed: {detail}")

    def check(self, actor: str, action: str, condition: bool, detail: str) -> None:
        if not condition:
            self.out.record(actor, action, "failed", detail)
            raise DemoFailed(f"step {len(self.out.events)} '{action}' failed: {detail}")
        self.out.record(actor, action, "ok", detail)

    def start_process(self, *args: str, ready: str, timeout: float = 20) -> tuple[
            AgoraProcess, Any]:
        proc = AgoraProcess(list(args), agora_env())
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
        self.token_replay()

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
            info = self.step(username, "log in (password opens credentials, token rotates)",
                             lambda a=agent, u=username: a.login(PASSWORDS[u]),
                             lambda i: f"session {i.session}, listening on port {i.port}")
            me = agent.whoami()
            self.check(username, "whoami: the broker's view", me["level"] == info.level,
                       f"level {me['level']} ({me['level_name']}), session {me['session']}")

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
