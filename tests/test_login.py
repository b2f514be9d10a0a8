"""Login over real sockets: token rotation, reuse detection, replays, broker restarts."""

from __future__ import annotations

from agents import Agent
from agora.errors import RemoteError, WrongPassword
from agora.protocol import ErrorCode
from tests.conftest import PASSWORD


def test_login_rotates_token_and_records_port(broker):
    agent = broker.agent("Ana Lima", level=3)
    first_token = agent.credentials.token
    info = agent.login()
    assert agent.file.reload().token != first_token
    assert broker.admin.get(info.username)["port"] == info.port


def test_whoami_reports_stored_level_and_session(broker):
    agent = broker.agent("Ana Lima", level=4)
    me = agent.whoami()
    assert (me["username"], me["level"], me["session"]) == ("ana.lima", 4, agent.info.session)


def test_wrong_password_leaves_credentials_file_untouched(broker):
    agent = broker.agent("Ana Lima", login=False)
    before = agent.file.path.read_bytes()
    try:
        agent.login("not the password")
    except WrongPassword:
        pass
    else:
        raise AssertionError("wrong password accepted")
    assert agent.file.path.read_bytes() == before
    agent.login(PASSWORD)


def test_reused_token_revokes_sessions_and_flags_user(broker):
    agent = broker.agent("Ana Lima")
    stolen = agent.file.reload()  # a copy of the credentials file, as a thief would take
    agent.login()  # the owner logs in again: the stolen token is now an old one
    thief = broker.agent("Bob Thief", login=False)  # any agent object will do as a shell
    thief.credentials = stolen
    thief.file.save(stolen)
    try:
        thief.login()
    except RemoteError as exc:
        assert exc.code is ErrorCode.TOKEN_REUSED
    else:
        raise AssertionError("old token accepted")
    assert broker.admin.get("ana.lima")["flagged"]
    try:
        agent.whoami()
    except RemoteError as exc:
        assert exc.code in (ErrorCode.UNKNOWN_SESSION, ErrorCode.FLAGGED)
    else:
        raise AssertionError("session survived token reuse")


def test_one_shot_session_does_not_hide_a_listening_one_from_the_directory(broker):
    listener = broker.agent("Ana Lima")  # logged in with listen=True (the default)
    one_shot = Agent(listener.home, broker=broker.endpoint, context=broker.context, timeout=2)
    broker.agents.append(one_shot)
    one_shot.unlock(PASSWORD)
    one_shot.login(listen=False)
    bob = broker.agent("Bob Stone")
    entry = bob.call("lookup", {"username": "ana.lima"})
    assert entry["online"] and entry["port"] == listener.info.port


def test_only_non_listening_sessions_mean_offline_for_peers(broker):
    ana = broker.agent("Ana Lima", login=False)
    ana.login(PASSWORD, listen=False)
    bob = broker.agent("Bob Stone")
    assert bob.call("lookup", {"username": "ana.lima"})["online"] is False


def test_login_again_keeps_the_session_not_listening(broker):
    agent = broker.agent("Ana Lima", login=False)
    agent.login(PASSWORD, listen=False)
    agent.login()  # as a worker does after a broker restart
    assert broker.server.core.sessions.get(agent.session.sid).listening is False
    broker.server.core.sessions.end(agent.session.sid)
    agent.whoami()  # unknown session: the agent logs in again by itself
    assert broker.server.core.sessions.get(agent.session.sid).listening is False

