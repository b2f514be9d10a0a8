"""The broker behind its real ROUTER socket: bad traffic, restarts, operator changes, logs."""

from __future__ import annotations

import errno
import logging
import os
import random
import time

import pytest
import zmq

from agents import Agent
from agora.crypto import b64
from agora.envelope import Header, peek, seal, timestamp_counter
from agora.errors import (
    BrokerUnreachable,
    MessageTooLarge,
    RemoteError,
    UnauthenticatedRefusal,
)
from agora.protocol import MAX_MESSAGE_SIZE, Channel, ErrorCode, Kind, Sender
from agora.wire import (
    broker_key_request,
    encode_call,
    login_context,
    open_to_worker,
    raise_if_clear_error,
    register_context,
    request_header,
    seal_session_request,
    seal_worker_message,
)
from broker.server import BrokerServer
from tests.conftest import PASSWORD, raw_dealer


def test_broker_survives_hundreds_of_random_and_mutated_frames(broker, zctx):
    agent = broker.agent("Ana Lima")
    rng = random.Random(99)
    key = os.urandom(32)
    samples = [
        [b"ana.lima", seal(os.urandom(32), request_header(
            Kind.LOGIN, login_context("ana.lima"), timestamp_counter(time.time())), bytes(35))],
        [seal_session_request(os.urandom(32), agent.session.sid, 10**6, Kind.CALL,
                              encode_call("echo", {"n": 1}))],
        [key, seal(os.urandom(32), request_header(Kind.REGISTER, register_context(key),
                                                  timestamp_counter(time.time())), bytes(80))],
        broker_key_request(),
    ]
    sock = raw_dealer(zctx, broker.endpoint, 2000)
    for _ in range(300):
        frames = [bytearray(f) for f in rng.choice(samples)]
        for _ in range(rng.randint(0, 3)):
            i = rng.randrange(len(frames))
            if frames[i]:
                frames[i][rng.randrange(len(frames[i]))] ^= 0xFF
            else:
                frames[i] = bytearray(os.urandom(5))
        if rng.random() < 0.3:
            frames = [bytearray(os.urandom(rng.randint(0, 40))) for _ in range(rng.randint(1, 6))]
        sock.send_multipart([b"", *map(bytes, frames)])
    # Messages without the empty delimiter, and an empty message, are dropped silently.
    sock.send_multipart([b"no delimiter"])
    sock.send(b"")
    sock.close(0)
    # The agent's own session still works, and a fresh login too.
    assert agent.whoami()["username"] == "ana.lima"
    other = broker.agent("Bob Stone")
    assert other.whoami()["username"] == "bob.stone"


def test_oversized_message_is_dropped_and_broker_keeps_serving(broker, zctx):
    agent = broker.agent("Ana Lima")
    sock = raw_dealer(zctx, broker.endpoint, 2000)
    sock.send_multipart([b"", broker_key_request()[0] + bytes(MAX_MESSAGE_SIZE + 1)])
    with pytest.raises(zmq.Again):
        sock.recv_multipart()  # libzmq dropped the connection; no reply
    sock.close(0)
    assert agent.call("echo", {"still": "here"}) == {"still": "here"}


def test_agent_refuses_to_send_oversized_request(broker):
    agent = broker.agent("Ana Lima")
    with pytest.raises(MessageTooLarge):
        agent.call("echo", {"blob": "x" * MAX_MESSAGE_SIZE})


def test_broker_error_reply_for_unknown_kind_over_socket(broker, zctx):
    sock = raw_dealer(zctx, broker.endpoint, 2000)
    request = Header(Channel.CLIENT, 0x66, Sender.CLIENT, bytes(range(16)), 7)
    sock.send_multipart([b"", request.pack()])
    empty, reply = sock.recv_multipart()
    header = peek(reply)
    # A clear ERROR that echoes the request's context and counter.
    assert (header.kind, header.sender, header.context, header.counter) == (
        Kind.ERROR, Sender.BROKER, bytes(range(16)), 7)
    with pytest.raises(RemoteError, match="unknown request kind") as err:
        raise_if_clear_error(reply)
    assert err.value.code is ErrorCode.BAD_REQUEST and not err.value.authenticated
    sock.close(0)


def test_worker_channel_messages_carry_no_delimiter_and_others_are_dropped(broker, zctx):
    """PROTOCOL.md 4.3: a worker's DEALER sends [envelope] on channel WORKER and gets the
    same layout back; a WORKER message with the delimiter, or a client one without, is
    dropped without a reply (the socket's next message is still answered)."""
    sid = os.urandom(16)
    ready = seal_worker_message(os.urandom(32), sid, 1, Sender.WORKER, Kind.READY,
                                {"service": "upper", "level": 1})
    sock = raw_dealer(zctx, broker.endpoint, 2000)
    sock.send(seal_session_request(os.urandom(32), sid, 1, Kind.CALL, encode_call("echo", {})))
    sock.send_multipart([b"", ready])
    sock.send(ready)
    frames = sock.recv_multipart()
    assert len(frames) == 1  # the answer to the last one only, without a delimiter
    with pytest.raises(UnauthenticatedRefusal) as err:
        open_to_worker(os.urandom(32), frames[0], sid)
    assert err.value.code == "unknown-session"
    assert sock.poll(300) == 0
    sock.close(0)


def test_unreachable_broker_gives_clear_error_not_a_hang(tmp_path, zctx):
    agent = Agent(tmp_path / "a", broker="tcp://127.0.0.1:9", context=zctx, timeout=0.2,
                  retries=2)
    started = time.monotonic()
    with pytest.raises(BrokerUnreachable, match=r"broker unreachable at tcp://127.0.0.1:9"):
        agent.fetch_broker_key()
    assert time.monotonic() - started < 10  # bounded (not a timing assertion on speed)
    agent.close()


def test_broker_restart_loses_nothing_and_agent_logs_in_again(broker, zctx):
    agent = broker.agent("Ana Lima")
    data_dir, endpoint = broker.data_dir, broker.endpoint
    token_hash = broker.admin.get("ana.lima")["token_hash"]
    broker.pause()
    broker.server.close()
    # A new broker on the same data directory and address.
    import threading

    # In one process the old socket's port is released by ZeroMQ's I/O thread a moment
    # after close(); a restarted broker process would not have to wait.
    deadline = time.monotonic() + 5
    while True:
        try:
            server = BrokerServer(data_dir, endpoint, zctx)
            break
        except zmq.ZMQError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        assert broker.admin.get("ana.lima")["token_hash"] == token_hash
        assert server.keys.fingerprint == broker.fingerprint
        assert agent.whoami()["username"] == "ana.lima"  # unknown session -> logs in again
    finally:
        server.stop.set()
        thread.join(5)
        server.close()
        broker.server = server  # so the fixture's teardown does not stop the old one twice


def test_operator_revoke_refuses_live_session_at_once(broker):
    agent = broker.agent("Ana Lima")
    broker.admin.revoke("ana.lima", time.time())
    broker.wait_for_store_sync()
    with pytest.raises(RemoteError) as info:
        agent.call("echo")
    assert info.value.code is ErrorCode.REVOKED


def test_operator_level_change_reaches_live_session(broker):
    agent = broker.agent("Ana Lima", level=1)
    broker.admin.set_level("ana.lima", 5, time.time())
    broker.wait_for_store_sync()
    assert agent.whoami()["level"] == 5


def test_secrets_never_appear_in_broker_logs(broker, caplog):
    caplog.set_level(logging.DEBUG)
    username, otid = broker.enroll("Ana Lima")
    agent = Agent(broker.data_dir.parent / "ana", broker=broker.endpoint,
                  context=broker.context, timeout=2)
    broker.agents.append(agent)
    agent.register(username, otid, broker.fingerprint, PASSWORD)
    agent.login(PASSWORD)
    agent.call("echo", {"x": 1})
    creds = agent.credentials
    text = caplog.text
    for secret in (otid, b64(creds.token), b64(creds.symmetric_key), b64(creds.private_key),
                   PASSWORD, creds.token.hex(), creds.symmetric_key.hex()):
        assert secret not in text
    assert "login ana.lima ok" in text


def test_two_agents_sharing_credentials_do_not_race_the_token(broker, zctx):
    import threading

    first = broker.agent("Ana Lima", login=False)
    errors: list[BaseException] = []

    def login_many(agent: Agent) -> None:
        try:
            for _ in range(4):
                agent.login()
                agent.whoami()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    agents = []
    for _ in range(2):
        a = Agent(first.home, broker=broker.endpoint, context=zctx, timeout=2)
        a.unlock(PASSWORD)
        agents.append(a)
        broker.agents.append(a)
    threads = [threading.Thread(target=login_many, args=(a,)) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert not broker.admin.get("ana.lima")["flagged"]


def test_a_timer_that_raises_does_not_stop_the_broker(broker, caplog):
    ana = broker.agent("Ana Lima")

    def broken(now):
        raise RuntimeError("timer bug")

    core = broker.server.core  # the worker timers fail on every tick from now on
    core._timers = [(n, broken if n == "worker" else t) for n, t in core._timers]
    time.sleep(0.3)  # several ticks
    assert ana.call("echo", {"still": "serving"}) == {"still": "serving"}
    assert broker.thread.is_alive()
    tracebacks = [r for r in caplog.records if r.exc_info and "worker timer" in r.getMessage()]
    assert len(tracebacks) == 1


def test_timers_after_a_failing_one_still_run():
    from agora.keyfile import KeyPair
    from broker.core import BrokerCore
    from broker.store import Store

    store = Store(None)
    core = BrokerCore(store, KeyPair.generate())
    core._timers.insert(0, ("broken", lambda now: 1 / 0))
    core.audit_later("ana", "test", "ok", 0.0)
    core.tick(10.0)  # the audit timer comes after the broken one and still flushes
    assert [r["action"] for r in store.audit_rows()] == ["test"]


def test_a_broker_whose_port_is_taken_fails_and_leaves_its_directory_free(
        tmp_path, zctx, monkeypatch):
    monkeypatch.setattr("agora.sockets.BIND_RETRY", 0.2)
    taken = zctx.socket(zmq.ROUTER)
    taken.setsockopt(zmq.LINGER, 0)
    taken.bind("tcp://127.0.0.1:0")
    try:
        with pytest.raises(zmq.ZMQError) as err:
            BrokerServer(tmp_path, taken.getsockopt_string(zmq.LAST_ENDPOINT), zctx)
        assert err.value.errno == errno.EADDRINUSE
    finally:
        taken.close(0)
    # Its database and its PID file were let go: a broker starts there at once.
    server = BrokerServer(tmp_path, "tcp://127.0.0.1:0", zctx)
    server.close()
