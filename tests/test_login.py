"""Login over real sockets: token rotation, reuse detection, replays, broker restarts."""

from __future__ import annotations

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
