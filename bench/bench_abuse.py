"""Abuse figures for a real broker process on loopback (issue 10). Run by hand, never in CI.

    python bench/bench_abuse.py audit   [--seconds 20]       junk-LOGIN flood: audit rows/bytes
    python bench/bench_abuse.py frames  [--seconds 10]       multi-frame flood: broker peak RSS
    python bench/bench_abuse.py idle    [--rounds 6]         rounds of 2,000 idle connections
    python bench/bench_abuse.py load    [--sessions 1000]    legitimate calls under a flood

Every mode starts its own broker (``agora broker start`` in a temporary directory, loopback,
OS-chosen port), is bounded in time and count, and stops it. ``--source DIR`` runs the broker
from another checkout (to measure the code before a fix with the same script).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agora.envelope import seal  # noqa: E402
from agora.protocol import Kind  # noqa: E402
from agora.wire import broker_key_request, login_context, request_header  # noqa: E402

PASSWORD = "bench password"  # noqa: S105 - a throw-away test principal


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Broker:
    """``agora broker start`` as a child process, from ``source`` (a checkout)."""

    def __init__(self, data_dir: Path, source: Path, extra: list[str] | None = None) -> None:
        self.data_dir, self.source = data_dir, source
        env = {**os.environ, "PYTHONPATH": str(source)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "broker", "start", "--data-dir", str(data_dir),
             "--bind", "tcp://127.0.0.1:0", "--quiet", *(extra or [])],
            cwd=source, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if "ready at" not in line:
            raise SystemExit(f"broker did not start: {line!r}")
        self.endpoint = line.split()[4]
        self.fingerprint = line.split()[-1]

    def admin(self, *args: str) -> str:
        env = {**os.environ, "PYTHONPATH": str(self.source)}
        return subprocess.run([sys.executable, "-m", "cli", "admin", *args, "--data-dir",
                               str(self.data_dir)], cwd=self.source, env=env, check=True,
                              capture_output=True, text=True, timeout=60).stdout

    def audit_figures(self) -> tuple[int, int]:
        import sqlite3
        db = sqlite3.connect(self.data_dir / "broker.db", timeout=10)
        rows = db.execute("select count(*) from audit").fetchone()[0]
        size = db.execute("select sum(pgsize) from dbstat where name like '%audit%'"
                          ).fetchone()[0] or 0
        db.close()
        return rows, size

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def junk_login() -> list[bytes]:
    """A stranger's LOGIN: a (forged-looking or random) username, an envelope under no key."""
    name = random.choice(["carol.dias\nlogin carol.dias ok", f"x{random.randrange(10**6):06d}"])
    header = request_header(Kind.LOGIN, login_context(name), int(time.time() * 1000))
    return [b"", name.encode(), seal(os.urandom(32), header, os.urandom(40))]


def flood(endpoint: str, seconds: float, make, window: int = 200, socks: int = 1) -> int:
    """Send ``make()`` messages for ``seconds`` from DEALERs, ``window`` in flight each."""
    ctx = zmq.Context()
    dealers = []
    for _ in range(socks):
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        # Bounded queue either way: with window 0 (messages that get no answer) the flooder
        # sends as fast as the broker takes them, never faster than its queue of 1,000.
        d.setsockopt(zmq.SNDHWM, 1000)
        d.connect(endpoint)
        dealers.append(d)
    sent = 0
    end = time.time() + seconds
    inflight = {id(d): 0 for d in dealers}
    while time.time() < end:
        for d in dealers:
            while d.poll(0, zmq.POLLIN):
                d.recv_multipart()
                inflight[id(d)] -= 1
            if window == 0 or inflight[id(d)] < window:
                try:
                    d.send_multipart(make(), zmq.NOBLOCK)
                    sent += 1
                    inflight[id(d)] += 1
                except zmq.Again:
                    d.poll(10, zmq.POLLOUT)
            else:
                d.poll(10, zmq.POLLIN)
    for d in dealers:
        d.close(0)
    ctx.term()
    return sent


def mode_audit(args, tmp: Path) -> dict:
    broker = Broker(tmp / "broker", args.source)
    try:
        time.sleep(0.5)
        rows0, bytes0 = broker.audit_figures()
        sent = flood(broker.endpoint, args.seconds, junk_login)
        time.sleep(1.5)  # let the broker flush its buffer
        rows1, bytes1 = broker.audit_figures()
        tail = broker.admin("audit", "-n", "5")
    finally:
        broker.stop()
    return {"sent": sent, "audit_rows_added": rows1 - rows0,
            "audit_bytes_added": bytes1 - bytes0, "audit_tail": tail}


def mode_frames(args, tmp: Path) -> dict:
    broker = Broker(tmp / "broker", args.source)
    frame = os.urandom(250 * 1024)

    def big() -> list[bytes]:
        return [b"", b"carol.dias", *([frame] * args.frames)]

    try:
        time.sleep(0.5)
        base = rss_mb(broker.proc.pid)
        peak = base
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, rss_mb(broker.proc.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        threads = [threading.Thread(target=flood, args=(broker.endpoint, args.seconds, big, 2))
                   for _ in range(args.parallel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(1)
        stop.set()
        sampler.join()
        end = rss_mb(broker.proc.pid)
    finally:
        broker.stop()
    return {"message_mb": round(len(frame) * args.frames / 2**20, 1),
            "parallel": args.parallel, "rss_base_mb": round(base, 1),
            "rss_peak_mb": round(peak, 1), "rss_after_mb": round(end, 1)}


def mode_idle(args, tmp: Path) -> dict:
    broker = Broker(tmp / "broker", args.source)
    rounds = []
    try:
        time.sleep(0.5)
        base = rss_mb(broker.proc.pid)
        for _ in range(args.rounds):
            ctx = zmq.Context()
            ctx.set(zmq.MAX_SOCKETS, args.connections + 100)
            socks = []
            for _ in range(args.connections):
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.LINGER, 0)
                s.connect(broker.endpoint)
                # One message each, so the ROUTER (and the core) learn the identity.
                s.send_multipart([b"", *broker_key_request()])
                socks.append(s)
            for s in socks:
                s.poll(2000, zmq.POLLIN)
            time.sleep(0.5)
            held = rss_mb(broker.proc.pid)
            for s in socks:
                s.close(0)
            ctx.term()
            time.sleep(3.0)
            rounds.append({"held_mb": round(held, 1),
                           "after_close_mb": round(rss_mb(broker.proc.pid), 1)})
    finally:
        broker.stop()
    return {"connections": args.connections, "rss_base_mb": round(base, 1), "rounds": rounds}


def mode_load(args, tmp: Path) -> dict:
    """``--sessions`` live sessions (over ``--principals`` principals: at most 32 each) make
    ``echo`` calls while a second client floods; p99 of the calls, broker RSS, audit rows."""
    sys.path.insert(0, str(args.source))
    from agents import Agent
    from agora.protocol import Level
    from broker.store import Store

    broker = Broker(tmp / "broker", args.source)
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, 4 * args.principals + 100)
    try:
        store = Store(tmp / "broker" / "broker.db")
        enrolled = [store.enroll(f"Load Tester {i}", Level(3), time.time())
                    for i in range(args.principals)]
        store.db.close()
        fingerprint = broker.fingerprint
        openers, sessions = [], []
        per = -(-args.sessions // args.principals)
        for i, (username, otid) in enumerate(enrolled):
            agent = Agent(tmp / "homes" / username, broker=broker.endpoint, context=ctx,
                          timeout=5.0, retries=1)
            agent.register(username, otid, fingerprint, PASSWORD)
            openers.append(agent)
            for _ in range(min(per, args.sessions - len(sessions))):
                agent.login(listen=False)  # credentials open since register: no Argon2id
                sessions.append((agent, agent.session))
            print(f"  {i + 1} principals, {len(sessions)} sessions", file=sys.stderr)
        rows0, bytes0 = broker.audit_figures()
        base = rss_mb(broker.proc.pid)
        peak = base
        stop = threading.Event()
        frame = os.urandom(250 * 1024)

        def junk() -> list[bytes]:
            if random.random() < 0.5:
                return junk_login()
            return [b"", *(os.urandom(random.randrange(1, 64))
                           for _ in range(random.randrange(1, 6)))]

        def oversized() -> list[bytes]:
            return [b"", b"carol.dias", *([frame] * 40)]

        sent = [0, 0]

        def flooder(i: int, make) -> None:
            # No window: junk gets no answer (dropped, or the connection shut), and a window
            # would stall the flood on answers that never come. Oversized messages go on
            # their own sockets: the broker shuts each such connection, which would otherwise
            # throttle the small junk too.
            sent[i] = flood(broker.endpoint, args.seconds + 2, make, 0, socks=2)

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, rss_mb(broker.proc.pid))
                time.sleep(0.05)

        threads = [threading.Thread(target=flooder, args=(0, junk)),
                   threading.Thread(target=flooder, args=(1, oversized)),
                   threading.Thread(target=sample)]
        for t in threads:
            t.start()
        latencies, failures, used = [], 0, set()
        end = time.time() + args.seconds
        while time.time() < end:
            agent, session = random.choice(sessions)
            agent.session = session
            used.add(session.sid)
            t0 = time.perf_counter()
            try:
                agent.call("echo", {"n": 1})
                latencies.append(time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                failures += 1
                if failures < 5:
                    print(f"  call failed: {exc}", file=sys.stderr)
        stop.set()
        for t in threads:
            t.join()
        time.sleep(1.5)
        rows1, bytes1 = broker.audit_figures()
        end_rss = rss_mb(broker.proc.pid)
        for agent in openers:
            agent.close()
    finally:
        broker.stop()
        ctx.destroy(linger=0)
    latencies.sort()
    return {"sessions": len(sessions), "principals": args.principals,
            "sessions_used": len(used), "calls": len(latencies), "failures": failures,
            "flood_junk_messages": sent[0], "flood_oversized_messages": sent[1],
            "p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2)
            if latencies else None,
            "rss_base_mb": round(base, 1), "rss_peak_mb": round(peak, 1),
            "rss_end_mb": round(end_rss, 1),
            "audit_rows_added": rows1 - rows0, "audit_bytes_added": bytes1 - bytes0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["audit", "frames", "idle", "load"])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--frames", type=int, default=200, help="frames per message")
    parser.add_argument("--parallel", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--principals", type=int, default=40,
                        help="the sessions are spread over this many (at most 32 each)")
    parser.add_argument("--source", type=Path, default=REPO)
    args = parser.parse_args()
    args.seconds = min(args.seconds, 120)  # bounded, whatever is asked
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Thousands of connections need file descriptors, here and in the broker (inherited).
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    with tempfile.TemporaryDirectory() as tmp:
        result = globals()[f"mode_{args.mode}"](args, Path(tmp))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
