"""The operator and collaborator commands through Typer's CliRunner: exit codes and text."""

from __future__ import annotations

import inspect
import json
import logging
import os
import threading

import pytest
from typer.testing import CliRunner

from broker.server import init_broker
from cli.app import app
from tests.conftest import PASSWORD

runner = CliRunner()


@pytest.fixture(autouse=True)
def broker_dir(tmp_path):
    """tmp_path holds a broker, as after `agora broker init` (admin commands need one)."""
    init_broker(tmp_path)
    return tmp_path


def invoke(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env, catch_exceptions=False)


def test_help_lists_command_groups():
    result = invoke("--help")
    assert result.exit_code == 0
    for word in ("broker", "admin", "register", "login", "whoami"):
        assert word in result.stdout


def test_every_help_text_reads_cleanly_on_an_80_column_terminal():
    # Typer keeps the line breaks of a help text's later paragraphs, so a line longer than
    # the 76 columns Rich has inside its frame, when another line follows it, wraps and
    # leaves a ragged short line before the break.
    import click
    from typer.main import get_command

    def commands(command: click.Command, path: str):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from commands(sub, f"{path} {name}")

    too_long = [(path, line) for path, command in commands(get_command(app), "agora")
                for paragraph in inspect.cleandoc(command.help or "").split("\n\n")[1:]
                for line in paragraph.splitlines()[:-1] if len(line) > 76]
    assert too_long == []


def test_enroll_prints_username_one_time_id_and_fingerprint(tmp_path):
    result = invoke("admin", "enroll", "--name", "Ana Lima", "--level", "confidential",
                    "--data-dir", str(tmp_path), "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["username"] == "ana.lima" and data["level"] == 3
    assert len(data["one_time_id"]) == 29 and len(data["fingerprint"]) == 39


def test_enroll_with_unknown_level_fails_with_one_line(tmp_path):
    result = invoke("admin", "enroll", "--name", "Ana", "--level", "ultra",
                    "--data-dir", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: unknown level 'ultra': use 1-5 or a name"


def test_set_level_out_of_range_fails_with_one_line(tmp_path):
    invoke("admin", "enroll", "--name", "Ana Lima", "--level", "2", "--data-dir", str(tmp_path))
    result = invoke("admin", "set-level", "ana.lima", "9", "--data-dir", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: unknown level '9': use 1-5 or a name"


def test_revoke_unknown_user_fails_with_one_line(tmp_path):
    result = invoke("admin", "revoke", "nobody", "--data-dir", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: no such user: nobody"


def test_admin_list_shows_state_and_level(tmp_path):
    invoke("admin", "enroll", "--name", "Ana Lima", "--level", "2", "--data-dir", str(tmp_path))
    invoke("admin", "enroll", "--name", "Bob Stone", "--level", "5", "--data-dir", str(tmp_path))
    invoke("admin", "revoke", "bob.stone", "--data-dir", str(tmp_path))
    invoke("admin", "set-level", "ana.lima", "4", "--data-dir", str(tmp_path))
    rows = json.loads(invoke("admin", "list", "--data-dir", str(tmp_path), "--json").stdout)
    assert [(r["username"], r["level"], r["state"]) for r in rows] == [
        ("ana.lima", 4, "enrolled"), ("bob.stone", 5, "revoked")]


def test_admin_list_json_holds_no_secrets(tmp_path):
    invoke("admin", "enroll", "--name", "Ana Lima", "--level", "2", "--data-dir", str(tmp_path))
    text = invoke("admin", "list", "--data-dir", str(tmp_path), "--json").stdout
    for word in ("one_time_id", "token", "symmetric", "hash"):
        assert word not in text


def test_admin_on_a_directory_without_a_broker_refuses_and_creates_nothing(tmp_path):
    typo = tmp_path / "brokr"
    for args in (["list"], ["enroll", "--name", "Ana Lima", "--level", "2"],
                 ["revoke", "ana.lima"], ["audit"]):
        result = invoke("admin", *args, "--data-dir", str(typo))
        assert result.exit_code == 1
        assert result.stderr.strip() == (
            f"error: no broker at {typo}: start one with `agora broker start --data-dir "
            f"{typo}` or `agora broker init`")
    assert not typo.exists()


@pytest.fixture
def root_logging():
    """`broker start` configures the root logger for its process; here, in the test's
    process, put it back so no handler is left writing to a closed CliRunner stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_damaged_broker_database_is_refused_in_one_line_and_left_as_it_is(tmp_path,
                                                                           root_logging):
    invoke("broker", "init", "--data-dir", str(tmp_path))
    database = tmp_path / "broker.db"
    database.write_bytes(b"not a database, and longer than SQLite's header check")
    for args in (["admin", "list"], ["admin", "enroll", "--name", "Ana Lima", "--level", "2"],
                 ["broker", "start", "--bind", "tcp://127.0.0.1:0"]):
        result = invoke(*args, "--data-dir", str(tmp_path))
        assert result.exit_code == 1, result.stdout
        line = result.stderr.strip()
        assert "\n" not in line and "unexpected" not in line, line
        assert f"cannot open the database {database}: file is not a database" in line
    assert database.read_bytes() == b"not a database, and longer than SQLite's header check"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broker.db", "broker.key",
                                                           "broker.lock"]


def test_a_database_whose_key_is_lost_is_refused_and_no_new_key_is_made(tmp_path,
                                                                         root_logging):
    invoke("admin", "enroll", "--name", "Ana Lima", "--level", "2", "--data-dir",
           str(tmp_path))  # handed a fingerprint face to face
    (tmp_path / "broker.key").unlink()
    for args in (["admin", "list"], ["broker", "init"],
                 ["broker", "start", "--bind", "tcp://127.0.0.1:0"]):
        result = invoke(*args, "--data-dir", str(tmp_path))
        assert result.exit_code == 1, result.stdout
        assert result.stderr.strip().endswith(
            f"{tmp_path / 'broker.db'} exists but its key {tmp_path / 'broker.key'} is "
            "missing: restore the key from a backup, or move the database aside to start a "
            "new broker"), result.stderr
    assert not (tmp_path / "broker.key").exists()


def test_a_second_broker_on_the_same_data_directory_is_refused_until_the_first_stops(
        tmp_path):
    from broker.server import BrokerServer
    from tests.conftest import run_agora

    first = BrokerServer(tmp_path, "tcp://127.0.0.1:0")
    try:
        # A process of its own, bounded: were it not refused, it would serve until killed.
        result = run_agora("broker", "start", "--data-dir", str(tmp_path), "--bind",
                           "tcp://127.0.0.1:0", timeout=20)
        assert result.returncode == 1
        assert result.stderr.strip() == (f"error: cannot start broker: another broker is "
                                         f"already running on {tmp_path} (pid {os.getpid()})")
        assert invoke("admin", "list", "--data-dir", str(tmp_path)).exit_code == 0
    finally:
        first.close()
    BrokerServer(tmp_path, "tcp://127.0.0.1:0").close()  # the lock went with the first


def test_broker_init_creates_a_broker_once(tmp_path):
    first = json.loads(invoke("broker", "init", "--data-dir", str(tmp_path / "b"),
                              "--json").stdout)
    again = json.loads(invoke("broker", "init", "--data-dir", str(tmp_path / "b"),
                              "--json").stdout)
    assert (first["created"], again["created"]) == (True, False)
    assert first["fingerprint"] == again["fingerprint"]
    enrolled = json.loads(invoke("admin", "enroll", "--name", "Ana Lima", "--level", "2",
                                 "--data-dir", str(tmp_path / "b"), "--json").stdout)
    assert enrolled["fingerprint"] == first["fingerprint"]


def test_processes_racing_to_create_a_broker_make_one_key(tmp_path):
    fresh, barrier, fingerprints = tmp_path / "new", threading.Barrier(8), []

    def create() -> None:
        barrier.wait()
        keys, _ = init_broker(fresh)
        fingerprints.append(keys.fingerprint)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(fingerprints) == 8 and len(set(fingerprints)) == 1


def test_register_login_whoami_through_cli(broker, tmp_path):
    username, otid = broker.enroll("Ana Lima", level=3)
    env = {"AGORA_HOME": str(tmp_path / "ana"), "AGORA_PASSWORD": PASSWORD,
           "AGORA_BROKER": broker.endpoint}
    result = invoke("register", "--username", username, "--one-time-id", otid,
                    "--fingerprint", broker.fingerprint, env=env)
    assert result.exit_code == 0, result.stderr
    assert "Registered as ana.lima" in result.stdout
    result = invoke("login", "--json", env=env)
    assert result.exit_code == 0 and json.loads(result.stdout)["username"] == "ana.lima"
    me = json.loads(invoke("whoami", "--json", env=env).stdout)
    assert (me["username"], me["level"]) == ("ana.lima", 3)
    assert PASSWORD not in result.stdout


def test_register_with_wrong_fingerprint_fails_and_writes_nothing(broker, tmp_path):
    username, otid = broker.enroll("Ana Lima")
    env = {"AGORA_HOME": str(tmp_path / "ana"), "AGORA_PASSWORD": PASSWORD,
           "AGORA_BROKER": broker.endpoint}
    result = invoke("register", "--username", username, "--one-time-id", otid,
                    "--fingerprint", "1111-2222-3333-4444-5555-6666-7777-8888", env=env)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: broker key fingerprint mismatch")
    assert not (tmp_path / "ana" / "credentials.json").exists()


def test_login_with_wrong_password_is_one_line_and_file_untouched(broker, tmp_path):
    agent = broker.agent("Ana Lima", login=False)
    before = agent.file.path.read_bytes()
    env = {"AGORA_HOME": str(agent.home), "AGORA_PASSWORD": "wrong",
           "AGORA_BROKER": broker.endpoint}
    result = invoke("login", env=env)
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: wrong password (credentials file left untouched)"
    assert agent.file.path.read_bytes() == before


def test_login_without_registration_says_what_to_do(tmp_path):
    result = invoke("login", env={"AGORA_HOME": str(tmp_path), "AGORA_PASSWORD": "x"})
    assert result.exit_code == 1
    assert "run 'agora register' first" in result.stderr


def test_no_password_and_no_terminal_is_one_line(broker, tmp_path):
    agent = broker.agent("Ana Lima", login=False)
    result = runner.invoke(app, ["login"], input="", env={"AGORA_HOME": str(agent.home),
                                                         "AGORA_PASSWORD": "",
                                                         "AGORA_BROKER": broker.endpoint})
    assert result.exit_code == 1
    assert result.stderr.strip() == ("error: no password: set AGORA_PASSWORD, pipe it on "
                                     "standard input, or run in a terminal")


def test_password_can_be_piped_on_standard_input(broker, tmp_path):
    agent = broker.agent("Ana Lima", login=False)
    result = runner.invoke(app, ["whoami", "--json"], input=PASSWORD + "\n",
                           env={"AGORA_HOME": str(agent.home), "AGORA_PASSWORD": "",
                                "AGORA_BROKER": broker.endpoint})
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["username"] == "ana.lima"


def test_unreachable_broker_is_one_line(tmp_path):
    result = invoke("register", "--username", "a", "--one-time-id", "b", "--fingerprint", "c",
                    "--timeout", "0.2",
                    env={"AGORA_HOME": str(tmp_path), "AGORA_PASSWORD": PASSWORD,
                         "AGORA_BROKER": "tcp://127.0.0.1:9"})
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: broker unreachable at tcp://127.0.0.1:9")
