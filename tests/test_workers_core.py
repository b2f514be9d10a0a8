"""The worker protocol in the broker core, without sockets: the clock is passed in.

Each test builds a BrokerCore over an in-memory store, opens sessions directly in its
session table (login is tested elsewhere), and exchanges frames with ``core.handle``.
"""

from __future__ import annotations

import pytest

from agora.crypto import SecretBox, new_symmetric_key
from agora.envelope import Header, open_envelope, seal
from agora.errors import RemoteError, UnauthenticatedRefusal
from agora.keyfile import KeyPair
from agora.protocol import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_LIVENESS,
    MAX_CALL_PAYLOAD,
    MAX_PIPELINE,
    MAX_QUEUED_REQUESTS,
    Channel,
    ErrorCode,
    Kind,
    Level,
    PrincipalKind,
    Sender,
)
from agora.wire import (
    decode_request,
    decode_worker_body,
    encode_call,
    encode_reply,
    encode_worker_body,
    open_session_reply,
    open_to_worker,
    seal_session_request,
    seal_worker_message,
)
from broker.core import BrokerCore
from broker.services import builtin_services
from broker.store import Store
from broker.workers import WEDGED_GRACE, WORKER_WINDOW
from tests.vectors import load, vector, write

T0 = 1_000_000.0
TIMEOUT = 5.0
DEAD_AFTER = HEARTBEAT_INTERVAL * HEARTBEAT_LIVENESS


class Peer:
    """A client or worker as the core sees it: a session and its socket identity."""

    def __init__(self, core: BrokerCore, identity: bytes, username: str, level: int,
                 kind: PrincipalKind = PrincipalKind.PERSON) -> None:
        key = new_symmetric_key()
        self.core, self.identity, self.key, self.box = core, identity, key, SecretBox(key)
        self.session = core.sessions.open(username, kind, Level(level), key, 0, "127.0.0.1",
                                          T0)
        self.counter = 0

    # client side
    def call_frames(self, service: str, args: dict | None = None) -> list[bytes]:
        self.counter += 1
        return [seal_session_request(self.key, self.session.sid, self.counter, Kind.CALL,
                                     encode_call(service, args))]

    def call(self, service: str, args: dict | None = None, now: float = T0) -> list:
        return self.core.handle(self.identity, self.call_frames(service, args), now)

    def answer(self, frames: list[bytes], counter: int | None = None):
        """The result of a session reply to this peer; RemoteError for an error."""
        return open_session_reply(self.key, frames, self.session.sid, counter or self.counter)

    # worker side
    def worker_frames(self, command: Kind, body: dict) -> list[bytes]:
        self.worker_counter = getattr(self, "worker_counter", 0) + 1
        return [seal_worker_message(self.key, self.session.sid, self.worker_counter,
                                    Sender.WORKER, command, body)]

    def send(self, command: Kind, body: dict, now: float = T0) -> list:
        return self.core.handle(self.identity, self.worker_frames(command, body), now)

    def attach(self, service: str, level: int, now: float = T0) -> list:
        return self.send(Kind.READY, {"service": service, "level": level}, now)

    def opened(self, frames: list[bytes]) -> tuple[Kind, dict]:
        """A broker message to this worker, checked as the worker does (UnauthenticatedRefusal
        for a clear ERROR)."""
        assert len(frames) == 1
        header, raw = open_to_worker(self.key, frames[0], self.session.sid)
        return Kind(header.kind), decode_worker_body(Kind(header.kind), raw)


def to(out: list, identity: bytes) -> list[list[bytes]]:
    return [frames for ident, frames in out if ident == identity]


def only(out: list, identity: bytes) -> list[bytes]:
    messages = to(out, identity)
    assert len(messages) == 1, out
    return messages[0]


@pytest.fixture
def core():
    store = Store(None)
    core = BrokerCore(store, KeyPair.generate(), builtin_services(), call_timeout=TIMEOUT)
    yield core
    store.db.close()


def worker(core, name="w1", level=3) -> Peer:
    return Peer(core, name.encode(), name, level, PrincipalKind.SERVICE)


def client(core, name="ana", level=3) -> Peer:
    return Peer(core, name.encode(), name, level)


def bind(core, service: str, username: str, level: int) -> None:
    """The operator's record, as the core gets it from store.bindings()."""
    entry = core.workers.bindings.setdefault(service, {"service": service, "level": level,
                                                       "usernames": []})
    entry["level"] = level
    entry["usernames"].append(username)


def attached(core, name="w1", service="upper", level=3, worker_level=3) -> Peer:
    w = worker(core, name, worker_level)
    bind(core, service, name, level)
    command, body = w.opened(only(w.attach(service, level), w.identity))
    assert (command, body["service"]) == (Kind.READY, service)
    return w


def request_to(w: Peer, out: list) -> dict:
    command, body = w.opened(only(out, w.identity))
    assert command is Kind.REQUEST
    return body


def test_worker_call_is_forwarded_then_answered_to_its_caller_only(core):
    w, ana, bob = attached(core), client(core, "ana"), client(core, "bob")
    out = ana.call("upper", {"text": "hi"})
    assert to(out, ana.identity) == []  # deferred: nothing for the caller yet
    request = request_to(w, out)
    assert request["args"] == {"text": "hi"}
    assert request["caller"] == {"username": "ana", "level": 3}
    out = w.send(Kind.REPLY, {"id": request["id"], "ok": True, "result": "HI"})
    assert to(out, bob.identity) == []
    assert ana.answer(only(out, ana.identity)) == "HI"


def test_calls_are_balanced_across_idle_workers(core):
    w1, w2 = attached(core, "w1"), attached(core, "w2")
    ana, bob = client(core, "ana"), client(core, "bob")
    first = request_to(w1, ana.call("upper", {"n": 1}))
    second = request_to(w2, bob.call("upper", {"n": 2}))
    out = w2.send(Kind.REPLY, {"id": second["id"], "ok": True, "result": 2})
    assert bob.answer(only(out, bob.identity)) == 2
    out = w1.send(Kind.REPLY, {"id": first["id"], "ok": True, "result": 1})
    assert ana.answer(only(out, ana.identity)) == 1


def test_a_busy_worker_holds_one_more_call_then_calls_wait_in_queue(core):
    w = attached(core)
    ana, bob, cy = client(core, "ana"), client(core, "bob"), client(core, "cy")
    assert WORKER_WINDOW == 2
    first = request_to(w, ana.call("upper"))
    second = request_to(w, bob.call("upper"))  # no idle worker: w gets its next one now
    assert to(cy.call("upper"), w.identity) == []  # w holds WORKER_WINDOW: cy's call queues
    out = w.send(Kind.REPLY, {"id": first["id"], "ok": True, "result": "a"})
    assert ana.answer(only(out, ana.identity)) == "a"
    assert request_to(w, out)["caller"]["username"] == "cy"
    out = w.send(Kind.REPLY, {"id": second["id"], "ok": True, "result": "b"})
    assert bob.answer(only(out, bob.identity)) == "b"


def test_an_idle_worker_gets_the_next_call_before_a_busy_one(core):
    w1, w2 = attached(core, "w1"), attached(core, "w2")
    ana, bob, cy = client(core, "ana"), client(core, "bob"), client(core, "cy")
    first = request_to(w1, ana.call("upper"))
    request_to(w2, bob.call("upper"))
    w1.send(Kind.REPLY, {"id": first["id"], "ok": True, "result": "a"})
    request_to(w1, cy.call("upper"))  # w1 idle again, w2 busy: w1, not w2's spare room


def test_silent_worker_holding_two_calls_fails_both_at_once(core):
    w, ana, bob = attached(core), client(core, "ana"), client(core, "bob")
    request_to(w, ana.call("upper"))
    request_to(w, bob.call("upper"))
    out = core.tick(T0 + DEAD_AFTER + 0.1)
    for peer in (ana, bob):
        with pytest.raises(RemoteError) as err:
            peer.answer(only(out, peer.identity))
        assert err.value.code is ErrorCode.SERVICE_FAILED


def test_service_without_workers_answers_unavailable_at_once(core):
    w, ana = attached(core), client(core)
    w.send(Kind.DISCONNECT, {})
    with pytest.raises(RemoteError) as err:
        ana.answer(only(ana.call("upper"), ana.identity))
    assert err.value.code is ErrorCode.SERVICE_UNAVAILABLE


def test_arguments_too_large_for_a_worker_are_refused(core):
    attached(core)
    ana = client(core)
    with pytest.raises(RemoteError) as err:
        ana.answer(only(ana.call("upper", {"text": "x" * MAX_CALL_PAYLOAD}), ana.identity))
    assert err.value.code is ErrorCode.TOO_LARGE


def test_a_full_service_queue_refuses_the_next_call_at_once_and_serves_on(core):
    w = attached(core)
    # Each caller keeps under MAX_PIPELINE in flight: only the service's queue bound applies.
    callers = [client(core, f"c{n}") for n in range((MAX_QUEUED_REQUESTS + 2) // 10 + 1)]
    requests = [request_to(w, callers[0].call("upper")), request_to(w, callers[0].call("upper"))]
    for n in range(MAX_QUEUED_REQUESTS):  # the worker holds 2; these wait
        assert callers[n // 10 + 1].call("upper") == []
    late = client(core, "late")
    with pytest.raises(RemoteError) as err:
        late.answer(only(late.call("upper"), late.identity))
    assert err.value.code is ErrorCode.SERVICE_UNAVAILABLE and "overloaded" in err.value.message
    out = w.send(Kind.REPLY, {"id": requests[0]["id"], "ok": True, "result": "a"})
    assert callers[0].answer(only(out, callers[0].identity), 1) == "a"
    assert request_to(w, out)["caller"]["username"] == "c1"  # the queue moves on
    assert late.call("upper") == []  # room again: queued, not refused
    core.flush_audit(T0)
    assert [r["outcome"] for r in core.store.audit_rows("late")] == ["busy"]


def test_a_caller_over_the_pipeline_limit_is_told_its_oldest_call_was_given_up(core):
    w, ana = attached(core), client(core)
    first = request_to(w, ana.call("upper"))
    for _ in range(MAX_PIPELINE - 1):
        ana.call("upper")  # one more to the worker, then the queue
    out = ana.call("upper")  # one over the limit
    with pytest.raises(RemoteError) as err:
        ana.answer(only(out, ana.identity), 1)
    assert err.value.code is ErrorCode.SERVICE_UNAVAILABLE
    assert f"over {MAX_PIPELINE} calls in flight" in err.value.message
    # The worker's answer to it comes too late: dropped, and the worker serves on.
    out = w.send(Kind.REPLY, {"id": first["id"], "ok": True, "result": "late"})
    assert to(out, ana.identity) == []
    assert request_to(w, out)["caller"]["username"] == "ana"
    core.flush_audit(T0)
    outcomes = [r["outcome"] for r in core.store.audit_rows()]
    assert "given-up" in outcomes and "late-reply" in outcomes


def test_unknown_service_is_refused(core):
    ana = client(core)
    with pytest.raises(RemoteError) as err:
        ana.answer(only(ana.call("no.such"), ana.identity))
    assert err.value.code is ErrorCode.UNKNOWN_SERVICE


def test_level_comes_from_the_session_not_the_request(core):
    attached(core, service="payroll", level=4, worker_level=4)
    low = client(core, "low", level=2)
    with pytest.raises(RemoteError) as err:
        low.answer(only(low.call("payroll", {"level": 5, "caller": {"level": 5}}),
                        low.identity))
    assert err.value.code is ErrorCode.FORBIDDEN


def test_level_lowered_by_operator_applies_to_the_next_call(core):
    w, ana = attached(core, service="payroll", level=3), client(core, level=3)
    request_to(w, ana.call("payroll"))
    ana.session.level = Level(2)  # what apply_store_changes does after `admin set-level`
    with pytest.raises(RemoteError) as err:
        ana.answer(only(ana.call("payroll"), ana.identity))
    assert err.value.code is ErrorCode.FORBIDDEN


def test_worker_cannot_offer_a_service_above_its_own_level(core):
    w = worker(core, level=2)
    bind(core, "secrets", "w1", 4)
    command, body = w.opened(only(w.attach("secrets", 4), w.identity))
    assert (command, body["code"]) == (Kind.DISCONNECT, "forbidden")
    assert core.workers.level_of("secrets") is None


def test_worker_cannot_take_a_builtin_service_name(core):
    w = worker(core, level=5)
    bind(core, "whoami", "w1", 1)
    command, body = w.opened(only(w.attach("whoami", 1), w.identity))
    assert (command, body["code"]) == (Kind.DISCONNECT, "forbidden")


def test_second_worker_cannot_change_a_service_level(core):
    attached(core, "w1", service="upper", level=3)
    w2 = worker(core, "w2", level=5)
    bind(core, "upper", "w2", 3)
    command, body = w2.opened(only(w2.attach("upper", 1), w2.identity))
    assert (command, body["code"]) == (Kind.DISCONNECT, "forbidden")
    assert core.workers.level_of("upper") == 3


def test_person_principal_cannot_attach_a_worker(core):
    person = Peer(core, b"p", "mallory", 5, PrincipalKind.PERSON)
    command, body = person.opened(only(person.attach("upper", 1), person.identity))
    assert (command, body["code"]) == (Kind.DISCONNECT, "forbidden")


def clear_refusal(frames: list[bytes]) -> str:
    """The code of a clear ERROR on the worker channel (unauthenticated by nature)."""
    with pytest.raises(UnauthenticatedRefusal) as err:
        open_to_worker(new_symmetric_key(), frames[0], bytes(16))
    return err.value.code


def test_worker_message_without_session_is_refused_in_clear(core):
    stranger = Peer(core, b"x", "w9", 3, PrincipalKind.SERVICE)
    frames = stranger.worker_frames(Kind.READY, {"service": "upper", "level": 1})
    core.sessions.end(stranger.session.sid)
    assert clear_refusal(only(core.handle(b"x", frames, T0), b"x")) == "unknown-session"


@pytest.mark.parametrize("cut", [40, 69, -1])
def test_truncated_worker_message_gets_bad_request_in_clear(core, cut):
    w = worker(core)
    frames = w.worker_frames(Kind.READY, {"service": "upper", "level": 1})
    assert clear_refusal(only(core.handle(b"x", [frames[0][:cut]], T0), b"x")) == \
        "bad-request"
    assert core.workers.level_of("upper") is None


def test_malformed_worker_body_gets_a_sealed_disconnect(core):
    w = worker(core)  # an authentic READY whose body is not a JSON object
    frames = [seal(w.key, Header(Channel.WORKER, Kind.READY, Sender.WORKER, w.session.sid, 1),
                   b"[1]")]
    command, body = w.opened(only(core.handle(w.identity, frames, T0), w.identity))
    assert (command, body["code"]) == (Kind.DISCONNECT, "bad-request")


def test_malformed_reply_body_gets_a_sealed_disconnect(core):
    w, ana = attached(core), client(core)
    request = request_to(w, ana.call("upper", {"text": "hi"}))
    w.worker_counter += 1  # an authentic REPLY: its id, then no status and no JSON
    frames = [seal(w.key, Header(Channel.WORKER, Kind.REPLY, Sender.WORKER, w.session.sid,
                                 w.worker_counter), bytes.fromhex(request["id"]))]
    command, body = w.opened(only(core.handle(w.identity, frames, T0), w.identity))
    assert (command, body["code"]) == (Kind.DISCONNECT, "bad-request")


@pytest.mark.parametrize("ready", [
    {"service": "Upper", "level": 3},
    {"service": "upper", "level": 9},
    {"service": "upper", "level": "3"},
    {"level": 3},
    {"service": "upper", "level": 3, "instance": "0123456789ABCDEF"},
    {"service": "upper", "level": 3, "instance": "0123456789abcde"},
    {"service": "upper", "level": 3, "instance": 5},
], ids=["not-a-service-name", "no-such-level", "level-not-a-number", "no-service",
        "instance-not-lowercase-hex", "instance-too-short", "instance-not-text"])
def test_a_malformed_ready_gets_a_sealed_disconnect_and_attaches_nothing(core, ready):
    w = worker(core)
    bind(core, "upper", "w1", 3)
    command, body = w.opened(only(w.send(Kind.READY, ready), w.identity))
    assert (command, body["code"]) == (Kind.DISCONNECT, "bad-request")
    assert core.workers.level_of("upper") is None and core.workers.workers == {}


def test_a_second_ready_on_an_attached_socket_gets_a_sealed_disconnect(core):
    w = attached(core)
    command, body = w.opened(only(w.attach("upper", 3), w.identity))
    assert (command, body["code"]) == (Kind.DISCONNECT, "bad-request")
    assert "already attached" in body["message"]


def test_a_worker_message_of_several_frames_is_refused_in_clear(core):
    w = attached(core)
    frames = w.worker_frames(Kind.HEARTBEAT, {})
    with pytest.raises(UnauthenticatedRefusal, match="one frame"):
        w.opened(only(core.handle_worker(w.identity, frames + [b"extra"], T0), w.identity))
    assert core.workers.listing()[0]["workers"] == 1  # nothing authenticated: still attached


def test_a_socket_attached_under_one_session_is_refused_under_another(core):
    w = attached(core)
    other = worker(core, "w2")  # another worker session, sending from w1's socket
    out = core.handle(w.identity, other.worker_frames(Kind.HEARTBEAT, {}), T0)
    command, body = other.opened(only(out, w.identity))
    assert (command, body["code"]) == (Kind.DISCONNECT, "bad-request")
    assert "another session" in body["message"]


INSTANCE = "00112233aabbccdd"


def ready(w: Peer, instance: str = INSTANCE, service: str = "upper", now: float = T0) -> list:
    return w.send(Kind.READY, {"service": service, "level": 3, "instance": instance}, now)


def on_new_socket(w: Peer, identity: bytes) -> bytes:
    """The same worker session sending from another socket; returns the old identity."""
    old, w.identity = w.identity, identity
    return old


def test_a_ready_of_the_same_worker_on_a_new_socket_detaches_its_old_attachment(core):
    w, ana = worker(core), client(core)
    bind(core, "upper", "w1", 3)
    ready(w)
    request_to(w, ana.call("upper"))  # handed to the old socket, which the worker then left
    old = on_new_socket(w, b"w1-new")
    out = ready(w, now=T0 + 3)
    with pytest.raises(RemoteError) as err:  # that call fails now, not when the old is dead
        ana.answer(only(out, ana.identity))
    assert err.value.code is ErrorCode.SERVICE_FAILED
    assert w.opened(only(out, w.identity))[0] is Kind.READY
    assert to(out, old) == [] and list(core.workers.workers) == [w.identity]
    assert request_to(w, ana.call("upper", now=T0 + 3))["service"] == "upper"


def test_the_old_sockets_disconnect_read_after_the_new_ready_is_dropped_quietly(core):
    w, ana = worker(core), client(core)
    bind(core, "upper", "w1", 3)
    ready(w)
    old = on_new_socket(w, b"w1-new")
    ready(w, now=T0 + 3)
    disconnect = w.worker_frames(Kind.DISCONNECT, {})
    assert core.handle(old, disconnect, T0 + 3) == []  # no DISCONNECT answered to a left socket
    assert list(core.workers.workers) == [w.identity]
    assert request_to(w, ana.call("upper", now=T0 + 3))["service"] == "upper"


@pytest.mark.parametrize("second", ["ffeeddccbbaa9988", None], ids=["other-instance",
                                                                   "no-instance"])
def test_another_worker_of_the_same_session_is_a_second_attachment(core, second):
    w = worker(core)
    bind(core, "upper", "w1", 3)
    ready(w)
    on_new_socket(w, b"w1-second")
    body = {"service": "upper", "level": 3} | ({"instance": second} if second else {})
    assert w.opened(only(w.send(Kind.READY, body), w.identity))[0] is Kind.READY
    assert sorted(core.workers.workers) == [b"w1", b"w1-second"]


def test_a_ready_replaces_only_the_attachment_of_its_own_session(core):
    w1, w2 = worker(core, "w1"), worker(core, "w2")
    bind(core, "upper", "w1", 3)
    bind(core, "upper", "w2", 3)
    ready(w1)
    ready(w2)  # the same instance string, under another worker session
    assert sorted(core.workers.workers) == [b"w1", b"w2"]


def test_a_worker_whose_level_is_lowered_below_its_service_is_detached(core):
    w, ana = attached(core, service="upper", level=3), client(core)
    w.session.level = Level(2)  # the operator lowered the principal (apply_store_changes)
    command, body = w.opened(only(core.tick(T0 + 0.1), w.identity))
    assert (command, body["code"]) == (Kind.DISCONNECT, "forbidden")
    assert core.workers.listing()[0]["workers"] == 0
    with pytest.raises(RemoteError) as err:
        ana.answer(only(ana.call("upper", now=T0 + 0.2), ana.identity))
    assert err.value.code is ErrorCode.SERVICE_UNAVAILABLE


def test_a_call_that_timed_out_in_the_queue_never_reaches_a_worker(core, caplog):
    w, ana, bob = attached(core), client(core, "ana"), client(core, "bob")
    first = request_to(w, ana.call("upper"))
    request_to(w, ana.call("upper"))
    assert bob.call("upper") == []  # queued behind the two
    w.send(Kind.HEARTBEAT, {}, T0 + 2.5)  # alive, just slow
    w.send(Kind.HEARTBEAT, {}, T0 + 4.5)
    with pytest.raises(RemoteError) as err:
        bob.answer(only(core.tick(T0 + TIMEOUT + 0.01), bob.identity))
    assert err.value.code is ErrorCode.TIMEOUT
    out = w.send(Kind.REPLY, {"id": first["id"], "ok": True, "result": "a"}, T0 + 6)
    assert out == []  # a late reply, and bob's call is not handed over after its timeout
    assert request_to(w, bob.call("upper", now=T0 + 6))["caller"]["username"] == "bob"
    assert "internal error" not in caplog.text


def test_a_call_goes_past_an_idle_worker_whose_session_ended_to_the_next(core):
    w1, w2, ana = attached(core, "w1"), attached(core, "w2"), client(core)
    core.sessions.end(w1.session.sid)  # w1 is next in line, and no tick has noticed yet
    out = ana.call("upper")
    assert request_to(w2, out)["caller"]["username"] == "ana"
    assert to(out, w1.identity) == []
    assert core.workers.listing()[0]["workers"] == 1  # w1 detached on the way


@pytest.mark.parametrize(("error", "code", "message"), [
    (b"not json", ErrorCode.SERVICE_FAILED, "service upper failed"),
    (b'{"code": 7, "message": ""}', ErrorCode.SERVICE_FAILED, "service upper failed"),
    (b'{"code": "bad-request", "message": "' + b"x" * 1000 + b'"}', ErrorCode.BAD_REQUEST,
     "x" * 300),
], ids=["not-json", "no-such-code-and-no-message", "long-message"])
def test_a_worker_error_reaches_its_caller_as_one_bounded_line(core, error, code, message):
    w, ana = attached(core), client(core)
    request = request_to(w, ana.call("upper", {"text": "hi"}))
    w.worker_counter += 1
    frames = [seal(w.key, Header(Channel.WORKER, Kind.REPLY, Sender.WORKER, w.session.sid,
                                 w.worker_counter),
                   encode_reply(bytes.fromhex(request["id"]), False, error))]
    with pytest.raises(RemoteError) as refused:
        ana.answer(only(core.handle(w.identity, frames, T0), ana.identity))
    assert (refused.value.code, refused.value.message) == (code, message)
    assert w.identity in core.workers.workers  # a failed call, not a broken worker


def test_args_and_result_are_forwarded_as_the_octets_that_came(core):
    """The broker neither parses a worker-routed call's args nor re-encodes its result."""
    w, ana = attached(core), client(core)
    ana.counter += 1
    raw_args = b'{"text":"hi", "n":  1}'  # not as the broker's encoder would write it
    frames = [seal_session_request(ana.key, ana.session.sid, ana.counter, Kind.CALL,
                                   bytes((5,)) + b"upper" + raw_args)]
    _, raw = open_to_worker(w.key, only(core.handle(ana.identity, frames, T0), w.identity)[0],
                            w.session.sid)
    rid, service, username, level, _, args = decode_request(raw)
    assert (service, username, level, args) == ("upper", "ana", 3, raw_args)
    w.worker_counter += 1
    frames = [seal(w.key, Header(Channel.WORKER, Kind.REPLY, Sender.WORKER, w.session.sid,
                                 w.worker_counter), encode_reply(rid, True, b'[ "HI" ]'))]
    reply = only(core.handle(w.identity, frames, T0), ana.identity)
    _, body = open_envelope(ana.key, reply[0], Channel.CLIENT, Sender.BROKER)
    assert body == b'[ "HI" ]'


def test_worker_message_under_the_wrong_key_is_refused(core):
    w = worker(core)
    forged = [seal_worker_message(new_symmetric_key(), w.session.sid, 1, Sender.WORKER,
                                  Kind.READY, {"service": "upper", "level": 1})]
    assert clear_refusal(only(core.handle(b"evil", forged, T0), b"evil")) == "bad-request"
    assert core.workers.level_of("upper") is None


def test_replayed_worker_message_is_dropped_without_detaching_the_worker(core):
    w = worker(core)
    bind(core, "upper", "w1", 1)
    ready = w.worker_frames(Kind.READY, {"service": "upper", "level": 1})
    core.handle(w.identity, ready, T0)
    assert core.handle(b"replayer", ready, T0) == []
    assert core.handle(w.identity, ready, T0) == []  # not even on its own socket
    assert b"replayer" not in core.workers.workers
    assert core.workers.listing()[0]["workers"] == 1
    core.flush_audit(T0)
    assert ("worker", "replayed") in [(r["action"], r["outcome"])
                                      for r in core.store.audit_rows()]


def test_broker_message_reflected_back_is_refused(core):
    w = attached(core)
    out = client(core).call("upper")
    request = only(out, w.identity)  # a REQUEST, sealed by the broker to the worker
    assert clear_refusal(only(core.handle(b"evil", request, T0), b"evil")) == "bad-request"


def test_worker_cannot_answer_a_request_it_was_not_given(core):
    w1, w2, ana = attached(core, "w1"), attached(core, "w2"), client(core)
    request = request_to(w1, ana.call("upper"))
    out = w2.send(Kind.REPLY, {"id": request["id"], "ok": True, "result": "forged"})
    assert to(out, ana.identity) == []
    out = w1.send(Kind.REPLY, {"id": request["id"], "ok": True, "result": "real"})
    assert ana.answer(only(out, ana.identity)) == "real"


def test_silent_worker_is_declared_dead_and_its_caller_told(core):
    w, ana = attached(core), client(core)
    request_to(w, ana.call("upper"))
    assert to(core.tick(T0 + DEAD_AFTER - 0.1), ana.identity) == []
    out = core.tick(T0 + DEAD_AFTER + 0.1)
    with pytest.raises(RemoteError) as err:
        ana.answer(only(out, ana.identity))
    assert err.value.code is ErrorCode.SERVICE_FAILED
    assert core.workers.listing() == [{"name": "upper", "level": 3, "description": "",
                                       "workers": 0}]


def test_heartbeats_keep_a_worker_attached_and_broker_heartbeats_it(core):
    w = attached(core)
    for i in range(1, 10):
        now = T0 + i * HEARTBEAT_INTERVAL
        w.send(Kind.HEARTBEAT, {}, now)
        out = core.tick(now + 0.01)
        assert [w.opened(f)[0] for f in to(out, w.identity)] == [Kind.HEARTBEAT]
    assert core.workers.listing()[0]["workers"] == 1


def test_late_worker_times_out_then_its_reply_is_dropped(core):
    w, ana = attached(core), client(core)
    request = request_to(w, ana.call("upper"))
    w.send(Kind.HEARTBEAT, {}, T0 + 2.5)  # alive, just slow
    w.send(Kind.HEARTBEAT, {}, T0 + 4.5)
    with pytest.raises(RemoteError) as err:
        ana.answer(only(core.tick(T0 + TIMEOUT + 0.01), ana.identity))
    assert err.value.code is ErrorCode.TIMEOUT
    out = w.send(Kind.REPLY, {"id": request["id"], "ok": True, "result": "late"},
                 T0 + 6)
    assert to(out, ana.identity) == []
    assert request_to(w, ana.call("upper", now=T0 + 6))  # the worker is free again
    core.flush_audit(T0 + 6)
    outcomes = [r["outcome"] for r in core.store.audit_rows()]
    assert "timeout" in outcomes and "late-reply" in outcomes


def test_worker_that_heartbeats_but_never_answers_is_detached_as_wedged(core):
    w, ana = attached(core), client(core)
    request_to(w, ana.call("upper"))
    now, to_worker = T0, []
    while now < T0 + TIMEOUT + WEDGED_GRACE + 1:  # heartbeats keep it "alive" throughout
        now += 0.5
        w.send(Kind.HEARTBEAT, {}, now)
        to_worker += [m for m in to(core.tick(now), w.identity)
                      if w.opened(m)[0] is not Kind.HEARTBEAT]
    assert len(to_worker) == 1
    command, body = w.opened(to_worker[0])
    assert (command, body["code"]) == (Kind.DISCONNECT, "timeout")
    with pytest.raises(RemoteError) as err:  # no worker left: fails fast, no hang
        ana.answer(only(ana.call("upper", now=now), ana.identity))
    assert err.value.code is ErrorCode.SERVICE_UNAVAILABLE


def test_worker_error_code_is_passed_on_but_unknown_codes_are_not(core):
    w, ana = attached(core), client(core)
    request = request_to(w, ana.call("upper"))
    out = w.send(Kind.REPLY, {"id": request["id"], "ok": False, "error": {
        "code": "bad-request", "message": "text missing"}})
    with pytest.raises(RemoteError) as err:
        ana.answer(only(out, ana.identity))
    assert (err.value.code, err.value.message) == (ErrorCode.BAD_REQUEST, "text missing")
    request = request_to(w, ana.call("upper"))
    out = w.send(Kind.REPLY, {"id": request["id"], "ok": False, "error": {
        "code": "token-reused", "message": "scary"}})
    with pytest.raises(RemoteError) as err:
        ana.answer(only(out, ana.identity))
    assert err.value.code is ErrorCode.SERVICE_FAILED


def test_retried_call_is_answered_once_on_the_retrying_socket(core):
    w, ana = attached(core), client(core)
    frames = ana.call_frames("upper")
    request = request_to(w, core.handle(b"req-socket-1", frames, T0))
    assert core.handle(b"req-socket-2", frames, T0 + 2.5) == []  # Lazy Pirate retry
    out = w.send(Kind.REPLY, {"id": request["id"], "ok": True, "result": "x"})
    assert to(out, b"req-socket-1") == []
    assert ana.answer(only(out, b"req-socket-2")) == "x"
    again = only(core.handle(b"req-socket-3", frames, T0 + 3), b"req-socket-3")
    assert ana.answer(again) == "x"  # answered from the session's cache, not re-run


def test_reply_for_a_caller_who_logged_out_is_dropped(core):
    w, ana = attached(core), client(core)
    request = request_to(w, ana.call("upper"))
    core.sessions.end(ana.session.sid)
    out = w.send(Kind.REPLY, {"id": request["id"], "ok": True, "result": "x"})
    assert to(out, ana.identity) == []


def test_worker_whose_session_ends_is_detached_and_its_call_fails(core):
    w, ana = attached(core), client(core)
    request_to(w, ana.call("upper"))
    core.sessions.end(w.session.sid)  # revoked, logged out or expired
    out = core.tick(T0 + 0.1)
    with pytest.raises(RemoteError) as err:
        ana.answer(only(out, ana.identity))
    assert err.value.code is ErrorCode.SERVICE_FAILED
    assert core.workers.listing()[0]["workers"] == 0


def test_worker_calls_are_audited_without_arguments(core):
    w, ana = attached(core), client(core)
    request = request_to(w, ana.call("upper", {"text": "secret text"}))
    w.send(Kind.REPLY, {"id": request["id"], "ok": True, "result": "SECRET TEXT"})
    core.flush_audit(T0)
    rows = core.store.audit_rows("ana")
    assert [(r["action"], r["outcome"]) for r in rows] == [("call:upper", "ok")]
    assert "secret" not in repr(core.store.audit_rows()).lower()


def test_services_lists_only_what_the_caller_may_call(core):
    attached(core, "w1", service="payroll", level=4, worker_level=4)
    attached(core, "w2", service="upper", level=2)
    low = client(core, "low", level=2)
    names = {s["name"]: s for s in low.answer(only(low.call("services"), low.identity))}
    assert "payroll" not in names
    assert names["upper"]["workers"] == 1 and names["echo"]["workers"] is None


def test_directory_lists_each_online_principal_once(core):
    client(core, "ana", 2)
    client(core, "ana", 2)
    bob = client(core, "bob", 4)
    listing = bob.answer(only(bob.call("directory"), bob.identity))
    assert [(e["username"], e["level"], e["kind"]) for e in listing] == [
        ("ana", 2, "person"), ("bob", 4, "person")]
    assert set(listing[0]) == {"username", "level", "kind", "online_since"}


def test_bad_worker_frames_do_not_stop_client_calls(core):
    core.handle(b"x", [b"AG\x02\x02garbage" + bytes(30)], T0)
    ana = client(core)
    assert ana.answer(only(ana.call("echo", {"a": 1}), ana.identity)) == {"a": 1}


def test_worker_counters_are_its_own_not_the_callers(core):
    """A worker's sequence and its agent's session requests do not collide (AGORA/2)."""
    w = attached(core)
    assert w.send(Kind.HEARTBEAT, {}, T0) == []
    assert w.session.counter == 0  # the session request counter was never used
    ana = client(core)
    request = request_to(w, ana.call("upper"))
    out = w.send(Kind.REPLY, {"id": request["id"], "ok": True, "result": "x"})
    assert ana.answer(only(out, ana.identity)) == "x"


# -- known-answer vectors (docs/vectors/worker.json) ----------------------------------------

VECTOR_KEY = bytes(range(32))
VECTOR_NONCE = bytes(range(100, 124))
VECTOR_SID = bytes.fromhex("5e5510e1d00000000000000000000001")

WORKER_VECTORS = [
    ("worker.ready", Kind.READY, Sender.WORKER, 1,
     {"service": "wordcount", "level": 2, "description": "counts words",
      "instance": "0f1e2d3c4b5a6978"}),
    ("worker.broker.ready", Kind.READY, Sender.BROKER, 1, {"service": "wordcount", "level": 2}),
    ("worker.broker.request", Kind.REQUEST, Sender.BROKER, 2,
     {"id": "0011223344556677", "service": "wordcount", "args": {"text": "a b c"},
      "caller": {"username": "ana.lima", "level": 3}, "timeout": 5.0}),
    ("worker.reply", Kind.REPLY, Sender.WORKER, 2, {"id": "0011223344556677", "ok": True,
                                                   "result": 3}),
    ("worker.reply-error", Kind.REPLY, Sender.WORKER, 3,
     {"id": "0011223344556677", "ok": False,
      "error": {"code": "bad-request", "message": "text missing"}}),
    ("worker.heartbeat", Kind.HEARTBEAT, Sender.WORKER, 4, {}),
    ("worker.broker.heartbeat", Kind.HEARTBEAT, Sender.BROKER, 3, {}),
    ("worker.disconnect", Kind.DISCONNECT, Sender.WORKER, 5, {}),
    ("worker.broker.disconnect", Kind.DISCONNECT, Sender.BROKER, 4,
     {"code": "forbidden", "message": "wordcount is offered at level 3"}),
]


def build_worker_vectors() -> list[dict]:
    return [vector(name, VECTOR_KEY, Header(Channel.WORKER, kind, sender, VECTOR_SID, counter),
                   encode_worker_body(kind, fields), VECTOR_NONCE, fields)
            for name, kind, sender, counter, fields in WORKER_VECTORS]


@pytest.mark.parametrize("v", load("worker"), ids=lambda v: v["name"])
def test_worker_vector_body_codec_both_ways(v):
    kind = Kind(v["header"]["kind"])
    assert encode_worker_body(kind, v["fields"]).hex() == v["body"]
    assert decode_worker_body(kind, bytes.fromhex(v["body"])) == v["fields"]


def test_worker_vectors_cover_every_message_kind():
    assert load("worker") == build_worker_vectors()


if __name__ == "__main__":  # regenerate docs/vectors/worker.json (only when the format changes)
    write("worker", build_worker_vectors())


def test_replayed_reply_is_dropped_without_an_answer_or_detaching_the_worker(core):
    w, ana, bob = attached(core), client(core, "ana"), client(core, "bob")
    request = request_to(w, ana.call("upper"))
    frames = w.worker_frames(Kind.REPLY, {"id": request["id"], "ok": True, "result": "A"})
    assert ana.answer(only(core.handle(w.identity, frames, T0), ana.identity)) == "A"
    assert core.handle(w.identity, frames, T0) == []  # no second answer, no DISCONNECT
    assert request_to(w, bob.call("upper"))["caller"]["username"] == "bob"  # still attached
