"""agents.pipeline: one caller with several session requests in flight over a DEALER."""

from __future__ import annotations

import time

import pytest

from agents import examples
from agents.pipeline import Pipeline, is_error
from agents.worker import run_worker
from agora.errors import BrokerUnreachable, LocalError, RemoteError
from agora.protocol import ErrorCode, PrincipalKind
from tests import sample_workers


@pytest.fixture
def worker_of(broker):
    started = []

    def start(service, handler):
        agent = broker.agent(f"{service} worker {len(started)}", 3,
                             kind=PrincipalKind.SERVICE)
        broker.bind(service, agent.username, 1)
        started.append(run_worker(agent, service, handler, 1))

    yield start
    for w in started:
        w.stop.set()
    for w in started:
        w.thread.join(timeout=5)


def test_answers_are_matched_to_their_requests_by_counter(broker):
    ana = broker.agent("Ana Lima")
    with ana.pipeline(depth=8) as pipe:
        sent = {pipe.send("echo", {"n": i}): i for i in range(20)}
        answers = {}
        while pipe.in_flight:
            counter, answer = pipe.receive()
            answers[counter] = answer
    assert {c: a["n"] for c, a in answers.items()} == sent
    assert ana.call("echo", {"after": 1}) == {"after": 1}  # the session goes on


def test_call_many_keeps_order_and_a_refusal_does_not_disturb_the_others(broker):
    ana = broker.agent("Ana Lima")
    answers = ana.call_many([("echo", {"n": 0}), ("no.such", None), ("echo", {"n": 2})],
                            depth=3)
    assert answers[0] == {"n": 0} and answers[2] == {"n": 2}
    assert is_error(answers[1]) and isinstance(answers[1], RemoteError)
    assert answers[1].code is ErrorCode.UNKNOWN_SERVICE and answers[1].authenticated


def test_worker_routed_calls_in_flight_together_are_each_answered(broker, worker_of):
    worker_of("upper", examples.upper)
    worker_of("upper", examples.upper)
    ana = broker.agent("Ana Lima")
    calls = [("upper", {"text": f"w{i}"}) for i in range(16)]
    calls[5] = ("upper", {"txt": "typo"})  # the worker refuses this one alone
    answers = ana.call_many(calls, depth=8)
    assert answers[5].code is ErrorCode.BAD_REQUEST
    assert [a for i, a in enumerate(answers) if i != 5] == [
        f"W{i}" for i in range(16) if i != 5]


def test_a_request_that_gets_no_answer_is_given_up_at_its_deadline(broker, worker_of):
    worker_of("slow", sample_workers.slow)
    ana = broker.agent("Ana Lima")
    with Pipeline(ana, depth=4, timeout=0.4, retries=1) as pipe:
        slow = pipe.send("slow", {"seconds": 1.5})
        fast = pipe.send("echo", {"x": 1})
        with pytest.raises(TimeoutError):
            pipe.receive(timeout=0)  # nothing answered yet: a bounded wait, not a hang
        assert pipe.receive() == (fast, {"x": 1})
        started = time.monotonic()
        counter, answer = pipe.receive()
        assert counter == slow and isinstance(answer, BrokerUnreachable)
        assert time.monotonic() - started < 1.2
        with pytest.raises(LocalError):
            pipe.receive()  # nothing in flight


def test_depth_is_bounded():
    class LoggedIn:
        session = object()

    for depth in (0, 17):
        with pytest.raises(LocalError):
            Pipeline(LoggedIn(), depth=depth)  # type: ignore[arg-type]


def test_a_request_past_its_deadline_is_sent_again_and_answered_once(broker, worker_of,
                                                                     caplog):
    worker_of("slow", sample_workers.slow)
    ana = broker.agent("Ana Lima")
    with caplog.at_level("INFO", "agora.worker"), \
            Pipeline(ana, depth=2, timeout=0.3, retries=3) as pipe:
        counter = pipe.send("slow", {"seconds": 0.5})  # outlives one deadline, not three
        assert pipe.receive() == (counter, "done")
    # The same octets again: the broker knew the call was still being served.
    assert caplog.text.count("slow call started") == 1


def test_a_reply_that_does_not_open_is_dropped_and_its_request_stays_in_flight(broker):
    from agora.envelope import Header, seal
    from agora.protocol import Channel, Kind, Sender

    ana = broker.agent("Ana Lima")
    with Pipeline(ana, depth=2) as pipe:
        counter = pipe.send("echo", {"x": 1})
        forged = seal(bytes(32), Header(Channel.CLIENT, Kind.RESULT, Sender.BROKER,
                                        ana.session.sid, counter), b'{"x": 666}')
        for frames in ([b"", forged], [b"", b"junk"], [forged], [b"", forged, b"x"]):
            assert pipe._open(frames) is None
        assert pipe.in_flight == 1
        assert pipe.receive() == (counter, {"x": 1})
