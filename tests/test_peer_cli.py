"""``agora listen``, ``agora send`` and ``agora chat`` as real processes against a broker."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time

from typer.testing import CliRunner

from cli.app import app
from cli.peer_cmd import send_lines
from tests.conftest import PASSWORD, agora_command, agora_env, run_agora
from tests.test_peer import Listening


def homes(broker, *names: str) -> list[str]:
    """Register collaborators in-process (not logged in); return their home directories."""
    return [str(broker.agent(name, login=False).home) for name in names]


def test_listen_prints_what_send_delivers_and_send_reports_delivery(broker, procs):
    ana_home, bob_home = homes(broker, "Ana Lima", "Bob Reis")
    env = agora_env(AGORA_PASSWORD=PASSWORD, AGORA_BROKER=broker.endpoint)
    listener = procs("listen", "--home", bob_home, env=env)
    listener.expect(r"Listening as bob\.reis on port \d+")

    sent = run_agora("send", "bob.reis", "olá from a process", "--home", ana_home, env=env)
    assert sent.returncode == 0, sent.stderr
    assert "Delivered to bob.reis" in sent.stdout
    listener.expect(r"\d\d:\d\d:\d\d ana\.lima: olá from a process")

    piped = run_agora("send", "bob.reis", "--home", ana_home, "--json", env=env,
                      input="from stdin\n")
    assert piped.returncode == 0, piped.stderr
    receipt = json.loads(piped.stdout)
    assert (receipt["to"], receipt["delivered"], receipt["seq"]) == ("bob.reis", True, 1)
    listener.expect(r"ana\.lima: from stdin")

    assert listener.terminate() == 0  # SIGTERM: logs out cleanly
    offline = run_agora("send", "bob.reis", "anyone?", "--home", ana_home, "--no-queue",
                        env=env)
    assert offline.returncode == 1
    assert offline.stderr.strip() == "error: bob.reis is offline (no listening session)"


def test_message_to_offline_user_waits_in_the_mailbox_until_they_listen(broker, procs):
    ana_home, bob_home = homes(broker, "Ana Lima", "Bob Reis")
    env = agora_env(AGORA_PASSWORD=PASSWORD, AGORA_BROKER=broker.endpoint)
    queued = run_agora("send", "bob.reis", "while you were out", "--home", ana_home, env=env)
    assert queued.returncode == 0, queued.stderr
    assert queued.stdout == (
        "Not delivered now (bob.reis is offline (no listening session)): left in the broker's "
        "mailbox, end-to-end encrypted, for 7 days. bob.reis gets it at their next `agora "
        "listen` or `agora chat`; `agora login` tells them it waits.\n")
    listener = procs("listen", "--home", bob_home, "--json", env=env)
    assert json.loads(listener.expect(r"^\{.*listening.*").group(0))["listening"] == "bob.reis"
    msg = json.loads(listener.expect(r"^\{.*while you were out.*").group(0))
    assert (msg["from"], msg["text"], msg["conversation"]) == ("ana.lima", "while you were out",
                                                                "mailbox")


def test_send_lines_streams_each_line_as_a_message(broker, procs):
    ana_home, bob_home = homes(broker, "Ana Lima", "Bob Reis")
    env = agora_env(AGORA_PASSWORD=PASSWORD, AGORA_BROKER=broker.endpoint)
    listener = procs("listen", "--home", bob_home, "--json", env=env)
    listener.expect(r"^\{.*listening.*")
    sent = run_agora("send", "bob.reis", "--lines", "--json", "--home", ana_home, env=env,
                     input="first\n\nsecond\nthird\n")
    assert sent.returncode == 0, sent.stderr
    summary = json.loads(sent.stdout)
    assert (summary["messages"], summary["delivered"], summary["queued"]) == (3, 3, 0)
    assert [r["seq"] for r in summary["receipts"]] == [1, 2, 3]
    texts = [json.loads(listener.expect(r"^\{.*ana\.lima.*").group(0))["text"]
             for _ in range(3)]
    assert texts == ["first", "second", "third"]


def test_send_lines_that_stop_half_way_say_how_many_went_through(broker, monkeypatch):
    ana_home, _ = homes(broker, "Ana Lima", "Bob Reis")  # bob offline: letters
    monkeypatch.setattr("broker.mailbox.MAILBOX_MAX_LETTERS", 2)
    env = agora_env(AGORA_PASSWORD=PASSWORD, AGORA_BROKER=broker.endpoint)
    result = run_agora("send", "bob.reis", "--lines", "--home", ana_home, env=env,
                       input="one\ntwo\nthree\n")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "[mailbox-full]" in line
    assert line.endswith("(after 2 of 3 messages went through)")


def test_send_lines_sums_up_for_a_person_what_arrived(broker, capsys):
    ana, bob = broker.agent("Ana Lima"), broker.agent("Bob Reis")
    with Listening(bob) as inbox:
        send_lines(ana, "bob.reis", ["one", "two"], 2.0, queue=True, json_out=False)
        inbox.wait_for(2)
    assert re.fullmatch(r"Delivered 2 messages to bob\.reis in [\d.]+ ms\n",
                        capsys.readouterr().out)


def test_send_lines_sums_up_for_a_person_what_waits_in_the_mailbox(broker, capsys):
    ana = broker.agent("Ana Lima")
    broker.agent("Bob Reis", login=False)  # offline: letters
    send_lines(ana, "bob.reis", ["one", "two"], 2.0, queue=True, json_out=False)
    out = " ".join(capsys.readouterr().out.split())  # soft-wrapped to the terminal
    assert re.fullmatch(r"2 messages not delivered now \(.+\): left in the broker's mailbox, "
                        r"end-to-end encrypted, for \d+ days\.", out), out


def test_send_to_unknown_user_says_so_in_one_line(broker):
    [ana_home] = homes(broker, "Ana Lima")
    env = agora_env(AGORA_PASSWORD=PASSWORD, AGORA_BROKER=broker.endpoint)
    result = run_agora("send", "nobody", "hi", "--home", ana_home, env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: unknown user 'nobody' [unknown-user]"


def test_chat_sends_typed_lines_and_shows_replies(broker):
    [ana_home] = homes(broker, "Ana Lima")
    bob = broker.agent("Bob Reis")
    env = agora_env(AGORA_PASSWORD=PASSWORD, AGORA_BROKER=broker.endpoint)
    chat = subprocess.Popen([*agora_command(), "chat", "bob.reis", "--home", ana_home],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(chat.stdout), daemon=True).start()
    try:
        with Listening(bob) as inbox:
            deadline = time.monotonic() + 20
            while not any("Chatting with bob.reis" in line for line in lines):
                assert time.monotonic() < deadline and chat.poll() is None, chat.stderr.read()
                time.sleep(0.05)
            chat.stdin.write("hi Bob\n")
            chat.stdin.flush()
            [msg] = inbox.wait_for(1, timeout=10)
        assert (msg.sender, msg.text) == ("ana.lima", "hi Bob")
        bob.send("ana.lima", "hi Ana")  # rides on the conversation ana's chat opened
        deadline = time.monotonic() + 10
        while not any("bob.reis: hi Ana" in line for line in lines):
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
        chat.stdin.close()  # Ctrl-D ends the chat
        assert chat.wait(10) == 0
    finally:
        if chat.poll() is None:
            chat.kill()
            chat.wait(5)


def test_peer_commands_explain_themselves():
    for command, phrase in (("listen", "as they arrive"), ("send", "--no-queue"),
                            ("chat", "Ctrl-D")):
        result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and phrase in result.output
