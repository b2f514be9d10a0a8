"""What a person types: the standard-input rule, new-password rules, Ctrl-C, and the words
agora uses about offline messages and unknown peers."""

from __future__ import annotations

import signal
import subprocess

import pytest
from typer.testing import CliRunner

from agora.protocol import PrincipalKind
from cli.app import app
from tests.conftest import PASSWORD, AgoraProcess, agora_command, agora_env

runner = CliRunner()


def env_of(broker, agent, **extra: str) -> dict[str, str]:
    return {"AGORA_HOME": str(agent.home), "AGORA_BROKER": broker.endpoint,
            "AGORA_PASSWORD": "", **extra}


def test_piped_password_then_text_is_sent_and_login_says_it_waits(broker):
    ana = broker.agent("Ana Lima", login=False)
    carla = broker.agent("Carla Dias", login=False)
    # printf 'pw\ntext\n' | agora send carla.dias
    result = runner.invoke(app, ["send", "carla.dias"], input=f"{PASSWORD}\nsee you at 3\n",
                           env=env_of(broker, ana))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == (
        "Not delivered now (carla.dias is offline (no listening session)): left in the "
        "broker's mailbox, end-to-end encrypted, for 7 days. carla.dias gets it at their next "
        "`agora listen` or `agora chat`; `agora login` tells them it waits.\n")
    result = runner.invoke(app, ["login"], input=f"{PASSWORD}\n", env=env_of(broker, carla))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[1] == (
        "1 message left for you while you were offline; `agora listen` or `agora chat` shows "
        "them")
    carla.login(PASSWORD)
    messages, _ = carla.peer.wait(1.0)
    assert [(m.sender, m.text) for m in messages] == [("ana.lima", "see you at 3")]


def register(broker, tmp_path, stdin: str, name: str = "Ana Lima"):
    username, otid = broker.enroll(name)
    result = runner.invoke(app, ["register", "--username", username, "--one-time-id", otid,
                                 "--fingerprint", broker.fingerprint],
                           input=stdin.replace("OTID", otid),
                           env={"AGORA_HOME": str(tmp_path / "home"), "AGORA_PASSWORD": "",
                                "AGORA_BROKER": broker.endpoint})
    return result, tmp_path / "home" / "credentials.json"


def test_piped_register_reads_the_password_and_its_confirmation(broker, tmp_path):
    result, creds = register(broker, tmp_path, f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Registered as ana.lima")
    assert creds.exists()


@pytest.mark.parametrize("stdin,line", [
    (f"{PASSWORD}\nsomething else\n", "error: the two passwords differ; nothing was written"),
    (f"{PASSWORD}\n", "error: a new password is given twice: put it on the first two lines "
                      "of standard input (or set AGORA_PASSWORD)"),
    ("short\nshort\n", "error: the password must be at least 12 characters (a passphrase "
                       "of a few words is easiest to remember)"),
    ("OTID\nOTID\n", "error: the password must not be the one-time ID (it is on paper)"),
])
def test_a_refused_new_password_is_one_line_and_writes_nothing(broker, tmp_path, stdin, line):
    result, creds = register(broker, tmp_path, stdin)
    assert (result.exit_code, result.stderr) == (1, line + "\n")
    assert not creds.exists()


def test_the_username_is_refused_as_password(broker, tmp_path):
    result, creds = register(broker, tmp_path, "bartholomew.costa\nbartholomew.costa\n",
                             name="Bartholomew Costa")
    assert (result.exit_code, result.stderr) == (
        1, "error: the password must not be your username\n")
    assert not creds.exists()


def test_help_states_the_standard_input_rule():
    for command in ("send", "chat", "register", "login"):
        text = " ".join(runner.invoke(app, [command, "--help"]).stdout.split())
        assert "Standard input: without a terminal, the password is its first line" in text


def test_chat_with_a_user_who_does_not_exist_is_refused_before_it_opens(broker):
    ana = broker.agent("Ana Lima", login=False)
    result = runner.invoke(app, ["chat", "nobdy.typo"], input=f"{PASSWORD}\n",
                           env=env_of(broker, ana))
    assert (result.exit_code, result.stderr) == (
        1, "error: unknown user 'nobdy.typo' [unknown-user]\n")
    assert "Chatting" not in result.stdout


@pytest.mark.parametrize("command", [("listen",), ("chat", "bruno.costa")])
def test_ctrl_c_ends_listen_and_chat_with_130_and_no_error_line(broker, command):
    ana = broker.agent("Ana Lima", login=False)
    broker.agent("Bruno Costa", kind=PrincipalKind.PERSON, login=False)
    env = agora_env(AGORA_HOME=str(ana.home), AGORA_BROKER=broker.endpoint,
                    AGORA_PASSWORD=PASSWORD)
    proc = AgoraProcess(list(command), env, stdin=subprocess.PIPE)  # chat: input stays open
    try:
        proc.expect(r"^(Listening|Chatting) ")
        proc.popen.send_signal(signal.SIGINT)
        assert proc.popen.wait(15) == 130
        assert not any("error" in line for line in proc.stderr_lines), proc.stderr_lines
    finally:
        proc.kill()
        proc.popen.stdin.close()


def test_a_service_name_too_long_is_refused_in_one_line_before_sending(broker):
    ana = broker.agent("Ana Lima", login=False)
    result = runner.invoke(app, ["call", "x" * 300],
                           env=env_of(broker, ana, AGORA_PASSWORD=PASSWORD))
    assert (result.exit_code, result.stderr) == (
        1, "error: service name must be 1-255 bytes of UTF-8\n")  # was an "unexpected" error


@pytest.mark.parametrize("args", [
    ["call", "echo", "text=caf\udcc3"], ["call", "ech\udcc3"], ["send", "bob.reis", "caf\udcc3"],
    ["admin", "enroll", "--name", "Ana\udcc3", "--level", "2"], ["admin", "revoke", "ana\udcc3"],
], ids=["call-args", "call-name", "send-text", "enroll-name", "revoke-username"])
def test_a_command_line_argument_that_is_not_utf8_is_a_usage_error_in_one_line(tmp_path, args):
    # A command line's bytes that are not UTF-8 reach Python as lone surrogates ("\udcc3");
    # every command met them as an "unexpected" UnicodeEncodeError somewhere inside.
    result = runner.invoke(app, args, env={"AGORA_HOME": str(tmp_path),
                                           "AGORA_BROKER_DIR": str(tmp_path)})
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("error: argument ") and line.endswith("\\xc3 is not valid UTF-8 text")


def test_a_message_on_stdin_that_is_not_utf8_is_refused_in_one_line(broker):
    # In a UTF-8 locale Python reads stdin strictly: the read itself raised.
    ana = broker.agent("Ana Lima", login=False)
    broker.agent("Bob Reis", login=False)
    env = agora_env(AGORA_HOME=str(ana.home), AGORA_BROKER=broker.endpoint,
                    AGORA_PASSWORD=PASSWORD, PYTHONIOENCODING="utf-8:strict")
    sent = subprocess.run([*agora_command(), "send", "bob.reis"], input=b"caf\xc3\n", env=env,
                          capture_output=True, timeout=30)
    assert (sent.returncode, sent.stderr) == (
        1, b"error: the message is not text (it holds bytes that are not UTF-8)\n")
