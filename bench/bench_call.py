"""Benchmark: an authenticated service call against a raw pyzmq round trip, same run.

    PYTHONPATH=. python bench/bench_call.py [--seconds 1.5]

Starts, each in its own process, a raw ROUTER echo server and a real broker
(``python -m cli broker start``), then from this process measures round trips per second:

1. raw:     REQ -> ROUTER -> REQ, no crypto, no JSON (the floor our protocol sits on),
            once with one frame and once with an agora request's frames (count and sizes);
2. echo:    ``Agent.call("echo")`` through the broker: sealed session request, counter
            check, level check, buffered audit, sealed reply;
3. worker:  ``Agent.call`` of a service served by an ``agora worker run`` process: client
            -> broker -> worker -> broker -> client, sealed on both legs.

Bounded: each phase runs for --seconds, every process is killed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agents import Agent  # noqa: E402
from agora.protocol import Command, Level, PrincipalKind, SessionOp  # noqa: E402
from agora.wire import request_frames, seal_session_request  # noqa: E402
from broker.store import Store  # noqa: E402

PASSWORD = "bench password"  # noqa: S105 - a throwaway principal in a temp directory
PAYLOAD = {"text": "hello, agora"}

RAW_SERVER = """
import sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER); s.setsockopt(zmq.LINGER, 0)
port = s.bind_to_random_port("tcp://127.0.0.1")
print(port, flush=True)
while s.poll(60000):  # exits by itself once idle for a minute
    s.send_multipart(s.recv_multipart())
"""


def echo(**args: object) -> dict:
    """Returns its arguments (the worker-served twin of the built-in echo)."""
    return args


def rate(fn, seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (after a short warm-up)."""
    for _ in range(50):
        fn()
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            fn()
        n += 100
    return n / (time.perf_counter() - start)


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, start_new_session=True)


def read_line(proc: subprocess.Popen, what: str) -> str:
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        raise SystemExit(f"{what} did not start")
    return line.strip()


def enroll(data_dir: Path, name: str, kind: PrincipalKind, env: dict[str, str],
           endpoint: str, home: Path, context: zmq.Context) -> Agent:
    store = Store(data_dir / "broker.db")
    username, otid = store.enroll(name, Level.CONFIDENTIAL, time.time(), kind)
    store.db.close()
    fpr = env["_FINGERPRINT"]
    agent = Agent(home, broker=endpoint, context=context)
    agent.register(username, otid, fpr, PASSWORD)
    return agent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.5)
    opts = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="agora-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    env["PYTHONPATH"] = str(REPO)
    context = zmq.Context()
    procs: list[subprocess.Popen] = []
    # Killed by `timeout` or Ctrl-C: still run the finally below, which stops the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        raw_server = start([sys.executable, "-c", RAW_SERVER], env)
        procs.append(raw_server)
        raw_port = read_line(raw_server, "raw server")

        broker = start([sys.executable, "-m", "cli", "broker", "start", "--bind",
                        "tcp://127.0.0.1:0", "--data-dir", str(tmp / "broker")], env)
        procs.append(broker)
        ready = read_line(broker, "broker").split()
        endpoint, env["_FINGERPRINT"] = ready[4], ready[6]

        # A second broker with --quiet: the same work without a log line per request.
        quiet_broker = start([sys.executable, "-m", "cli", "broker", "start", "--quiet",
                              "--bind", "tcp://127.0.0.1:0", "--data-dir",
                              str(tmp / "quiet-broker")], env)
        procs.append(quiet_broker)
        quiet_ready = read_line(quiet_broker, "quiet broker").split()
        quiet_endpoint = quiet_ready[4]

        raw = context.socket(zmq.REQ)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(f"tcp://127.0.0.1:{raw_port}")
        body = json.dumps(PAYLOAD).encode()

        def raw_call() -> None:
            raw.send(body)
            raw.recv()

        def raw_framed_call() -> None:  # agora's frame count and sizes, no crypto or JSON
            raw.send_multipart(framed)
            raw.recv_multipart()

        client = enroll(tmp / "broker", "Bench Client", PrincipalKind.PERSON, env, endpoint,
                        tmp / "client", context)
        client.login()
        env_quiet = dict(env, _FINGERPRINT=quiet_ready[6])
        quiet_client = enroll(tmp / "quiet-broker", "Bench Client", PrincipalKind.PERSON,
                              env_quiet, quiet_endpoint, tmp / "quiet-client", context)
        quiet_client.login()
        worker_agent = enroll(tmp / "broker", "Bench Worker", PrincipalKind.SERVICE, env,
                              endpoint, tmp / "worker", context)
        worker_agent.close()
        worker = start([sys.executable, "-m", "cli", "worker", "run", "bench.bench_call:echo",
                        "--service", "bench.echo", "--level", "1", "--home", str(tmp / "worker"),
                        "--broker", endpoint], dict(env, AGORA_PASSWORD=PASSWORD))
        procs.append(worker)
        read_line(worker, "worker")
        assert client.call("echo", PAYLOAD) == PAYLOAD
        assert client.call("bench.echo", PAYLOAD) == PAYLOAD
        session = client.session
        assert session is not None
        framed = request_frames(Command.SESSION, session.sid, seal_session_request(
            session.box, 1, SessionOp.CALL, {"service": "echo", "args": PAYLOAD}))

        raw_rate = rate(raw_call, opts.seconds)
        framed_rate = rate(raw_framed_call, opts.seconds)
        echo_rate = rate(lambda: client.call("echo", PAYLOAD), opts.seconds)
        quiet_rate = rate(lambda: quiet_client.call("echo", PAYLOAD), opts.seconds)
        worker_rate = rate(lambda: client.call("bench.echo", PAYLOAD), opts.seconds)
        # Raw again at the end: the ratio should not hinge on what else the machine did.
        raw_rate = max(raw_rate, rate(raw_call, opts.seconds))

        print(f"raw pyzmq REQ->ROUTER round trip : {raw_rate:9.0f} /s")
        print(f"raw, agora's frames (no crypto)  : {framed_rate:9.0f} /s  "
              f"ratio {framed_rate / raw_rate:.2f}")
        print(f"authenticated echo via broker    : {echo_rate:9.0f} /s  "
              f"ratio {echo_rate / raw_rate:.2f} (target >= 0.80; a log line per request)")
        print(f"same, broker --quiet             : {quiet_rate:9.0f} /s  "
              f"ratio {quiet_rate / raw_rate:.2f}")
        print(f"call served by external worker   : {worker_rate:9.0f} /s  "
              f"ratio {worker_rate / raw_rate:.2f}")
        for c in (client, quiet_client):
            c.logout()
            c.close()
        raw.close(0)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        context.destroy(linger=0)


if __name__ == "__main__":
    main()
