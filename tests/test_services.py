"""Services over real sockets: built-ins, the notes store, and workers attached by ServiceWorker."""

from __future__ import annotations

import logging
import re
import threading
import time

import pytest
import zmq

from agents import Agent, examples
from agents.agent import _Session
from agents.worker import Caller, Keywords, ServiceWorker, invoke, run_worker
from agora.crypto import new_symmetric_key
from agora.envelope import Header, seal
from agora.errors import RemoteError
from agora.protocol import MAX_CALL_PAYLOAD, Channel, ErrorCode, Kind, PrincipalKind, Sender
from agora.wire import (
    decode_reply,
    decode_worker_body,
    encode_call,
    encode_request,
    open_worker_message,
)
from broker.server import BrokerServer
from tests import sample_workers
from tests.conftest import PASSWORD


@pytest.fixture
def workers(broker):
    """start(service, handler, level) -> a ServiceWorker attached, in its own thread."""
    started: list[ServiceWorker] = []

    def start(service, handler, level=1, principal_level=3, name=None):
        agent = broker.agent(name or f"{service} worker {len(started)}", principal_level,
                             kind=PrincipalKind.SERVICE)
        broker.bind(service, agent.username, level)
        worker = run_worker(agent, service, handler, level)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop.set()
    for worker in started:
        worker.thread.join(timeout=5)


def refused(call, *args) -> ErrorCode:
    with pytest.raises(RemoteError) as err:
        call(*args)
    return err.value.code


def test_services_hides_what_is_above_the_callers_level(broker, workers):
    workers("payroll", examples.upper, level=4, principal_level=4)
    workers("upper", examples.upper, level=2)
    low = broker.agent("Lia Low", level=2)
    listed = {s["name"]: s for s in low.call("services")}
    assert "payroll" not in listed
    assert listed["upper"]["workers"] == 1
    assert {"echo", "time", "whoami", "directory", "services", "notes.read"} <= set(listed)
    assert refused(low.call, "payroll", {"text": "x"}) is ErrorCode.FORBIDDEN


def test_time_is_the_brokers_clock(broker):
    agent = broker.agent("Ana Lima")
    assert abs(agent.call("time")["time"] - time.time()) < 5


def test_directory_shows_who_is_online_with_level(broker):
    ana = broker.agent("Ana Lima", level=2)
    broker.agent("Bob Reis", level=4)
    broker.agent("Cid Off", level=1, login=False)
    entries = {e["username"]: e for e in ana.call("directory")}
    assert set(entries) == {"ana.lima", "bob.reis"}
    assert (entries["bob.reis"]["level"], entries["bob.reis"]["kind"]) == (4, "person")


def test_notes_no_read_up(broker):
    high, low = broker.agent("Hal High", level=4), broker.agent("Lia Low", level=2)
    note = high.call("notes.write", {"title": "plan", "text": "the plan", "level": 4})
    assert refused(low.call, "notes.read", {"id": note["id"]}) is ErrorCode.NOT_FOUND
    assert low.call("notes.list") == []
    assert high.call("notes.read", {"id": note["id"]})["text"] == "the plan"


@pytest.mark.parametrize("note_id", [2**63, 2**70, -1], ids=["past-sqlite", "huge", "negative"])
def test_a_note_id_no_row_can_have_is_a_bad_request_without_a_traceback(broker, note_id,
                                                                        caplog):
    ana = broker.agent("Ana Lima", level=2)
    with caplog.at_level(logging.INFO):
        assert refused(ana.call, "notes.read", {"id": note_id}) is ErrorCode.BAD_REQUEST
    assert not any(r.exc_info for r in caplog.records)  # was service-failed, traceback logged
    assert ana.call("notes.list") == []  # and the service serves on


def test_notes_are_listed_newest_first_a_page_at_a_time_whatever_their_number(broker):
    # 1,400 notes of long titles once made notes.list an answer over the message limit,
    # which the caller dropped: "broker unreachable" for everyone at that level.
    from broker.notes import MAX_LISTED

    ana = broker.agent("Ana Lima", level=2)
    ids = [ana.call("notes.write", {"title": f"{n:03d}" + "é" * 197, "text": "t"})["id"]
           for n in range(MAX_LISTED + 50)]
    first = ana.call("notes.list")
    assert [n["id"] for n in first] == ids[::-1][:MAX_LISTED]
    older = ana.call("notes.list", {"before": first[-1]["id"]})
    assert [n["id"] for n in older] == ids[::-1][MAX_LISTED:]
    assert [n["id"] for n in ana.call("notes.list", {"limit": 3})] == ids[::-1][:3]


@pytest.mark.parametrize("args", [{"limit": 0}, {"limit": 201}, {"limit": "9"},
                                  {"limit": 2**70}, {"before": -1}, {"before": 2**64}])
def test_a_notes_page_that_cannot_be_is_a_bad_request(broker, args):
    assert refused(broker.agent("Ana Lima").call, "notes.list", args) is ErrorCode.BAD_REQUEST


def test_a_builtin_answer_too_large_to_travel_is_service_failed_not_silence(broker):
    from agora.protocol import MAX_MESSAGE_SIZE, Level
    from broker.core import Service

    broker.server.core.services["big"] = Service(
        "big", Level.PUBLIC, "an answer over the message limit",
        lambda ctx, args: "x" * MAX_MESSAGE_SIZE)
    ana = broker.agent("Ana Lima")
    with pytest.raises(RemoteError) as err:
        ana.call("big")
    assert (err.value.code, err.value.message) == (
        ErrorCode.SERVICE_FAILED, "the answer is over the 256 KiB message limit")
    assert ana.call("echo", {"after": "that"}) == {"after": "that"}


def test_notes_no_write_down(broker):
    high, low = broker.agent("Hal High", level=4), broker.agent("Lia Low", level=2)
    assert refused(high.call, "notes.write",
                   {"title": "leak", "text": "x", "level": 2}) is ErrorCode.FORBIDDEN
    note = low.call("notes.write", {"title": "memo", "text": "hello"})  # at the writer's level
    assert note["level"] == 2
    assert [n["title"] for n in high.call("notes.list")] == ["memo"]


def test_notes_survive_a_broker_restart(tmp_path, zctx):
    from tests.conftest import BrokerHarness

    first = BrokerHarness(tmp_path / "broker", zctx)
    first.agent("Ana Lima").call("notes.write", {"title": "kept", "text": "yes"})
    first.stop()
    second = BrokerHarness(tmp_path / "broker", zctx)
    try:
        assert [n["title"] for n in second.admin.db.query("select title from notes")] == ["kept"]
    finally:
        second.stop()


def test_worker_serves_calls_through_the_broker(broker, workers):
    worker = workers("upper", examples.upper)
    ana = broker.agent("Ana Lima")
    assert ana.call("upper", {"text": "hello"}) == "HELLO"
    assert worker.served == 1


def test_bad_arguments_are_a_bad_request(broker, workers):
    workers("upper", examples.upper)
    ana = broker.agent("Ana Lima")
    assert refused(ana.call, "upper", {"txt": "typo"}) is ErrorCode.BAD_REQUEST
    assert ana.call("upper", {"text": "still fine"}) == "STILL FINE"


def test_args_that_are_not_a_json_object_are_the_workers_bad_request(broker, workers):
    worker = workers("upper", examples.upper)  # the broker forwards args unparsed
    ana = broker.agent("Ana Lima")
    assert refused(ana.request, Kind.CALL, bytes((5,)) + b"upper[1]") is ErrorCode.BAD_REQUEST
    assert ana.call("upper", {"text": "x"}) == "X"
    assert worker.served == 2


def test_raising_worker_gives_service_failed_without_its_message(broker, workers):
    workers("crash", sample_workers.crash)
    ana = broker.agent("Ana Lima")
    with pytest.raises(RemoteError) as err:
        ana.call("crash")
    assert err.value.code is ErrorCode.SERVICE_FAILED
    assert "hunter2" not in err.value.message
    assert ana.call("echo", {"ok": 1}) == {"ok": 1}


@pytest.mark.parametrize(("handler", "message"), [
    (lambda: "x" * MAX_CALL_PAYLOAD, f"result of odd is over {MAX_CALL_PAYLOAD // 1024} KiB"),
    (lambda: {1, 2}, "service odd failed (TypeError)"),  # not JSON: a set
], ids=["result-too-large", "result-not-json"])
def test_a_result_that_cannot_travel_is_service_failed_and_the_worker_serves_on(
        broker, workers, handler, message):
    workers("odd", handler)
    ana = broker.agent("Ana Lima")
    with pytest.raises(RemoteError) as err:
        ana.call("odd")
    assert (err.value.code, err.value.message) == (ErrorCode.SERVICE_FAILED, message)
    with pytest.raises(RemoteError) as again:  # the worker is still attached and answering
        ana.call("odd")
    assert again.value.message == message


def test_late_worker_times_out_and_broker_keeps_serving(broker, workers):
    broker.server.core.workers.call_timeout = 0.5
    workers("slow", sample_workers.slow)
    ana, bob = broker.agent("Ana Lima"), broker.agent("Bob Reis")
    started = time.monotonic()
    assert refused(ana.call, "slow", {"seconds": 1.2}) is ErrorCode.TIMEOUT
    assert time.monotonic() - started < 1.5
    assert bob.call("echo", {"x": 1}) == {"x": 1}
    time.sleep(0.9)  # the worker finishes, its late reply is dropped, it is free again
    assert ana.call("slow", {"seconds": 0}) == "done"


def test_worker_keeps_heart_beating_through_a_long_call(broker):
    """The handler runs in the worker's loop thread; a helper heartbeats meanwhile, so a
    call longer than the broker's liveness window is answered, not cut off."""
    broker.server.core.workers.heartbeat_interval = 0.1  # dead after 0.3 s of silence
    agent = broker.agent("Slow Worker", kind=PrincipalKind.SERVICE)
    broker.bind("slow", agent.username, 1)
    worker = ServiceWorker(agent, "slow", sample_workers.slow, heartbeat_interval=0.1)
    thread = threading.Thread(target=worker.serve, daemon=True)
    thread.start()
    try:
        assert worker.attached.wait(5)
        assert broker.agent("Ana Lima").call("slow", {"seconds": 1.0}) == "done"
    finally:
        worker.stop.set()
        thread.join(timeout=5)


def test_stopped_worker_leaves_service_unavailable_not_a_hang(broker, workers):
    worker = workers("upper", examples.upper)
    worker.stop.set()
    worker.thread.join(timeout=5)
    ana = broker.agent("Ana Lima")
    started = time.monotonic()
    assert refused(ana.call, "upper", {"text": "x"}) is ErrorCode.SERVICE_UNAVAILABLE
    assert time.monotonic() - started < 1


def test_unknown_service_is_refused(broker):
    assert refused(broker.agent("Ana Lima").call, "no.such") is ErrorCode.UNKNOWN_SERVICE


def test_revoked_callers_call_is_refused_at_once(broker, workers):
    workers("upper", examples.upper)
    ana = broker.agent("Ana Lima")
    assert ana.call("upper", {"text": "a"}) == "A"
    broker.admin.revoke("ana.lima", time.time())
    broker.wait_for_store_sync()
    assert refused(ana.call, "upper", {"text": "b"}) in (ErrorCode.REVOKED,
                                                         ErrorCode.UNKNOWN_SESSION)


def test_call_in_an_ended_session_is_refused(broker):
    ana = broker.agent("Ana Lima")
    session = ana.session
    ana.logout()
    ana.session = session  # keep using the old session's key and id
    with pytest.raises(RemoteError) as err:
        ana.request(Kind.CALL, encode_call("echo"), relogin=False)
    assert err.value.code is ErrorCode.UNKNOWN_SESSION


def test_concurrent_callers_each_get_their_own_answers(broker, workers):
    pool = [workers("tagged", sample_workers.tagged) for _ in range(3)]
    callers = [broker.agent(f"Caller {i}", level=2) for i in range(6)]
    results: dict[str, list] = {}

    def run(agent):
        results[agent.username] = [agent.call("tagged", {"n": n}) for n in range(25)]

    threads = [threading.Thread(target=run, args=(a,)) for a in callers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for agent in callers:
        assert results[agent.username] == [{"n": n, "caller": agent.username}
                                           for n in range(25)]
    assert sum(w.served for w in pool) == 150
    assert all(w.served > 0 for w in pool)  # the broker spread the calls


def test_worker_principal_of_kind_person_is_refused(broker):
    person = broker.agent("Pat Person", level=5)
    with pytest.raises(RemoteError) as err:
        run_worker(person, "upper", examples.upper, 1)
    assert err.value.code is ErrorCode.FORBIDDEN


def test_invoke_refuses_a_caller_argument_from_the_request():
    with pytest.raises(RemoteError) as err:
        invoke(sample_workers.tagged, {"n": 1, "caller": "root"}, Caller("ana", 1))
    assert err.value.code is ErrorCode.BAD_REQUEST


def quick_upper_worker(broker) -> tuple[ServiceWorker, threading.Thread]:
    """An ``upper`` worker serving in a thread, heart-beating every 0.2 s (it notices a
    silent broker within 0.6 s)."""
    agent = broker.agent("Upper Worker", kind=PrincipalKind.SERVICE)
    broker.bind("upper", agent.username, 1)
    worker = ServiceWorker(agent, "upper", examples.upper, heartbeat_interval=0.2,
                           attach_timeout=1.0)
    thread = threading.Thread(target=worker.serve, daemon=True)
    thread.start()
    return worker, thread


def test_worker_attaches_again_after_a_broker_restart(broker):
    worker, thread = quick_upper_worker(broker)
    assert worker.attached.wait(5)
    broker.pause()
    broker.server.close()
    # ZeroMQ's I/O thread releases the old port a moment after close() (in one process).
    deadline = time.monotonic() + 5
    while True:
        try:
            restarted = BrokerServer(broker.data_dir, broker.endpoint, broker.context)
            break
        except zmq.ZMQError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    serving = threading.Thread(target=restarted.serve, daemon=True)
    serving.start()
    try:
        deadline = time.monotonic() + 10
        while restarted.core.workers.level_of("upper") is None:
            assert time.monotonic() < deadline, "worker did not re-attach"
            time.sleep(0.05)
        caller = Agent(broker.data_dir.parent / "home-ana", broker=broker.endpoint,
                       context=broker.context)
        broker.agents.append(caller)
        username, otid = broker.enroll("Ana Lima")
        caller.register(username, otid, broker.fingerprint, PASSWORD)
        caller.login()
        assert caller.call("upper", {"text": "back"}) == "BACK"
    finally:
        worker.stop.set()
        thread.join(timeout=5)
        restarted.stop.set()
        serving.join(timeout=5)
        restarted.close()


def test_a_worker_that_hears_nothing_reconnects_and_attaches_again(broker):
    worker, thread = quick_upper_worker(broker)
    try:
        assert worker.attached.wait(5)
        broker.pause()  # the broker hangs: its socket is there, nobody answers
        deadline = time.monotonic() + 5
        while worker.attached.is_set():  # 3 heartbeats of silence: presumed gone
            assert time.monotonic() < deadline, "the worker never noticed the silence"
            time.sleep(0.02)
        broker.resume()  # it answers again, with the same sessions
        assert worker.attached.wait(5)  # READY again, on a new socket
        caller = broker.agent("Ana Lima")
        assert caller.call("upper", {"text": "again"}) == "AGAIN"
    finally:
        worker.stop.set()
        thread.join(timeout=5)


def _outcome(call) -> tuple:
    try:
        return ("ok", call())
    except RemoteError as exc:
        return ("refused", exc.code, exc.message)


def test_handler_keywords_refuse_exactly_what_signature_bind_refuses():
    def plain(a, b=1, *, c):
        return [a, b, c]

    def anything(**kw):
        return kw

    def positional(a, /, b):
        return [a, b]

    caller = Caller("ana", 1)
    cases = [(plain, {"a": 1, "c": 2}), (plain, {"a": 1}), (plain, {"a": 1, "c": 2, "d": 3}),
             (anything, {"x": 1}), (anything, {"caller": "x"}), (positional, {"a": 1, "b": 2}),
             (sample_workers.tagged, {"n": 1}), (sample_workers.tagged, {"n": 1, "x": 2}),
             (sample_workers.tagged, {"n": 1, "caller": "root"})]
    for handler, args in cases:
        expected = _outcome(lambda h=handler, a=args: invoke(h, a, caller))
        assert _outcome(lambda h=handler, a=args: Keywords(h).invoke(a, caller)) == expected


class FakeBroker:
    """A ROUTER that seals what a broker would, for one ServiceWorker ("upper") serving in a
    thread: to see what the worker does with messages no real broker sends."""

    def __init__(self, tmp_path, zctx) -> None:
        self.router = zctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.RCVTIMEO, 5000)
        port = self.router.bind_to_random_port("tcp://127.0.0.1")
        agent = Agent(tmp_path / "w", broker=f"tcp://127.0.0.1:{port}", context=zctx)
        self.sid, self.key = b"s" * 16, new_symmetric_key()
        agent.session = _Session(self.sid, self.key)
        self.worker = ServiceWorker(agent, "upper", lambda **args: args, 1)
        self.thread = threading.Thread(target=self.worker.serve, daemon=True)

    def __enter__(self) -> FakeBroker:
        self.thread.start()
        self.identity, self.ready = self.heard()  # READY, with no empty delimiter
        self.send(Kind.READY, 1, b'{"service":"upper","level":1}')
        return self

    def heard(self) -> tuple[bytes, dict]:
        """(socket identity, body) of the worker's next message, which must be a READY."""
        identity, data = self.router.recv_multipart()
        header, raw = open_worker_message(self.key, data, self.sid, Sender.WORKER)
        return identity, {"kind": Kind(header.kind), **decode_worker_body(Kind(header.kind), raw)}

    def __exit__(self, *exc) -> None:
        self.worker.stop.set()
        self.thread.join(5)
        self.router.close(0)

    def sealed(self, kind: Kind, counter: int, body: bytes) -> bytes:
        return seal(self.key, Header(Channel.WORKER, kind, Sender.BROKER, self.sid, counter),
                    body)

    def send(self, kind: Kind, counter: int, body: bytes) -> None:
        self.router.send_multipart([self.identity, self.sealed(kind, counter, body)])

    def request(self, counter: int, rid: bytes) -> None:
        self.send(Kind.REQUEST, counter, encode_request(rid, b"upper", b"ana", 1, 5, b'{"n":1}'))

    def replied(self) -> bytes:
        """The request id of the next REPLY the worker sends."""
        while True:
            frames = self.router.recv_multipart()
            header, raw = open_worker_message(self.key, frames[-1], self.sid, Sender.WORKER)
            if header.kind == Kind.REPLY:
                return decode_reply(raw)[0]


def test_a_worker_attaching_again_after_a_silence_says_the_same_instance(tmp_path, zctx):
    """So the broker can tell it from a second worker of the session (PROTOCOL.md 4.3)."""
    fake = FakeBroker(tmp_path, zctx)
    fake.worker.heartbeat_interval = 0.1  # silent for 0.3 s: it leaves the socket
    with fake as broker:
        assert broker.ready["kind"] is Kind.READY
        assert re.fullmatch(r"[0-9a-f]{16}", broker.ready["instance"])
        heard = [broker.heard()]  # heartbeats, then DISCONNECT, then READY on a new socket
        while heard[-1][1]["kind"] is not Kind.READY and len(heard) < 50:
            heard.append(broker.heard())
        kinds = [body["kind"] for _, body in heard]
        assert kinds[-2:] == [Kind.DISCONNECT, Kind.READY], kinds
        (left, _), (again, ready) = heard[-2:]
        assert left == broker.identity and again != broker.identity
        assert ready["instance"] == broker.ready["instance"]


def test_worker_drops_a_replayed_request(tmp_path, zctx):
    """A fake broker replays a REQUEST it sealed: the worker answers it once only."""
    with FakeBroker(tmp_path, zctx) as broker:
        first = [broker.identity, broker.sealed(Kind.REQUEST, 2, encode_request(
            b"1" * 8, b"upper", b"ana", 1, 5, b'{"n":1}'))]
        broker.router.send_multipart(first)
        assert broker.replied() == b"1" * 8
        broker.router.send_multipart(first)  # replayed
        broker.request(3, b"2" * 8)
        assert broker.replied() == b"2" * 8  # the replay was dropped, not answered again
        assert broker.worker.served == 2


@pytest.mark.parametrize("bad", ["two frames", "malformed request"])
def test_worker_ignores_a_malformed_message_from_the_broker_and_serves_on(tmp_path, zctx, bad,
                                                                          caplog):
    with caplog.at_level("INFO", "agora.worker"), FakeBroker(tmp_path, zctx) as broker:
        if bad == "two frames":
            good = broker.sealed(Kind.REQUEST, 2, encode_request(b"0" * 8, b"upper", b"ana",
                                                                   1, 5, b'{"n":1}'))
            broker.router.send_multipart([broker.identity, good, b"tail"])
        else:
            broker.send(Kind.REQUEST, 2, b"\x00" * 5)  # sealed by the broker, but no REQUEST
        broker.request(3, b"1" * 8)
        assert broker.replied() == b"1" * 8
        assert broker.worker.served == 1
    assert "ignored a bad" in caplog.text
