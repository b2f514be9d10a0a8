"""The offline mailbox: letters kept by the broker as ciphertext, shown once at next login."""

from __future__ import annotations

import logging
import time

import pytest

from agents import Agent
from agora.crypto import b64
from agora.errors import RemoteError
from agora.protocol import MAX_LETTER_SIZE, ErrorCode
from tests.conftest import PASSWORD
from tests.test_peer import Listening


def mailbox_rows(broker) -> list[dict]:
    return list(broker.admin.db.query("select * from mailbox order by id"))


def relogin(broker, agent: Agent) -> Agent:
    """The same collaborator in a new process: new Agent object, same home directory."""
    agent.logout()
    agent.close()
    again = Agent(agent.home, broker=broker.endpoint, context=broker.context, timeout=2.0)
    broker.agents.append(again)
    again.login(PASSWORD)
    return again


@pytest.fixture
def ana_and_offline_bob(broker):
    return broker.agent("Ana Lima"), broker.agent("Bob Reis", login=False)


def test_message_to_offline_user_is_shown_at_their_next_login(broker, ana_and_offline_bob):
    ana, bob = ana_and_offline_bob
    receipt = ana.send("bob.reis", "while you were out")
    assert receipt.queued and "offline" in receipt.reason
    bob.login(PASSWORD)
    with Listening(bob) as inbox:
        [msg] = inbox.wait_for(1)
    assert (msg.sender, msg.text, msg.conversation) == ("ana.lima", "while you were out",
                                                        "mailbox")
    assert mailbox_rows(broker) == []  # deleted once the agent has it


def test_broker_stores_only_ciphertext_attributed_to_the_session(broker, ana_and_offline_bob):
    ana, _ = ana_and_offline_bob
    ana.send("bob.reis", "the secret plan")
    [row] = mailbox_rows(broker)
    assert (row["sender"], row["recipient"]) == ("ana.lima", "bob.reis")
    assert b"secret plan" not in row["sealed"]


def test_letter_replayed_by_the_broker_is_dropped(broker, ana_and_offline_bob, caplog):
    ana, bob = ana_and_offline_bob
    ana.send("bob.reis", "only once")
    [row] = mailbox_rows(broker)
    bob.login(PASSWORD)
    with Listening(bob) as inbox:
        inbox.wait_for(1)
    broker.admin.db["mailbox"].insert(row)  # a malicious broker puts it back
    bob = relogin(broker, bob)  # a new process: what it has seen comes from its home
    with caplog.at_level(logging.WARNING, "agora.peer"), Listening(bob) as inbox:
        inbox.wait_for(1, timeout=0.5)
    assert inbox.received == [] and "letter replayed" in caplog.text


def test_letter_attributed_to_another_sender_is_dropped(broker, ana_and_offline_bob, caplog):
    ana, bob = ana_and_offline_bob
    broker.agent("Carol Dias")
    ana.send("bob.reis", "from ana")
    broker.admin.db.execute("update mailbox set sender = 'carol.dias'")
    broker.admin.db.conn.commit()
    bob.login(PASSWORD)
    with caplog.at_level(logging.WARNING, "agora.peer"), Listening(bob) as inbox:
        inbox.wait_for(1, timeout=0.5)
    assert inbox.received == [] and "could not be authenticated" in caplog.text


def test_letters_from_a_sender_revoked_since_are_dropped(broker, ana_and_offline_bob, caplog):
    ana, bob = ana_and_offline_bob
    ana.send("bob.reis", "sent before the revocation")
    broker.admin.revoke("ana.lima", time.time())
    bob.login(PASSWORD)
    with caplog.at_level(logging.WARNING, "agora.peer"), Listening(bob) as inbox:
        deadline = time.monotonic() + 5
        while mailbox_rows(broker) and time.monotonic() < deadline:
            time.sleep(0.01)
        inbox.wait_for(1, timeout=0.2)
    assert inbox.received == [] and "no longer in the directory" in caplog.text
    assert mailbox_rows(broker) == []  # dropped for good, not fetched again and again


def test_full_mailbox_refuses_more_letters(broker, ana_and_offline_bob, monkeypatch):
    ana, _ = ana_and_offline_bob
    monkeypatch.setattr("broker.mailbox.MAILBOX_MAX_LETTERS", 2)
    ana.send("bob.reis", "one")
    ana.send("bob.reis", "two")
    with pytest.raises(RemoteError) as exc:
        ana.send("bob.reis", "three")
    assert exc.value.code is ErrorCode.MAILBOX_FULL
    assert len(mailbox_rows(broker)) == 2


def test_oversized_letter_is_refused(ana_and_offline_bob):
    ana, _ = ana_and_offline_bob
    with pytest.raises(RemoteError) as exc:
        ana.call("mailbox_deposit", {"to": "bob.reis",
                                     "sealed": b64(bytes(MAX_LETTER_SIZE + 1))})
    assert exc.value.code is ErrorCode.TOO_LARGE


def test_letter_for_unknown_user_is_refused(ana_and_offline_bob):
    ana, bob = ana_and_offline_bob
    letter = ana.peer.core.letter("nobody", bytes(bob.private_key.public_key), "hi",
                                  time.time())
    with pytest.raises(RemoteError) as exc:
        ana.call("mailbox_deposit", {"to": "nobody", "sealed": b64(letter)})
    assert exc.value.code is ErrorCode.UNKNOWN_USER


@pytest.mark.parametrize("junk", [bytes(100), b"AG\x02\x03\x16\x04" + bytes(94)],
                         ids=["not-an-envelope", "a-peer-message"])
def test_deposit_that_is_not_a_letter_envelope_is_refused(broker, ana_and_offline_bob, junk):
    ana, _ = ana_and_offline_bob
    with pytest.raises(RemoteError) as exc:
        ana.call("mailbox_deposit", {"to": "bob.reis", "sealed": b64(junk)})
    assert exc.value.code is ErrorCode.BAD_REQUEST
    assert not broker.admin.db["mailbox"].exists()


@pytest.mark.parametrize("upto", [2**63, -1, 2**70], ids=["past-sqlite", "negative", "huge"])
def test_deleting_up_to_an_id_no_row_can_have_is_a_bad_request_and_deletes_nothing(
        broker, ana_and_offline_bob, upto, caplog):
    ana, bob = ana_and_offline_bob
    ana.send("bob.reis", "kept")
    with caplog.at_level(logging.INFO), pytest.raises(RemoteError) as exc:
        relogin(broker, bob).call("mailbox_delete", {"upto": upto})
    assert exc.value.code is ErrorCode.BAD_REQUEST and "an id from 0 to 2^63-1" in str(exc.value)
    assert len(mailbox_rows(broker)) == 1
    assert not any(r.exc_info for r in caplog.records)  # a user's mistake: no traceback


def test_letters_can_only_be_fetched_by_their_recipient(broker, ana_and_offline_bob):
    ana, _ = ana_and_offline_bob
    ana.send("bob.reis", "for bob only")
    assert ana.call("mailbox_fetch", {})["letters"] == []
    ana.call("mailbox_delete", {"upto": 10**9})
    assert len(mailbox_rows(broker)) == 1
