"""Operator commands tell the true state: re-enrolled, restored, flagged vs revoked, similar
names, usernames never truncated, the audit trail filtered and followed."""

from __future__ import annotations

import json
import threading
import time

import pytest
from rich.console import Console
from typer.testing import CliRunner

from broker.server import init_broker
from broker.store import Store
from cli.app import app
from cli.broker_cmd import principals_table
from tests.conftest import PASSWORD

runner = CliRunner()


@pytest.fixture(autouse=True)
def broker_dir(tmp_path):
    """tmp_path holds a broker, as after `agora broker init` (admin commands need one)."""
    init_broker(tmp_path)
    return tmp_path


def admin(data_dir, *args: str):
    return runner.invoke(app, ["admin", *args, "--data-dir", str(data_dir)])


def states(data_dir) -> dict[str, str]:
    rows = json.loads(admin(data_dir, "list", "--json").stdout)
    return {r["username"]: r["state"] for r in rows}


def test_enrolling_the_same_name_twice_is_refused_without_allow_similar(tmp_path):
    assert admin(tmp_path, "enroll", "--name", "Ana Lima", "--level", "2").exit_code == 0
    result = admin(tmp_path, "enroll", "--name", "Ana  Lima", "--level", "2")
    assert result.exit_code == 1
    assert result.stderr == ("error: ana.lima is already enrolled (Ana Lima); add "
                             "--allow-similar to enroll another as ana.lima2\n")
    assert list(states(tmp_path)) == ["ana.lima"]
    result = admin(tmp_path, "enroll", "--name", "Ana Lima", "--level", "2", "--allow-similar",
                   "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert (data["username"], data["similar_to"]) == ("ana.lima2", "ana.lima")
    result = admin(tmp_path, "enroll", "--name", "Ana Lima", "--level", "2", "--allow-similar")
    assert "  note: ana.lima was taken, so this one is ana.lima3\n" in result.stdout


def test_a_name_with_nothing_in_a_to_z_needs_a_chosen_username(tmp_path):
    result = admin(tmp_path, "enroll", "--name", "李伟", "--level", "2")
    assert result.exit_code == 1
    assert result.stderr == ("error: '李伟' gives no username (it has no letter a-z or "
                             "digit); choose one with --username\n")
    assert states(tmp_path) == {}
    result = admin(tmp_path, "enroll", "--name", "李伟", "--username", "li.wei", "--level",
                   "2", "--json")
    assert result.exit_code == 0, result.stderr
    assert (json.loads(result.stdout)["username"], json.loads(result.stdout)["similar_to"]
            ) == ("li.wei", None)
    rows = json.loads(admin(tmp_path, "list", "--json").stdout)
    assert [(r["username"], r["name"]) for r in rows] == [("li.wei", "李伟")]


@pytest.mark.parametrize("username", ["Li.Wei", "li..wei", ".li", "li.", "li wei", "li_wei",
                                      "a" * 33, ""])
def test_a_malformed_chosen_username_is_refused_and_enrolls_nothing(tmp_path, username):
    result = admin(tmp_path, "enroll", "--name", "Li Wei", "--username", username, "--level",
                   "2")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: username ") and "e.g. li.wei" in result.stderr
    assert states(tmp_path) == {}


def test_a_chosen_username_that_is_taken_is_refused_even_with_allow_similar(tmp_path):
    assert admin(tmp_path, "enroll", "--name", "Ana Lima", "--level", "2").exit_code == 0
    result = admin(tmp_path, "enroll", "--name", "Ana Souza", "--username", "ana.lima",
                   "--allow-similar", "--level", "2")
    assert result.exit_code == 1
    assert result.stderr == "error: ana.lima is already enrolled (Ana Lima)\n"
    assert list(states(tmp_path)) == ["ana.lima"]


def test_reenroll_shows_awaiting_registration_and_login_says_register_force(broker, tmp_path):
    agent = broker.agent("Ana Lima", login=False)
    result = admin(broker.data_dir, "reenroll", "ana.lima")
    assert result.exit_code == 0
    assert result.stdout.startswith("ana.lima: re-enrolled; awaiting registration with a new "
                                    "one-time ID")
    assert states(broker.data_dir)["ana.lima"] == "re-enrolled, awaiting registration"
    env = {"AGORA_HOME": str(agent.home), "AGORA_PASSWORD": PASSWORD,
           "AGORA_BROKER": broker.endpoint}
    result = runner.invoke(app, ["login"], env=env)
    assert result.exit_code == 1
    assert result.stderr == ("error: you were re-enrolled: run `agora register --force` with "
                             "the new one-time ID [re-enrolled]\n")


def test_reenroll_does_not_lift_a_revocation_restore_does(tmp_path):
    admin(tmp_path, "enroll", "--name", "Bruno Costa", "--level", "2")
    admin(tmp_path, "revoke", "bruno.costa")
    result = admin(tmp_path, "reenroll", "bruno.costa")
    assert result.exit_code == 1
    assert result.stderr == (
        "error: bruno.costa is revoked; re-enrolling does not lift that: run 'agora admin "
        "restore bruno.costa' to lift the revocation and issue a new one-time ID\n")
    assert states(tmp_path)["bruno.costa"] == "revoked"
    result = admin(tmp_path, "restore", "bruno.costa", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["state"] == "enrolled"
    assert states(tmp_path)["bruno.costa"] == "enrolled"
    result = admin(tmp_path, "restore", "bruno.costa")
    assert (result.exit_code, result.stderr) == (
        1, "error: bruno.costa is not revoked; to replace lost keys run 'agora admin "
           "reenroll bruno.costa'\n")


def test_peers_writing_to_someone_flagged_are_told_flagged_not_revoked(broker):
    ana = broker.agent("Ana Lima")
    broker.agent("Bruno Costa")
    broker.admin.flag("bruno.costa", "token reuse detected", time.time())
    env = {"AGORA_HOME": str(ana.home), "AGORA_PASSWORD": PASSWORD,
           "AGORA_BROKER": broker.endpoint}
    result = runner.invoke(app, ["send", "bruno.costa", "hello"], env=env)
    assert result.exit_code == 1
    assert result.stderr == ("error: bruno.costa is flagged (locked after token reuse until "
                             "the operator re-enrolls them) [flagged]\n")
    broker.admin.revoke("bruno.costa", time.time())
    result = runner.invoke(app, ["send", "bruno.costa", "hello"], env=env)
    assert result.stderr == "error: bruno.costa is revoked [revoked]\n"


def test_admin_list_never_truncates_usernames_on_80_columns():
    rows = [{"username": "bruno.costa.pereira.magalhaes", "name": "Bruno Costa Pereira "
             "Magalhães", "kind": "person", "level": 2, "state": "re-enrolled, awaiting "
             "registration", "flagged": None, "port": 50123, "last_login_at": time.time()}]
    console = Console(width=80, record=True)
    console.print(principals_table(rows))
    text = console.export_text()
    assert "bruno.costa.pereira.magalhaes " in text
    assert "…" not in text


def test_audit_filters_by_principal_decision_and_since(tmp_path):
    admin(tmp_path, "enroll", "--name", "Ana Lima", "--level", "2")
    admin(tmp_path, "enroll", "--name", "Bruno Costa", "--level", "2")
    admin(tmp_path, "revoke", "nobody")
    admin(tmp_path, "revoke", "bruno.costa")

    def rows(*args: str) -> list[tuple[str, str, str]]:
        result = admin(tmp_path, "audit", "--json", *args)
        assert result.exit_code == 0, result.stderr
        return [(r["username"], r["action"], r["outcome"])
                for r in reversed(json.loads(result.stdout))]

    assert rows("--principal", "bruno.costa") == [("bruno.costa", "enroll", "ok"),
                                                  ("bruno.costa", "revoke", "ok")]
    assert rows("--decision", "ok", "--since", "1h") == [
        ("ana.lima", "enroll", "ok"), ("bruno.costa", "enroll", "ok"),
        ("bruno.costa", "revoke", "ok")]
    assert rows("--since", "2999-01-01 00:00") == []


def test_audit_follow_prints_rows_as_they_are_written(tmp_path):
    admin(tmp_path, "enroll", "--name", "Ana Lima", "--level", "2")

    def later() -> None:
        time.sleep(0.3)
        store = Store(tmp_path / "broker.db")  # another process's connection, as it were
        store.revoke("ana.lima", time.time())
        store.db.close()

    writer = threading.Thread(target=later)
    writer.start()
    result = admin(tmp_path, "audit", "--follow", "--max-time", "1.5", "--json")
    writer.join()
    assert result.exit_code == 0
    actions = [json.loads(line)["action"] for line in result.stdout.splitlines()]
    assert actions == ["enroll", "revoke"]
