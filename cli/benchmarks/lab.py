"""The bench's workshop: a temporary directory, real processes, enrolled agents, clean-up.

Everything runs on loopback with OS-chosen ports. Child processes start in their own
process group (so a child's children die with it) and :meth:`Lab.close` stops every group
it started: SIGTERM, a bounded wait, then SIGKILL. The bench command calls it from a
``finally``, and turns SIGTERM into an exception, so Ctrl-C and ``kill`` clean up too.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

from agents import Agent
from agora.protocol import Level, PrincipalKind
from broker.store import Store
from cli.processes import agora_command, agora_env

PASSWORD = "agora bench password"  # noqa: S105 - throwaway principals in a temp directory
#: How long a child may take to say it is ready.
READY_TIMEOUT = 30.0
#: How long the children together get to exit after SIGTERM; then SIGKILL.
STOP_TIMEOUT = 5.0


class Child:
    """A process in its own group whose stdout lines are collected in the background."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.popen = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.errors: list[str] = []
        threading.Thread(target=self._pump, args=(self.popen.stdout, self.lines.put),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.popen.stderr, self.errors.append),
                         daemon=True).start()

    @staticmethod
    def _pump(stream, sink) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            sink(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def expect(self, pattern: str, timeout: float = READY_TIMEOUT) -> re.Match[str]:
        """The first stdout line matching ``pattern``; RuntimeError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                if self.popen.poll() is not None:
                    break
                continue
            match = re.search(pattern, line)
            if match:
                return match
        tail = "; ".join(self.errors[-3:]) or "no output"
        raise RuntimeError(f"{self.name} did not start ({tail})")

    def terminate(self) -> None:
        """SIGTERM to the whole group (the process and anything it started)."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def wait_or_kill(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the process to exit, then SIGKILL its group."""
        try:
            self.popen.wait(max(0.0, timeout))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(5)


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class Broker:
    """A real ``agora broker start --quiet`` process and a way to enroll on it."""

    def __init__(self, lab: Lab, name: str, extra: list[str] | None = None) -> None:
        self.lab = lab
        self.data_dir = lab.root / name
        self.child = lab.spawn(name, [*agora_command(), "broker", "start", "--quiet",
                                      "--bind", "tcp://127.0.0.1:0",
                                      "--data-dir", str(self.data_dir), *(extra or [])])
        self._ready: re.Match[str] | None = None

    def _wait(self) -> re.Match[str]:
        if self._ready is None:
            self._ready = self.child.expect(r"ready at (\S+) fingerprint (\S+)")
        return self._ready

    @property
    def endpoint(self) -> str:
        return self._wait().group(1)

    @property
    def fingerprint(self) -> str:
        return self._wait().group(2)

    def enroll(self, name: str, kind: PrincipalKind = PrincipalKind.PERSON) -> tuple[str, str]:
        """Enroll through a second connection to the broker's database, as ``agora admin``."""
        self._wait()
        store = Store(self.data_dir / "broker.db")
        try:
            return store.enroll(name, Level.CONFIDENTIAL, time.time(), kind)
        finally:
            store.db.close()

    def bind(self, service: str, username: str, level: Level) -> None:
        """Let ``username`` offer ``service`` (as `agora admin services bind` does)."""
        store = Store(self.data_dir / "broker.db")
        try:
            store.bind_service(service, username, level, time.time())
        finally:
            store.db.close()

    def agent(self, name: str, kind: PrincipalKind = PrincipalKind.PERSON,
              login: bool = True, listen: bool = False, homes: Path | None = None) -> Agent:
        """A registered agent (its own home under ``homes``); logged in unless told
        otherwise."""
        username, otid = self.enroll(name, kind)
        agent = Agent((homes or self.lab.root / "homes") / username, broker=self.endpoint,
                      context=self.lab.context, timeout=5.0, retries=1)
        self.lab.agents.append(agent)
        agent.register(username, otid, self.fingerprint, PASSWORD)
        if login:
            agent.login(listen=listen)  # the file is open since register: no Argon2id
        return agent


class Lab:
    def __init__(self, keep: Path | None = None) -> None:
        self.root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="agora-bench-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep is not None
        self.context = zmq.Context()
        self.children: list[Child] = []
        self.agents: list[Agent] = []
        self.env = agora_env(AGORA_PASSWORD=PASSWORD)
        self._memory_dir: Path | None = None

    @property
    def memory_dir(self) -> Path:
        """A directory in memory (/dev/shm) when there is one, else in the lab: for files
        whose fsync is not what a scenario measures. Removed with the lab."""
        if self._memory_dir is None:
            shm = Path("/dev/shm")  # noqa: S108 - a private mkdtemp inside it, removed at close
            base = shm if shm.is_dir() and os.access(shm, os.W_OK) else self.root
            self._memory_dir = Path(tempfile.mkdtemp(prefix="agora-bench-", dir=base))
        return self._memory_dir

    def spawn(self, name: str, args: list[str]) -> Child:
        child = Child(name, args, self.env)
        self.children.append(child)
        return child

    def raw(self, name: str, *args: str) -> Child:
        """A raw baseline server (``python -m cli.benchmarks.raw ...``)."""
        return self.spawn(name, [sys.executable, "-m", "cli.benchmarks.raw", *args])

    def close(self) -> None:
        for agent in self.agents:
            try:
                agent.close()
            except Exception:  # noqa: S110 - clean-up goes on whatever one agent says
                pass
        # Newest first: the worker and the auctioneer log out while their broker still runs.
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in reversed(self.children):
            child.terminate()
            child.wait_or_kill(deadline - time.monotonic())
        self.context.destroy(linger=0)
        if self._memory_dir is not None:
            shutil.rmtree(self._memory_dir, ignore_errors=True)
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
