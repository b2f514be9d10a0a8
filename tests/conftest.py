"""Shared fixtures.

- ``zctx``: one ZeroMQ context per test, destroyed with linger 0.
- ``broker``: a real BrokerServer on 127.0.0.1 with an OS-chosen port, in a thread, with a
  real SQLite file; ``broker.enroll(...)`` enrolls through a *separate* connection, as
  ``agora admin`` does, and ``broker.agent(...)`` gives a registered, logged-in Agent.
- ``procs``: starts real ``agora`` processes and kills every one at teardown, even when the
  test fails; ``run_agora(...)`` runs a one-shot ``agora`` command with a time bound.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from agents import Agent
from agora.protocol import Level, PrincipalKind
from broker.server import BrokerServer
from broker.store import Store

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"


@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


class BrokerHarness:
    def __init__(self, data_dir: Path, context: zmq.Context) -> None:
        self.data_dir = data_dir
        self.context = context
        self.server = BrokerServer(data_dir, "tcp://127.0.0.1:0", context)
        self.endpoint = self.server.endpoint
        self.fingerprint = self.server.keys.fingerprint
        self.admin = Store(data_dir / "broker.db")  # a second connection, like `agora admin`
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.agents: list[Agent] = []
        self.thread.start()

    def enroll(self, name: str, level: int = 3,
               kind: PrincipalKind = PrincipalKind.PERSON) -> tuple[str, str]:
        return self.admin.enroll(name, Level(level), time.time(), kind)

    def agent(self, name: str, level: int = 3, password: str = PASSWORD,
              kind: PrincipalKind = PrincipalKind.PERSON, login: bool = True,
              timeout: float = 2.0) -> Agent:
        """A registered (and by default logged-in) agent with its own home directory."""
        username, otid = self.enroll(name, level, kind)
        agent = Agent(self.data_dir.parent / f"home-{username}", broker=self.endpoint,
                      context=self.context, timeout=timeout, retries=2)
        self.agents.append(agent)
        agent.register(username, otid, self.fingerprint, password)
        if login:
            agent.login(password)
        return agent

    def wait_for_store_sync(self) -> None:
        """Let the broker notice an admin change (it polls SQLite's data_version)."""
        time.sleep(0.4)

    def stop(self) -> None:
        for agent in self.agents:
            agent.close()
        self.server.stop.set()
        self.thread.join(timeout=5)
        self.server.close()
        self.admin.db.close()


@pytest.fixture
def broker(tmp_path, zctx):
    harness = BrokerHarness(tmp_path / "broker", zctx)
    yield harness
    harness.stop()


# -- real processes ------------------------------------------------------------------------

def agora_command() -> list[str]:
    """The installed ``agora`` script beside this Python, else ``python -m cli``."""
    script = Path(sys.executable).with_name("agora")
    if script.exists():
        return [str(script)]
    found = shutil.which("agora")
    return [found] if found and os.environ.get("VIRTUAL_ENV") else [sys.executable, "-m", "cli"]


def agora_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["COLUMNS"] = "200"  # keep Rich from wrapping lines the tests read
    env.update(extra)
    return env


def run_agora(*args: str, env: dict[str, str] | None = None, input: str | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*agora_command(), *args], env=env or agora_env(), input=input,
                          capture_output=True, text=True, timeout=timeout, check=False)


class Proc:
    """A long-running ``agora`` process whose stdout lines are read in the background."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            [*agora_command(), *args], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._pump, args=(self.popen.stdout, self.lines.put),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.popen.stderr, self.stderr_lines.append),
                         daemon=True).start()

    @staticmethod
    def _pump(stream, sink) -> None:
        for line in stream:
            sink(line.rstrip("\n"))

    def expect(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        """Wait for a stdout line matching ``pattern``; fail the test after ``timeout``."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"{self.args[:2]}: no line matching {pattern!r} in {timeout}s; "
                             f"stdout={seen[-10:]} stderr={self.stderr_lines[-10:]}")

    def terminate(self, timeout: float = 10) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.wait(5)

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


@pytest.fixture
def procs():
    started: list[Proc] = []

    def start(*args: str, env: dict[str, str]) -> Proc:
        proc = Proc(list(args), env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
