"""A running command is told at once when the broker ends its session, and says so in one
line: `agora listen` and `agora chat` as real processes against a real broker."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from agents import Agent
from agora.errors import RemoteError
from agora.protocol import ErrorCode, PrincipalKind
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
