"""Issue 10, sessions: capped per principal (the oldest ended, audited), indexed by username."""

from __future__ import annotations

import os

from agora.protocol import Level, PrincipalKind
from broker.sessions import FailureLimiter, SessionTable
from tests.test_broker_core import CoreWorld


def open_session(table: SessionTable, username: str, now: float, listening: bool = False):
    return table.open(username, PrincipalKind.PERSON, Level(3), os.urandom(32), 0,
                      "127.0.0.1", now, listening)


def test_sessions_past_the_cap_end_the_oldest_one_shot_session_first():
    table = SessionTable(max_per_user=3)
    listener = open_session(table, "ana", 1.0, listening=True)
    a, b = open_session(table, "ana", 2.0), open_session(table, "ana", 3.0)
    c = open_session(table, "ana", 4.0)
    assert table.take_displaced() == [a]
    d = open_session(table, "ana", 5.0)
    assert table.take_displaced() == [b]
    assert table.of_user("ana") == [listener, c, d]
    assert len(table) == 3 and table.get(a.sid) is None
    open_session(table, "bob", 6.0)  # another principal's count is their own
    assert table.take_displaced() == []


def test_only_listening_sessions_left_the_oldest_one_goes():
    table = SessionTable(max_per_user=2)
    first, second = (open_session(table, "ana", t, listening=True) for t in (1.0, 2.0))
    third = open_session(table, "ana", 3.0, listening=True)
    assert table.take_displaced() == [first]
    assert table.of_user("ana") == [second, third]


class NoScan(dict):
    """A by_id that fails the test if anyone walks every session."""

    def values(self):
        raise AssertionError("scanned every session")

    def __iter__(self):
        raise AssertionError("scanned every session")


def test_a_principals_sessions_are_found_without_scanning_everyone():
    table = SessionTable()
    for i in range(2000):
        open_session(table, f"user{i}", 1.0)
    mine = open_session(table, "ana", 2.0)
    table.by_id = NoScan(table.by_id)
    assert table.of_user("ana") == [mine]
    assert table.end_user("ana") == [mine] and table.of_user("ana") == []
    assert table.end(table.of_user("user7")[0].sid).username == "user7"


def test_a_login_past_the_cap_ends_the_oldest_session_and_audits_it(tmp_path, zctx):
    world = CoreWorld(tmp_path, zctx)
    world.core.sessions.max_per_user = 2
    agent = world.agent(login=False)
    sids = []
    for _ in range(3):
        agent.login("correct horse battery staple", listen=False)
        sids.append(world.core.sessions.of_user("ana.lima")[-1].sid)
    live = [s.sid for s in world.core.sessions.of_user("ana.lima")]
    assert live == sids[1:]
    world.core.tick(world.clock.now)
    assert ("session", "ended") in world.audit_actions("ana.lima")
    agent.close()


def test_a_full_failure_limiter_counts_new_names_together_and_drops_no_live_count():
    limiter = FailureLimiter(limit=2, window=60.0, max_keys=2)
    for key in ("ana", "bob"):
        limiter.record(key, 1.0)
        limiter.record(key, 2.0)
    for n in range(10):  # more names than it holds: one shared count, nothing evicted
        limiter.record(f"name{n}", 3.0)
    assert limiter.blocked("ana", 4.0) and limiter.blocked("bob", 4.0)
    assert limiter.blocked(FailureLimiter.UNKNOWN, 4.0)
    assert not limiter.blocked("name0", 4.0)  # it has no count of its own: it shares one


def test_a_full_failure_limiter_makes_room_once_counts_are_past_their_window():
    limiter = FailureLimiter(limit=2, window=60.0, max_keys=2)
    limiter.record("ana", 1.0)
    limiter.record("bob", 1.0)
    limiter.record("cy", 100.0)  # ana's and bob's failures no longer block anything
    limiter.record("cy", 100.0)
    assert limiter.blocked("cy", 101.0) and not limiter.blocked("ana", 101.0)
    assert len(limiter) == 1
