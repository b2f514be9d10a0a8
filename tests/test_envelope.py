"""AGORA/2 envelope (agora/envelope.py): sealing, every header check, keys, replay guard."""

from __future__ import annotations

import os
import threading

import nacl.bindings
import pytest

from agora import envelope
from agora.crypto import PrivateKey
from agora.envelope import Header, ReplayGuard, box_key, open_envelope, peek, seal
from agora.errors import BadKey, ProtocolError
from agora.protocol import Channel, Kind, Sender

KEY = bytes(range(32))
SID = bytes(range(16, 32))


def call(counter: int = 1, sender: Sender = Sender.CLIENT, context: bytes = SID,
         kind: Kind = Kind.CALL, channel: Channel = Channel.CLIENT) -> Header:
    return Header(channel, kind, sender, context, counter)


def test_sealed_message_opens_with_its_header_and_body():
    data = seal(KEY, call(7), b"hello")
    header, body = open_envelope(KEY, data, Channel.CLIENT, Sender.CLIENT, {Kind.CALL}, SID)
    assert body == b"hello"
    assert header == call(7)
    assert len(data) == envelope.MIN_SEALED + 5


def test_seal_matches_libsodium_public_binding():
    nonce = bytes(24)
    data = seal(KEY, call(), b"body", nonce=nonce)
    head = call().pack()
    expected = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(b"body", head, nonce,
                                                                         KEY)
    assert data == head + nonce + expected


# A small body is opened from slices of the envelope, a large one by pointer: both checked.
@pytest.mark.parametrize("body", [b"some body bytes", bytes(range(256)) * 40],
                         ids=["small", "large"])
@pytest.mark.parametrize("position", [0, 3, 4, 5, 10, 29, 30, 60, -1])
def test_any_changed_byte_is_refused(position, body):
    sealed = seal(KEY, call(), body)
    assert open_envelope(KEY, sealed, Channel.CLIENT, Sender.CLIENT, {Kind.CALL}, SID)[1] == body
    data = bytearray(sealed)
    data[position] ^= 0x01
    with pytest.raises(ProtocolError):
        open_envelope(KEY, bytes(data), Channel.CLIENT, Sender.CLIENT, {Kind.CALL}, SID)


@pytest.mark.parametrize("buffer", [bytearray, memoryview])
def test_an_envelope_in_any_buffer_opens(buffer):
    sealed = seal(KEY, call(), b"some body bytes")
    header, body = open_envelope(KEY, buffer(sealed), Channel.CLIENT, Sender.CLIENT,
                                 {Kind.CALL}, SID)
    assert body == b"some body bytes" and header == call()


def nonce_of(data: bytes) -> bytes:
    return data[envelope.HEADER_SIZE:envelope.HEADER_SIZE + envelope.NONCE_SIZE]


def test_no_two_envelopes_share_a_nonce_across_threads():
    nonces: list[bytes] = []

    def seal_many() -> None:
        nonces.extend(nonce_of(seal(KEY, call(), b"x")) for _ in range(2000))

    threads = [threading.Thread(target=seal_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    nonces += [nonce_of(envelope.seal_prefixed(KEY, bytes(22), 1, b"x")) for _ in range(2000)]
    assert len(set(nonces)) == len(nonces) == 10_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_repeats_its_parents_nonces():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next nonce, to the parent, and out without cleanup
        try:
            os.write(write_end, nonce_of(seal(KEY, call(), b"x")))
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        child = os.read(read_end, envelope.NONCE_SIZE)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    parent = nonce_of(seal(KEY, call(), b"x"))
    assert len(child) == envelope.NONCE_SIZE
    assert child[:16] != parent[:16]  # a prefix of its own, not the parent's next counters


def test_truncated_message_is_refused():
    data = seal(KEY, call(), b"")
    for size in (0, 1, 29, 30, 53, len(data) - 1):
        with pytest.raises(ProtocolError):
            open_envelope(KEY, data[:size], Channel.CLIENT, Sender.CLIENT)


def test_reflected_message_is_refused():
    data = seal(KEY, call(sender=Sender.CLIENT), b"x")
    with pytest.raises(ProtocolError, match="wrong party"):
        open_envelope(KEY, data, Channel.CLIENT, Sender.BROKER)


def test_message_for_another_channel_is_refused():
    data = seal(KEY, call(channel=Channel.AUCTION), b"x")
    with pytest.raises(ProtocolError, match="another agora channel"):
        open_envelope(KEY, data, Channel.CLIENT, Sender.CLIENT)


def test_message_of_unexpected_kind_is_refused():
    data = seal(KEY, call(kind=Kind.LOGOUT), b"x")
    with pytest.raises(ProtocolError, match="kind"):
        open_envelope(KEY, data, Channel.CLIENT, Sender.CLIENT, {Kind.CALL})


def test_message_for_another_context_is_refused():
    data = seal(KEY, call(context=os.urandom(16)), b"x")
    with pytest.raises(ProtocolError, match="another context"):
        open_envelope(KEY, data, Channel.CLIENT, Sender.CLIENT, None, SID)


def test_wrong_key_is_refused():
    data = seal(KEY, call(), b"x")
    with pytest.raises(ProtocolError, match="authenticated"):
        open_envelope(bytes(32), data, Channel.CLIENT, Sender.CLIENT)


def test_agora1_message_names_the_version():
    with pytest.raises(ProtocolError, match="version"):
        peek(b"AGORA01C" + bytes(40))
    with pytest.raises(ProtocolError, match="not an agora message"):
        peek(b"GET / HTTP/1.1\r\n" + bytes(40))


def test_clear_envelope_round_trip_and_kind_check():
    data = envelope.clear(Header(Channel.CLIENT, Kind.ERROR, Sender.BROKER,
                                 envelope.NO_CONTEXT, 0), b'{"code":"x"}')
    header, body = envelope.open_clear(data, Channel.CLIENT, Sender.BROKER, {Kind.ERROR})
    assert body == b'{"code":"x"}' and header.kind == Kind.ERROR
    with pytest.raises(ProtocolError):
        envelope.open_clear(data, Channel.CLIENT, Sender.BROKER, {Kind.RESULT})


def test_box_key_is_shared_by_both_ends():
    a, b = PrivateKey.generate(), PrivateKey.generate()
    assert box_key(bytes(a), bytes(b.public_key)) == box_key(bytes(b), bytes(a.public_key))


@pytest.mark.parametrize("bad", [bytes(32), b"\x01" + bytes(31), bytes(31), b"x" * 33,
                                 # a point of order 8 on Curve25519 (libsodium's blacklist)
                                 bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd"
                                               "866205165f49b800")])
def test_all_zero_low_order_and_malformed_keys_are_refused(bad):
    with pytest.raises(BadKey):
        box_key(bytes(PrivateKey.generate()), bad)


def test_bad_key_is_a_protocol_error():
    assert issubclass(BadKey, ProtocolError)


# -- replay guard -----------------------------------------------------------------------------

def test_counter_is_admitted_once():
    guard = ReplayGuard(ttl=10)
    assert guard.admit(SID, 1, 0.0) is True
    assert guard.admit(SID, 1, 0.0) is False
    assert guard.seen(SID, 1)


def test_out_of_order_within_the_window_is_admitted_once():
    guard = ReplayGuard(ttl=10, window=8)
    assert guard.admit(SID, 5, 0.0)
    assert guard.admit(SID, 3, 0.0) is True
    assert guard.admit(SID, 3, 0.0) is False
    assert guard.admit(SID, 4, 0.0) is True
    assert guard.admit(SID, 13, 0.0) is True
    assert guard.admit(SID, 5, 0.0) is False  # now below the window: too old


def test_contexts_are_independent():
    guard = ReplayGuard(ttl=10)
    assert guard.admit(b"a" * 16, 1, 0.0)
    assert guard.admit(b"b" * 16, 1, 0.0)


def test_full_guard_refuses_new_contexts_instead_of_forgetting_live_ones():
    guard = ReplayGuard(ttl=10, max_contexts=2)
    assert guard.admit(b"a" * 16, 1, 0.0)
    assert guard.admit(b"b" * 16, 1, 0.0)
    assert guard.admit(b"c" * 16, 1, 1.0) is None
    assert guard.admit(b"a" * 16, 1, 1.0) is False  # still remembered
    assert guard.admit(b"c" * 16, 1, 11.0) is True  # the old ones expired


def test_forget_ends_a_context():
    guard = ReplayGuard(ttl=10)
    guard.admit(SID, 1, 0.0)
    guard.forget(SID)
    assert len(guard) == 0


def test_prefixed_seal_and_open_are_the_same_envelope_as_seal_and_open_envelope():
    prefix = envelope.header_prefix(Channel.CLIENT, Kind.CALL, Sender.CLIENT, SID)
    assert prefix == call(9).pack()[:envelope.PREFIX_SIZE]
    fast = envelope.seal_prefixed(KEY, prefix, 9, b"body")
    assert open_envelope(KEY, fast, Channel.CLIENT, Sender.CLIENT, {Kind.CALL}, SID) == (
        call(9), b"body")
    assert envelope.open_prefixed(KEY, seal(KEY, call(9), b"body"), prefix) == (9, b"body")


@pytest.mark.parametrize("other", [call(sender=Sender.BROKER), call(kind=Kind.REPLY),
                                   call(channel=Channel.WORKER), call(context=bytes(16))])
def test_prefixed_open_leaves_any_other_header_to_open_envelope(other):
    prefix = envelope.header_prefix(Channel.CLIENT, Kind.CALL, Sender.CLIENT, SID)
    assert envelope.open_prefixed(KEY, seal(KEY, other, b"x"), prefix) is None
    assert envelope.open_prefixed(KEY, seal(KEY, call(), b"x")[:envelope.MIN_SEALED - 1],
                                  prefix) is None


@pytest.mark.parametrize("body", [b"", b"some body bytes"])
def test_prefixed_open_refuses_a_changed_byte(body):
    prefix = envelope.header_prefix(Channel.CLIENT, Kind.CALL, Sender.CLIENT, SID)
    data = bytearray(seal(KEY, call(), body))
    for position in (25, 29, 30, 60, -1):  # counter, nonce, ciphertext, tag
        changed = bytearray(data)
        changed[position] ^= 0x01
        with pytest.raises(ProtocolError, match="could not be authenticated"):
            envelope.open_prefixed(KEY, bytes(changed), prefix)
