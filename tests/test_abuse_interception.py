"""Issue 10, no silent interception with a stolen credentials file: a running listener learns
of a new login as its principal at once, the operator sees both sessions, and the directory
keeps sending peers to the listener that was there first (docs/PROTOCOL.md 5.2)."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest

from agents import Agent
from broker import admin
from cli.agent_cmd import new_login_line
from tests.conftest import PASSWORD, run_agora
from tests.test_service_cli import broker_process, enroll_and_register, ok


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def stolen(broker, owner: Agent, name: str = "thief") -> Agent:
    """A thief's agent: a copy of the owner's credentials file (the password is known)."""
    home = broker.data_dir.parent / name
    shutil.copytree(owner.home, home)
    thief = Agent(home, broker=broker.endpoint, context=broker.context, timeout=2.0)
    broker.agents.append(thief)
    return thief


def test_a_listener_learns_of_a_new_login_at_once_and_keeps_its_peers(broker):
    owner = broker.agent("Ana Lima")  # logged in, listening
    stream = owner.subscribe()  # as `agora listen` does
    thief = stolen(broker, owner)
    thief.login(PASSWORD, listen=True)
    notices = wait_for(lambda: [n for n in stream.poll(0.2) if n.type == "new-login"])
    assert notices and notices[0].fields["listening"] is True
    bob = broker.agent("Bob Reis", login=True)
    entry = bob.call("lookup", {"username": owner.username})
    assert entry["port"] == owner.info.port != thief.info.port  # today: the thief's
    stream.close()


def test_the_operator_sees_every_live_session_of_a_principal(broker):
    owner = broker.agent("Ana Lima")
    stolen(broker, owner).login(PASSWORD, listen=True)

    def sessions():
        rows = {r["username"]: r for r in admin.principal_rows(broker.admin)}
        return rows["ana.lima"]["sessions"] if len(rows["ana.lima"]["sessions"]) == 2 else []

    live = wait_for(sessions)
    assert [s["listening"] for s in live] == [True, True]
    assert all(s["started_at"] and s["session"] for s in live)


def test_without_a_subscribed_listener_the_newest_listening_session_gets_peers(broker):
    owner = broker.agent("Ana Lima")  # listening, but not subscribed (an older client)
    second = stolen(broker, owner, "second")
    second.login(PASSWORD, listen=True)
    bob = broker.agent("Bob Reis")
    assert bob.call("lookup", {"username": owner.username})["port"] == second.info.port


@pytest.mark.time_limit(90)
def test_agora_listen_prints_a_new_login_as_you(tmp_path, procs):
    broker, env = broker_process(procs, tmp_path)
    enroll_and_register(env, "Ana Lima", 3, "person", tmp_path / "ana")
    listener = procs("listen", env=dict(env, AGORA_HOME=str(tmp_path / "ana")))
    listener.expect("Listening as ana.lima")
    shutil.copytree(tmp_path / "ana", tmp_path / "thief")
    thief = procs("listen", env=dict(env, AGORA_HOME=str(tmp_path / "thief")))
    thief.expect("Listening as ana.lima")
    line = re.compile(r"a new login as you from another process at \d\d:\d\d — if this was "
                      "not you, tell your operator")
    assert wait_for(lambda: any(line.search(x) for x in listener.stderr_lines)), \
        listener.stderr_lines[-3:]

    def two_sessions():
        rows = json.loads(ok(run_agora("admin", "list", "--json", env=env)))
        return [r for r in rows if r["username"] == "ana.lima" and len(r["sessions"]) == 2]

    assert wait_for(two_sessions)
    table = ok(run_agora("admin", "list", env=env))
    assert "2: " in table  # both sessions, in the live-sessions column


def test_the_new_login_line_says_when_and_what_to_do():
    at = time.mktime((2026, 3, 4, 9, 7, 0, 0, 0, -1))
    assert new_login_line(at) == ("a new login as you from another process at 09:07 — if "
                                  "this was not you, tell your operator")
