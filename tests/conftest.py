"""Shared fixtures.

- ``fast_password_kdf`` (every test): credentials files written in this process use
  Argon2id at its minimum cost; ``@pytest.mark.real_kdf`` keeps the real one.
- ``zctx``: one ZeroMQ context per test, destroyed with linger 0.
- ``broker``: a real BrokerServer on 127.0.0.1 with an OS-chosen port, in a thread, with a
  real SQLite file; ``broker.enroll(...)`` enrolls through a *separate* connection, as
  ``agora admin`` does, and ``broker.agent(...)`` gives a registered, logged-in Agent.
- ``procs``: starts real ``agora`` processes and kills every one at teardown, even when the
  test fails; ``run_agora(...)`` runs a one-shot ``agora`` command with a time bound.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import nacl.pwhash
import pytest
import zmq

from agents import Agent
from agora.protocol import Level, PrincipalKind
from broker.server import BrokerServer
from broker.store import Store
from cli.processes import AgoraProcess, agora_command, agora_env

__all__ = ["AgoraProcess", "agora_command", "agora_env", "run_agora", "PASSWORD"]

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"


#: No test may run longer than this (seconds); a hung socket or process fails the test
#: instead of hanging CI. Override per test with @pytest.mark.time_limit(N).
DEFAULT_TIME_LIMIT = 120


def pytest_configure(config):
    config.addinivalue_line("markers", "time_limit(seconds): this test's own time bound")
    config.addinivalue_line("markers", "real_kdf: credentials files at the real Argon2id cost")
    # A shell without job control starts background jobs with SIGINT ignored, and an ignored
    # signal stays ignored in every process started from there: the tests that press Ctrl-C
    # on a real agora process would then test the shell, not agora. A handled signal is
    # reset to its default in a child, so the children see SIGINT as a terminal sends it.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def time_limit(request):
    marker = request.node.get_closest_marker("time_limit")
    seconds = marker.args[0] if marker else DEFAULT_TIME_LIMIT

    def expired(signum, frame):
        raise TimeoutError(f"test exceeded its time limit of {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def fast_password_kdf(request, monkeypatch):
    """Credentials files written in this process use Argon2id at its minimum cost.

    At the real ("interactive") cost each derivation takes about 70 ms and 64 MiB, and the
    in-process tests make hundreds of them (every agent registers and logs in): about
    a sixth of the suite's time. As Django's documentation advises a fast password hasher
    for tests, these use the minimum; each file's header records its cost, so such files
    open like any other. Real ``agora`` processes (the process tests) keep the real cost, and
    tests marked ``real_kdf`` do too (one checks that a new file records it).
    """
    if request.node.get_closest_marker("real_kdf") is None:
        monkeypatch.setattr("agents.credentials.KDF_OPSLIMIT",
                            nacl.pwhash.argon2id.OPSLIMIT_MIN)
        monkeypatch.setattr("agents.credentials.KDF_MEMLIMIT",
                            nacl.pwhash.argon2id.MEMLIMIT_MIN)


@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def raw_dealer(zctx: zmq.Context, endpoint: str, timeout_ms: int = 3000) -> zmq.Socket:
    """A plain DEALER (no agora code in it) connected to ``endpoint``, for sending raw
    frames; a receive gives up after ``timeout_ms``."""
    sock = zctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
    sock.connect(endpoint)
    return sock


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

    def bind(self, service: str, username: str, level: int) -> None:
        """Bind ``service`` to a service principal, as `agora admin services bind` does, and
        wait (bounded) until the running broker has the record."""
        self.admin.bind_service(service, username, Level(level), time.time())
        deadline = time.monotonic() + 5
        while (username not in self.server.core.workers.bindings.get(service, {}).get(
                "usernames", []) and time.monotonic() < deadline):
            time.sleep(0.02)

    def wait_for_store_sync(self) -> None:
        """Let the broker notice an admin change (it polls SQLite's data_version)."""
        time.sleep(0.4)

    def pause(self) -> None:
        """Stop the broker's loop, its socket and sessions kept: it reads and answers nothing
        (a hung or very slow broker) until :meth:`resume`."""
        self.server.stop.set()
        self.thread.join(timeout=5)

    def resume(self) -> None:
        """Serve again after :meth:`pause`, on the same socket, with the same sessions."""
        self.server.stop.clear()
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        for agent in self.agents:
            agent.close()
        self.pause()
        self.server.close()
        self.admin.db.close()


@pytest.fixture
def broker(tmp_path, zctx):
    harness = BrokerHarness(tmp_path / "broker", zctx)
    yield harness
    harness.stop()


# -- real processes ------------------------------------------------------------------------

def run_agora(*args: str, env: dict[str, str] | None = None, input: str | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a one-shot ``agora`` command, bounded by ``timeout``."""
    return subprocess.run([*agora_command(), *args], env=env or agora_env(), input=input,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def procs():
    started: list[AgoraProcess] = []

    def start(*args: str, env: dict[str, str]) -> AgoraProcess:
        proc = AgoraProcess(list(args), env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
