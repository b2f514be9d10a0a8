"""A running command is told at once when the broker ends its session, and says so in one
line: `agora listen` and `agora chat` as real processes against a real broker."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import pytest

from agents import Agent
from agents.notices import Notice
from agora.errors import RemoteError
from agora.protocol import ErrorCode, Level, PrincipalKind
from cli.agent_cmd import SessionGuard
from tests.conftest import PASSWORD, AgoraProcess, agora_env


def start(broker, agent, *command: str) -> AgoraProcess:
    env = agora_env(AGORA_HOME=str(agent.home), AGORA_BROKER=broker.endpoint,
                    AGORA_PASSWORD=PASSWORD)
    proc = AgoraProcess(list(command), env, stdin=subprocess.PIPE)  # chat: input stays open
    proc.expect(r"^(Listening|Chatting) ")
    return proc


def ended_line(proc: AgoraProcess) -> tuple[int, list[str]]:
    try:
        code = proc.popen.wait(15)
    finally:
        proc.kill()
        proc.popen.stdin.close()
    return code, [line for line in proc.stderr_lines if not line.startswith("INFO")]


def test_listen_is_told_at_once_when_a_copy_of_its_token_is_used(broker, tmp_path):
    ana = broker.agent("Ana Lima", login=False)
    copy = tmp_path / "thief"
    shutil.copytree(ana.home, copy)  # the credentials file, stolen before the next login
    proc = start(broker, ana, "listen")
    thief = Agent(copy, broker=broker.endpoint, context=broker.context, timeout=2.0)
    with pytest.raises(RemoteError) as refused:
        thief.login(PASSWORD)  # presents the token `listen` has just rotated away
    thief.close()
    assert refused.value.code is ErrorCode.TOKEN_REUSED
    started = time.monotonic()
    code, lines = ended_line(proc)
    assert code == 1
    assert lines == ["your session was ended: your token was used from another copy — see "
                     "your operator"]
    assert time.monotonic() - started < 10  # at once, not at the next session expiry


def test_chat_is_told_when_the_operator_revokes(broker):
    ana = broker.agent("Ana Lima", login=False)
    broker.agent("Bruno Costa", login=False)
    proc = start(broker, ana, "chat", "bruno.costa")
    broker.admin.revoke("ana.lima", time.time())
    code, lines = ended_line(proc)
    assert (code, lines) == (1, ["your session was ended: the operator revoked your access"])


def test_worker_is_told_when_the_operator_revokes_its_principal(broker):
    worker = broker.agent("Upper Worker", kind=PrincipalKind.SERVICE, login=False)
    broker.bind("upper", worker.username, 2)
    env = agora_env(AGORA_HOME=str(worker.home), AGORA_BROKER=broker.endpoint,
                    AGORA_PASSWORD=PASSWORD)
    proc = AgoraProcess(["worker", "run", "agents.examples:upper", "--service", "upper",
                         "--level", "2"], env, stdin=subprocess.PIPE)
    proc.expect("worker ready")
    broker.admin.revoke("upper.worker", time.time())
    code, lines = ended_line(proc)
    assert (code, lines[-1:]) == (1, ["your session was ended: the operator revoked your "
                                      "access"])


# -- SessionGuard's decisions, without a broker ------------------------------------------------

def guard() -> tuple[SessionGuard, threading.Event]:
    stop = threading.Event()
    return SessionGuard(agent=None, stop=stop), stop  # not started: _handle is called directly


def test_a_level_change_is_told_on_stderr_and_the_command_goes_on(capsys):
    watching, stop = guard()
    watching._handle(Notice("level-changed", {"type": "level-changed", "level": 2}))
    assert capsys.readouterr().err.splitlines() == [
        f"note: the operator changed your level to 2 ({Level(2).label})"]
    assert not stop.is_set() and watching.ended is None


@pytest.mark.parametrize("fields", [{"level": 9}, {"level": "2"}, {"level": True}, {}])
def test_a_level_change_with_a_level_out_of_range_is_still_told_in_one_line(fields, capsys):
    watching, stop = guard()
    watching._handle(Notice("level-changed", {"type": "level-changed", **fields}))
    assert capsys.readouterr().err.splitlines() == [
        "note: the operator changed your level to a level this agora does not know"]
    assert not stop.is_set()


@pytest.mark.parametrize("at", ["noon", None, [1], True, float("nan"), 1e300, -5])
def test_a_new_login_notice_with_a_malformed_time_is_told_with_the_time_it_came(at, capsys):
    watching, _ = guard()
    watching._handle(Notice("new-login", {"type": "new-login", "at": at}))
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("a new login as you from another process at ")


@pytest.mark.parametrize("reason", ["revoked", "token-reused"])
def test_a_session_ended_by_the_broker_stops_the_command_and_keeps_why(reason):
    watching, stop = guard()
    notice = Notice("session-ended", {"type": "session-ended", "reason": reason})
    watching._handle(notice)
    assert stop.is_set() and watching.ended is notice and watching.wait_ended(0)


@pytest.mark.parametrize("notice", [
    Notice("session-ended", {"type": "session-ended", "reason": "logged-out"}),
    Notice("session-ended", {"type": "session-ended", "reason": "revoked"},
           authenticated=False),
], ids=["own-logout", "unauthenticated"])
def test_an_own_logout_or_an_unauthenticated_notice_stops_nothing(notice, capsys):
    watching, stop = guard()
    watching._handle(notice)
    assert not stop.is_set() and watching.ended is None and capsys.readouterr().err == ""
