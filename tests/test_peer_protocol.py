"""The peer protocol core without sockets: set-up, sealing, sequence numbers, replays.

Two :class:`PeerEndpoint` objects are linked in memory (like h11's ConnectionPair); the
clock is a number passed in.
"""

from __future__ import annotations

import pytest

from agents.peer_protocol import (
    Acked,
    Closed,
    PeerEndpoint,
    PeerMessage,
    Refused,
)
from agora.crypto import PrivateKey
from agora.envelope import Header, seal
from agora.errors import MessageTooLarge, ProtocolError, RemoteError, UnauthenticatedRefusal
from agora.protocol import MAILBOX_TTL, MAX_PEER_TEXT, Channel, ErrorCode, Kind, Sender
from tests.peer_vectors import ANA, BOB, CODECS, KEY, letter_vectors, peer_vectors
from tests.vectors import load

NOW = 1_800_000_000.0


class Pair:
    """Ana (initiator) and Bob (listener) with a directory that maps names to keys."""

    def __init__(self) -> None:
        self.keys = {name: PrivateKey.generate() for name in ("ana", "bob", "mallory")}
        self.directory = {name: bytes(k.public_key) for name, k in self.keys.items()}
        self.ana = PeerEndpoint("ana", self.keys["ana"])
        self.bob = PeerEndpoint("bob", self.keys["bob"])

    def connect(self, now: float = NOW):
        pending = self.ana.hello("bob", self.directory["bob"], now)
        hello = self.bob.parse_hello(pending.frames)
        bob_side = self.bob.accept(hello, self.directory[hello.sender], now)
        ana_side, port = self.ana.welcome_received(
            pending, self.bob.welcome(bob_side, hello, 4242), now)
        assert port == 4242
        return ana_side, bob_side


@pytest.fixture
def pair() -> Pair:
    return Pair()


def test_message_is_delivered_and_acknowledged(pair):
    ana, bob = pair.connect()
    seq, _, frames = ana.message("olá, Bob", NOW)
    events, replies = bob.handle(frames, NOW + 0.01)
    assert events == [PeerMessage("ana", "olá, Bob", NOW, NOW + 0.01, seq, bob.short_id)]
    acks, more = ana.handle(replies[0], NOW + 0.02)
    assert (acks, more, ana.acked) == ([Acked(seq)], [], seq)


def test_both_sides_can_send_on_one_conversation(pair):
    ana, bob = pair.connect()
    _, _, frames = bob.message("reply", NOW)
    events, replies = ana.handle(frames, NOW)
    assert events[0].sender == "bob" and events[0].text == "reply"
    assert bob.handle(replies[0], NOW)[0] == [Acked(1)]


def test_receive_gives_the_ack_before_settle_shows_the_message(pair):
    ana, bob = pair.connect()
    seq, _, frames = ana.message("first the ACK", NOW)
    ack, arrival = bob.receive(frames, NOW)
    assert ana.handle([ack], NOW)[0] == [Acked(seq)]  # usable before settle() ran
    assert bob.settle(arrival) == [PeerMessage("ana", "first the ACK", NOW, NOW, seq,
                                               bob.short_id)]


def test_each_message_in_a_row_gets_the_ack_of_its_own_number(pair):
    ana, bob = pair.connect()
    for _ in range(3):  # from the second on, the ACK was sealed ahead by settle()
        seq, _, frames = ana.message("next", NOW)
        _, replies = bob.handle(frames, NOW)
        assert ana.handle(replies[0], NOW)[0] == [Acked(seq)] and ana.acked == seq


def test_ack_sealed_ahead_is_not_given_to_a_later_number(pair):
    ana, bob = pair.connect()
    bob.handle(ana.message("one", NOW)[2], NOW)  # bob now holds the ACK of 2, sealed ahead
    ana.message("two, lost on the way", NOW)
    seq, _, frames = ana.message("three", NOW)
    _, replies = bob.handle(frames, NOW)
    assert ana.handle(replies[0], NOW)[0] == [Acked(seq)] and ana.acked == 3


def test_duplicate_message_is_rejected(pair):
    ana, bob = pair.connect()
    _, _, frames = ana.message("once", NOW)
    bob.handle(frames, NOW)
    with pytest.raises(ProtocolError, match="replayed or reordered"):
        bob.handle(frames, NOW)


def test_reordered_message_is_rejected(pair):
    ana, bob = pair.connect()
    _, _, first = ana.message("first", NOW)
    _, _, second = ana.message("second", NOW)
    assert bob.handle(second, NOW)[0][0].text == "second"
    with pytest.raises(ProtocolError, match="replayed or reordered"):
        bob.handle(first, NOW)


def test_message_reflected_to_its_sender_is_rejected(pair):
    ana, _ = pair.connect()
    _, _, frames = ana.message("to bob", NOW)
    with pytest.raises(ProtocolError, match="reflected"):
        ana.handle(frames, NOW)


def test_message_from_another_conversation_is_rejected(pair):
    ana_1, _ = pair.connect()
    _, bob_2 = pair.connect()  # same two keys, so the same Box key: only the id differs
    _, _, frames = ana_1.message("for conversation 1", NOW)
    with pytest.raises(ProtocolError, match="another context"):
        bob_2.handle(frames, NOW)


def test_tampered_message_is_rejected(pair):
    ana, bob = pair.connect()
    _, _, frames = ana.message("pay 10", NOW)
    tampered = bytearray(frames[0])
    tampered[-1] ^= 1
    with pytest.raises(ProtocolError, match="could not be authenticated"):
        bob.handle([bytes(tampered)], NOW)


def test_message_sealed_by_a_third_key_is_rejected(pair):
    _, bob = pair.connect()
    mallory = PeerEndpoint("mallory", pair.keys["mallory"])
    key = mallory.key_for(pair.directory["bob"])  # the box key mallory <-> bob
    header = Header(Channel.PEER, Kind.MESSAGE, Sender.INITIATOR, bob.conversation_id, 1)
    with pytest.raises(ProtocolError, match="could not be authenticated"):
        bob.handle([seal(key, header, bytes(24) + b"hi")], NOW)


@pytest.mark.parametrize(("body", "why"), [
    (bytes(23), "has no message id"),
    (bytes(24) + b"\xff\xfe", "not UTF-8"),
], ids=["shorter-than-its-head", "text-not-utf8"])
def test_an_authentic_but_malformed_message_is_dropped_without_spending_its_number(pair, body,
                                                                                   why):
    ana, bob = pair.connect()
    header = Header(Channel.PEER, Kind.MESSAGE, Sender.INITIATOR, bob.conversation_id, 1)
    with pytest.raises(ProtocolError, match=why):
        bob.handle([seal(bob.key, header, body)], NOW)
    seq, _, frames = ana.message("the real first message", NOW)
    assert seq == 1 and bob.handle(frames, NOW)[0][0].text == "the real first message"


def test_garbage_frames_are_rejected(pair):
    _, bob = pair.connect()
    for frames in ([b"junk"], [b"AGORA01P", b"x" * 80], [b"AG\x02short"], [b"AG\x02" + bytes(80)],
                   [], [b"x" * 80, b"extra"]):
        with pytest.raises(ProtocolError):
            bob.handle(frames, NOW)
    assert bob.received == 0


def test_acknowledgement_of_unsent_message_is_rejected(pair):
    ana, bob = pair.connect()
    bogus_ack = [ana._seal(Kind.ACK, 7, b"")]  # bob has sent nothing
    with pytest.raises(ProtocolError, match="never sent"):
        bob.handle(bogus_ack, NOW)
    assert bob.acked == 0


def test_retransmission_on_a_new_conversation_is_acknowledged_but_shown_once(pair):
    ana_1, bob_1 = pair.connect()
    _, msg_id, frames = ana_1.message("hello", NOW)
    assert len(bob_1.handle(frames, NOW)[0]) == 1  # delivered, but say the ACK was lost
    ana_2, bob_2 = pair.connect(NOW + 3)
    _, _, again = ana_2.message("hello", NOW + 3, msg_id)
    events, replies = bob_2.handle(again, NOW + 3)
    assert events == [] and len(replies) == 1


def test_bye_closes_the_conversation(pair):
    ana, bob = pair.connect()
    assert bob.handle(ana.bye(NOW), NOW) == ([Closed()], [])


def test_oversized_text_is_refused_before_sending(pair):
    ana, _ = pair.connect()
    with pytest.raises(MessageTooLarge):
        ana.message("x" * (MAX_PEER_TEXT + 1), NOW)
    assert ana.send_seq == 0


def refusal_of(endpoint: PeerEndpoint, frames: list[bytes], directory_key: bytes,
               now: float = NOW) -> Refused:
    with pytest.raises(Refused) as exc:
        endpoint.accept(endpoint.parse_hello(frames), directory_key, now)
    return exc.value


def test_hello_with_a_key_that_is_not_the_senders_is_refused_in_clear(pair):
    mallory = PeerEndpoint("ana", pair.keys["mallory"])  # claims to be ana
    pending = mallory.hello("bob", pair.directory["bob"], NOW)
    refused = refusal_of(pair.bob, pending.frames, pair.directory["ana"])
    assert refused.code is ErrorCode.BAD_CREDENTIALS
    with pytest.raises(UnauthenticatedRefusal) as exc:  # nothing proved: sent in clear
        mallory.welcome_received(pending, refused.frames, NOW)
    assert exc.value.code == ErrorCode.BAD_CREDENTIALS


def test_hello_from_a_key_not_in_the_directory_leaves_nothing_remembered(pair):
    mallory = PeerEndpoint("ana", pair.keys["mallory"])
    refusal_of(pair.bob, mallory.hello("bob", pair.directory["bob"], NOW).frames,
               pair.directory["ana"])
    assert len(pair.bob.hellos) == 0
    assert pair.directory["mallory"] not in pair.bob._keys  # no box key kept for it


def test_replayed_hello_is_refused_sealed(pair):
    pending = pair.ana.hello("bob", pair.directory["bob"], NOW)
    pair.bob.accept(pair.bob.parse_hello(pending.frames), pair.directory["ana"], NOW)
    refused = refusal_of(pair.bob, pending.frames, pair.directory["ana"], NOW + 1)
    with pytest.raises(RemoteError) as exc:  # sealed: the initiator can trust the code
        pair.ana.welcome_received(pending, refused.frames, NOW + 1)
    assert not isinstance(exc.value, UnauthenticatedRefusal)
    assert exc.value.code is ErrorCode.REPLAYED


def test_stale_hello_is_refused(pair):
    pending = pair.ana.hello("bob", pair.directory["bob"], NOW - 3600)
    assert refusal_of(pair.bob, pending.frames, pair.directory["ana"]).code is ErrorCode.STALE


def test_stale_hello_does_not_enter_the_replay_guard(pair):
    pending = pair.ana.hello("bob", pair.directory["bob"], NOW - 3600)
    refusal_of(pair.bob, pending.frames, pair.directory["ana"])
    assert len(pair.bob.hellos) == 0


def test_hello_that_does_not_open_does_not_enter_the_replay_guard(pair):
    mallory = PeerEndpoint("ana", pair.keys["mallory"])
    frames = mallory.hello("bob", pair.directory["bob"], NOW).frames
    frames[1] = pair.directory["ana"]  # ana's key as the hint, sealed with mallory's
    assert refusal_of(pair.bob, frames, pair.directory["ana"]).code is ErrorCode.BAD_REQUEST
    assert len(pair.bob.hellos) == 0


def test_hello_for_another_recipient_is_refused(pair):
    carol = PeerEndpoint("carol", pair.keys["bob"])  # same key, other name: not for carol
    pending = pair.ana.hello("bob", pair.directory["bob"], NOW)
    refused = refusal_of(carol, pending.frames, pair.directory["ana"])
    assert refused.code is ErrorCode.BAD_REQUEST and "another sender or recipient" in str(
        refused)


def test_hello_naming_another_sender_is_refused(pair):
    pending = pair.ana.hello("bob", pair.directory["bob"], NOW)
    frames = [b"mallory", *pending.frames[1:]]  # ana's key and envelope, another name
    assert refusal_of(pair.bob, frames, pair.directory["ana"]).code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("frames", [
    [b"junk"],
    [b"", b"ana", bytes(range(32)), b"AG\x02" + bytes(80)],  # an empty delimiter
    [b"", bytes(range(32)), b"AG\x02\x03\x14\x04" + bytes(80)],
    [b"ana", b"short key", b"AG\x02\x03\x14\x04" + bytes(80)],
    [b"\xff\xfe", bytes(range(32)), b"AG\x02\x03\x14\x04" + bytes(80)],
    [b"ana", bytes(range(32)), b"AG\x02\x03\x15\x05" + bytes(80)],  # a WELCOME
    [b"ana", bytes(range(32)), b"AGORA01P"],
], ids=["one-frame", "delimiter", "no-name", "short-key", "name-not-utf8", "welcome",
        "agora1"])
def test_malformed_hello_is_rejected(pair, frames):
    with pytest.raises(ProtocolError):
        pair.bob.parse_hello(frames)


def test_empty_delimiter_on_the_inbox_is_refused_with_a_reason(pair):
    pending = pair.ana.hello("bob", pair.directory["bob"], NOW)
    with pytest.raises(ProtocolError, match="no empty delimiter"):
        pair.bob.parse_hello([b"", *pending.frames])


def test_clear_refusal_is_reported_as_unauthenticated_never_as_an_answer(pair):
    pending = pair.ana.hello("bob", pair.directory["bob"], NOW)
    forged = pair.bob.refuse(ErrorCode.BAD_CREDENTIALS, "not your key",
                             pending.conversation_id, pending.counter)
    with pytest.raises(UnauthenticatedRefusal) as exc:
        pair.ana.welcome_received(pending, forged, NOW)
    assert exc.value.code == ErrorCode.BAD_CREDENTIALS and not isinstance(exc.value,
                                                                          RemoteError)


def test_welcome_for_another_conversation_is_rejected(pair):
    first = pair.ana.hello("bob", pair.directory["bob"], NOW)
    second = pair.ana.hello("bob", pair.directory["bob"], NOW)
    hello = pair.bob.parse_hello(second.frames)
    bob_side = pair.bob.accept(hello, pair.directory["ana"], NOW)
    with pytest.raises(ProtocolError, match="another context"):
        pair.ana.welcome_received(first, pair.bob.welcome(bob_side, hello, 4242), NOW)


def test_hello_reflected_to_the_initiator_is_rejected(pair):
    pending = pair.ana.hello("bob", pair.directory["bob"], NOW)
    with pytest.raises(ProtocolError, match="reflected"):
        pair.ana.welcome_received(pending, pending.frames[2:], NOW)


def test_box_key_is_computed_once_per_peer(pair, monkeypatch):
    import agents.peer_protocol as core

    calls = []
    real = core.box_key
    monkeypatch.setattr(core, "box_key", lambda *a: calls.append(1) or real(*a))
    for _ in range(3):
        pair.connect()
    pair.ana.letter("bob", pair.directory["bob"], "x", NOW)
    # ana: once for bob; bob: once for ana, in its first parse_hello
    assert len(calls) == 2


# -- letters (offline mailbox) ----------------------------------------------------------------

def test_letter_opens_once_for_its_recipient(pair):
    sealed = pair.ana.letter("bob", pair.directory["bob"], "while you were out", NOW)
    msg = pair.bob.open_letter("ana", pair.directory["ana"], sealed, NOW + 60)
    assert (msg.sender, msg.text, msg.sent_at, msg.conversation) == (
        "ana", "while you were out", NOW, "mailbox")
    with pytest.raises(ProtocolError, match="letter replayed"):
        pair.bob.open_letter("ana", pair.directory["ana"], sealed, NOW + 61)


def test_letter_attributed_to_another_sender_does_not_open(pair):
    sealed = PeerEndpoint("mallory", pair.keys["mallory"]).letter(
        "bob", pair.directory["bob"], "it's ana, really", NOW)
    with pytest.raises(ProtocolError, match="could not be authenticated"):
        pair.bob.open_letter("ana", pair.directory["ana"], sealed, NOW)


def test_letter_for_another_recipient_is_rejected(pair):
    carol = PeerEndpoint("carol", pair.keys["bob"])  # same key, other name
    sealed = pair.ana.letter("bob", pair.directory["bob"], "for bob", NOW)
    with pytest.raises(ProtocolError, match="another sender or recipient"):
        carol.open_letter("ana", pair.directory["ana"], sealed, NOW)


def test_letter_older_than_the_mailbox_lifetime_is_rejected(pair):
    sealed = pair.ana.letter("bob", pair.directory["bob"], "ancient", NOW - MAILBOX_TTL - 1)
    with pytest.raises(ProtocolError, match="too old"):
        pair.bob.open_letter("ana", pair.directory["ana"], sealed, NOW)


def test_conversation_message_is_not_accepted_as_a_letter(pair):
    ana, _ = pair.connect()
    _, _, frames = ana.message("in a conversation", NOW)
    with pytest.raises(ProtocolError, match="another agora channel"):
        pair.bob.open_letter("ana", pair.directory["ana"], frames[0], NOW)


def test_letter_already_received_in_a_conversation_is_not_shown_again(pair):
    ana, bob = pair.connect()
    _, msg_id, frames = ana.message("sent twice", NOW)
    bob.handle(frames, NOW)
    sealed = pair.ana.letter("bob", pair.directory["bob"], "sent twice", NOW, msg_id)
    assert pair.bob.open_letter("ana", pair.directory["ana"], sealed, NOW) is None


# -- known-answer vectors (docs/vectors/peer.json, letter.json) -------------------------------

@pytest.mark.parametrize("file", ["peer", "letter"])
def test_published_vectors_are_what_the_encoders_make(file):
    built = peer_vectors() if file == "peer" else letter_vectors()
    assert load(file) == built


@pytest.mark.parametrize("v", load("peer") + load("letter"), ids=lambda v: v["name"])
def test_vector_bodies_encode_and_decode_both_ways(v):
    encode, decode = CODECS[v["header"]["kind"]]
    assert encode(v["fields"]).hex() == v["body"]
    assert decode(bytes.fromhex(v["body"])) == v["fields"]


def test_vector_key_is_the_box_key_both_ends_compute():
    ana = PeerEndpoint("ana.lima", ANA)
    bob = PeerEndpoint("bob.reis", BOB)
    assert ana.key_for(bytes(BOB.public_key)) == bob.key_for(bytes(ANA.public_key)) == KEY
    assert {v["key"] for v in load("peer") + load("letter")} == {KEY.hex()}


def test_every_sealed_peer_kind_has_a_vector():
    kinds = {v["header"]["kind"] for v in load("peer")}
    assert kinds == {Kind.HELLO, Kind.WELCOME, Kind.REFUSED, Kind.MESSAGE, Kind.ACK, Kind.BYE}


def test_a_message_text_that_is_not_unicode_is_refused_before_sending():
    from agents.peer_protocol import encode_text
    from agora.errors import LocalError

    with pytest.raises(LocalError, match="not text"):
        encode_text("caf\udcc3")  # a command line's or stdin's bad UTF-8
    assert encode_text("café") == "café".encode()
