"""``agora admin ui``: the operator's console changes the store as ``agora admin`` does."""

from __future__ import annotations

import pytest

from agora.errors import RemoteError
from agora.protocol import ErrorCode
from tests.webui_helpers import PORT, console_client, post
from webui.hub import EventHub
from webui.operator import OperatorConsole, operator_app
from webui.security import Access


@pytest.fixture
def operator(broker):
    hub = EventHub()
    console = OperatorConsole(broker.data_dir, hub)
    console.start()
    access = Access(PORT)
    client = console_client(operator_app(console, access), access)
    yield client, access, console
    client.close()
    console.close()


def test_page_carries_the_csrf_value_and_never_the_token(operator):
    client, access, _ = operator
    page = client.get("/")
    assert page.status_code == 200
    assert access.csrf in page.text and access.token not in page.text
    assert "operator console" in page.text


def test_enroll_shows_the_one_time_id_once_and_lists_the_principal(operator, broker):
    client, access, _ = operator
    answer = post(client, access, {"action": "enroll", "name": "Ana Lima", "level": "3"})
    assert answer.status_code == 200, answer.text
    enrolled = answer.json()
    assert enrolled["username"] == "ana.lima" and enrolled["fingerprint"] == broker.fingerprint
    assert len(enrolled["one_time_id"]) > 10
    state = client.get("/api/state").json()
    (row,) = [p for p in state["principals"] if p["username"] == "ana.lima"]
    assert (row["level"], row["kind"], row["state"]) == (3, "person", "enrolled")
    assert enrolled["one_time_id"] not in client.get("/api/state").text  # shown once only
    # The one-time ID works: the collaborator registers with it.
    audit = state["audit"][0]
    assert (audit["username"], audit["action"], audit["outcome"]) == ("ana.lima", "enroll", "ok")


def test_revoke_ends_the_running_session_as_agora_admin_revoke_does(operator, broker):
    client, access, _ = operator
    agent = broker.agent("Bruno Costa")
    answer = post(client, access, {"action": "revoke", "username": "bruno.costa"})
    assert answer.status_code == 200 and "revoked" in answer.json()["message"]
    broker.wait_for_store_sync()
    with pytest.raises(RemoteError) as err:
        agent.whoami()
    assert err.value.code is ErrorCode.REVOKED
    (row,) = client.get("/api/state").json()["principals"]
    assert row["state"] == "revoked" and row["revoked"]


def test_set_level_reaches_the_live_session(operator, broker):
    client, access, _ = operator
    agent = broker.agent("Carla Dias", level=2)
    answer = post(client, access, {"action": "set-level", "username": "carla.dias",
                                   "level": "secret"})
    assert answer.status_code == 200 and "level 4" in answer.json()["message"]
    broker.wait_for_store_sync()
    assert agent.whoami()["level"] == 4


def test_reenroll_needs_the_username_typed_as_confirmation(operator, broker):
    client, access, _ = operator
    broker.agent("Dora Reis")
    refused = post(client, access, {"action": "reenroll", "username": "dora.reis",
                                    "confirm": "dora"})
    assert refused.status_code == 400
    assert refused.json()["error"] == "re-enrolling dora.reis needs confirmation: type the " \
        "username"
    done = post(client, access, {"action": "reenroll", "username": "dora.reis",
                                 "confirm": "dora.reis"})
    assert done.status_code == 200 and done.json()["one_time_id"]


def test_enroll_takes_a_chosen_username_and_refuses_a_malformed_one(operator):
    client, access, _ = operator
    refused = post(client, access, {"action": "enroll", "name": "李伟", "level": "3"})
    assert refused.status_code == 400 and "--username" in refused.json()["error"]
    malformed = post(client, access, {"action": "enroll", "name": "李伟", "level": "3",
                                      "username": "Li Wei"})
    assert malformed.status_code == 400 and "e.g. li.wei" in malformed.json()["error"]
    assert client.get("/api/state").json()["principals"] == []
    answer = post(client, access, {"action": "enroll", "name": "李伟", "level": "3",
                                   "username": "li.wei"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["username"] == "li.wei"
    blank = post(client, access, {"action": "enroll", "name": "Ana Lima", "level": "3",
                                  "username": ""})  # the form's empty field: made from the name
    assert blank.json()["username"] == "ana.lima"


def test_store_refusals_are_one_line_errors_and_change_nothing(operator):
    client, access, _ = operator
    unknown = post(client, access, {"action": "revoke", "username": "nobody"})
    assert (unknown.status_code, unknown.json()) == (400, {"error": "no such user: nobody"})
    bad_level = post(client, access, {"action": "enroll", "name": "Eva", "level": "7"})
    assert bad_level.status_code == 400 and "level" in bad_level.json()["error"]
    bad_kind = post(client, access, {"action": "enroll", "name": "Eva", "level": "2",
                                     "kind": "robot"})
    assert bad_kind.json() == {"error": "kind must be one of: person, service"}
    assert client.get("/api/state").json()["principals"] == []


def test_audit_filters_by_principal_and_decision(operator, broker):
    client, access, console = operator
    broker.agent("Ana Lima")
    broker.agent("Bruno Costa")
    console.store.audit("ana.lima", "login", "refused", "bad-credentials", 1.0)
    only_ana = client.get("/api/state", params={"principal": "ana.lima"}).json()["audit"]
    assert only_ana and {r["username"] for r in only_ana} == {"ana.lima"}
    refused = client.get("/api/state", params={"decision": "refused"}).json()["audit"]
    assert [(r["username"], r["outcome"]) for r in refused] == [("ana.lima", "refused")]
    bad = client.get("/api/state", params={"decision": "maybe"})
    assert bad.status_code == 400


def test_changes_by_other_connections_are_announced_live(operator, broker):
    _, _, console = operator
    seen = []
    console.hub.publish = lambda kind, data=None: seen.append(kind)  # type: ignore[method-assign]
    broker.enroll("Fabio Lopes")  # another connection, as `agora admin enroll` is
    for _ in range(40):
        if seen:
            break
        console.stop.wait(0.1)
    assert "changed" in seen


def test_admin_ui_refuses_a_directory_without_a_broker(tmp_path):
    from tests.conftest import run_agora

    out = run_agora("admin", "ui", "--no-browser", "--data-dir", str(tmp_path / "none"))
    assert out.returncode == 1
    assert out.stderr.strip().startswith(f"error: no broker at {tmp_path / 'none'}: start one")
    assert not (tmp_path / "none").exists()


def test_admin_ui_on_a_port_in_use_says_so_in_one_line(tmp_path):
    import socket

    from broker.server import init_broker
    from tests.conftest import run_agora

    init_broker(tmp_path / "broker")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = run_agora("admin", "ui", "--no-browser", "--port", str(port), "--data-dir",
                        str(tmp_path / "broker"), timeout=30)
    assert out.returncode == 1
    assert out.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_a_revocation_is_lifted_only_by_restore_confirmed(operator, broker):
    client, access, _ = operator
    broker.agent("Gil Reis")
    assert post(client, access, {"action": "revoke", "username": "gil.reis"}).status_code == 200
    again = post(client, access, {"action": "reenroll", "username": "gil.reis",
                                  "confirm": "gil.reis"})
    assert again.status_code == 400 and "restore" in again.json()["error"]
    unconfirmed = post(client, access, {"action": "restore", "username": "gil.reis"})
    assert unconfirmed.json() == {"error": "restoring gil.reis needs confirmation: type the "
                                  "username"}
    restored = post(client, access, {"action": "restore", "username": "gil.reis",
                                     "confirm": "gil.reis"})
    assert restored.status_code == 200 and restored.json()["one_time_id"]
    (row,) = client.get("/api/state").json()["principals"]
    assert not row["revoked"]
