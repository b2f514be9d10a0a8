"""AGORA/2: the one authenticated envelope every agora channel uses (docs/PROTOCOL.md §2).

Every sealed agora message, on every channel (client <-> broker, worker <-> broker,
peer <-> peer, bidder <-> auctioneer, announcements, offline letters), is one byte string::

    header (30 bytes, in clear, authenticated) | nonce (24) | ciphertext | tag (16)

    header = magic "AG" (2) | version 2 (1) | channel (1) | kind (1) | sender (1)
             | context (16) | counter (8, big endian)

sealed with XChaCha20-Poly1305 (libsodium's ``crypto_aead_xchacha20poly1305_ietf``) with
the header as associated data, so the header is readable before any key is chosen (the
receiver finds the session by its context) and cannot be changed without the tag failing.

What the header binds, and why each field is there:

- ``channel`` and ``kind``: a message valid on one channel or as one kind is refused as any
  other (no cross-protocol reuse of a key pair that two channels share).
- ``sender``: the role that sealed it (:class:`Sender`). Request and reply share a key; a
  message reflected back at its sender carries the sender's own role and is refused.
- ``context``: the session, conversation, request or epoch the message belongs to: a message
  spliced into another context is refused.
- ``counter``: its place in the context (request counter, sequence number, millisecond
  timestamp); :class:`ReplayGuard` refuses one seen before.

Keys are 32 random bytes: a session / group key, or for two key pairs the precomputed
``crypto_box_beforenm`` shared key (:func:`box_key`), computed once per peer, never per
message. :func:`public_key` refuses malformed, all-zero and low-order public keys.

The receiver's order of checks (:func:`open_envelope`): size and header shape, then channel,
sender and kind against what it expects here, then the tag (authenticity), then the context
(constant time). Only then may the caller look at freshness and the replay guard, and only
a message that passed all of it may enter the guard, so strangers cannot fill or evict it.

Plain functions and one small class, no sockets; everything raises
:class:`~agora.errors.ProtocolError` (or :class:`~agora.errors.BadKey`) for bad input.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import struct
from collections import OrderedDict
from collections.abc import Collection
from typing import NamedTuple

import nacl.bindings
import nacl.exceptions

# PyNaCl's own cffi binding to libsodium. Called directly on the hot path: the public
# ``nacl.bindings`` wrappers cost ~3.8 µs a call against ~1.5 µs, and every agora call seals
# and opens twice. tests/test_envelope.py checks these bytes against ``nacl.bindings``.
from nacl._sodium import ffi, lib

from agora.errors import BadKey, ProtocolError
from agora.protocol import Channel, Sender

MAGIC = b"AG"
VERSION = 2
HEADER = struct.Struct(">2sBBBB16sQ")
HEADER_SIZE = HEADER.size  # 30
CONTEXT_SIZE = 16
NONCE_SIZE = 24
TAG_SIZE = 16
KEY_SIZE = 32
#: The smallest sealed envelope: a header, a nonce and the tag of an empty body.
MIN_SEALED = HEADER_SIZE + NONCE_SIZE + TAG_SIZE
NO_CONTEXT = bytes(CONTEXT_SIZE)
_PREFIX = MAGIC + bytes([VERSION])
#: The cffi type of the output buffers, looked up once (not parsed from a string per call).
_BYTES = ffi.typeof("unsigned char[]")
#: Below this size a ciphertext is handed to libsodium as a slice (a small copy costs less
#: than making a pointer into it); larger ones by pointer, never copied.
_SLICE_BELOW = 2048


class Header(NamedTuple):
    """The clear, authenticated part of an envelope."""

    channel: int
    kind: int
    sender: int
    context: bytes
    counter: int

    def pack(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, self.channel, self.kind, self.sender, self.context,
                           self.counter)


# -- keys ---------------------------------------------------------------------------------

def public_key(data: bytes) -> bytes:
    """``data`` if it is a usable Curve25519 public key; BadKey (``bad-request``) if not.

    Refuses wrong sizes and the all-zero key here; low-order points are refused by
    libsodium when a shared key is computed (:func:`box_key`).
    """
    if not isinstance(data, bytes) or len(data) != KEY_SIZE:
        raise BadKey("public key must be 32 bytes")
    if not any(data):
        raise BadKey("public key is all zeros")
    return data


def box_key(private_key: bytes, peer_public_key: bytes) -> bytes:
    """The precomputed shared key of a key pair and a peer's public key (crypto_box_beforenm).

    Both ends compute the same key; compute it once per peer and keep it. BadKey for a
    malformed, all-zero or low-order peer key (libsodium refuses a shared point of low order).
    """
    public_key(peer_public_key)
    try:
        return nacl.bindings.crypto_box_beforenm(peer_public_key, private_key)
    except (nacl.exceptions.CryptoError, nacl.exceptions.RuntimeError, ValueError,
            TypeError):
        raise BadKey("public key is not a usable Curve25519 key (low order)") from None


# -- seal and open --------------------------------------------------------------------------

def seal(key: bytes, header: Header, body: bytes, nonce: bytes | None = None) -> bytes:
    """The envelope of ``body`` under ``key``. ``nonce`` is for test vectors only: leave it
    out and a fresh one from :func:`fresh_nonce` is used."""
    return _encrypt(key, header.pack(), body, nonce if nonce is not None else fresh_nonce())


class _NonceSource:
    """Nonces that never repeat: a random 16-octet prefix drawn per process, then a 64-bit
    counter (PROTOCOL.md 1.3).

    XChaCha20-Poly1305 needs a nonce used once per key; a random 192-bit one would do, but
    costs a system call per message (getrandom), a measurable share of a call. Two processes
    sealing under one key (client and broker share a session key) draw their prefixes
    independently, so theirs collide with probability 2^-128. A forked child draws a new
    prefix (os.register_at_fork): it must not repeat its parent's next nonces.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prefix = os.urandom(NONCE_SIZE - 8)
        # itertools.count's next() is one C call under the GIL: safe across threads.
        self.counter = itertools.count(1)

    def __call__(self) -> bytes:
        return self.prefix + next(self.counter).to_bytes(8, "big")


#: The next nonce of this process (see _NonceSource).
fresh_nonce = _NonceSource()
os.register_at_fork(after_in_child=fresh_nonce.reset)


def _encrypt(key: bytes, head: bytes, body: bytes, nonce: bytes) -> bytes:
    """header | nonce | ciphertext and tag of ``body``, with the header as associated data."""
    out = ffi.new(_BYTES, len(body) + TAG_SIZE)
    lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
        out, ffi.NULL, body, len(body), head, HEADER_SIZE, ffi.NULL, nonce, key)
    return head + nonce + ffi.buffer(out)[:]


def peek(data: bytes) -> Header:
    """The header of an envelope, **not yet authenticated**: use it only to choose the key
    (and to drop what is plainly not for us); act on nothing before :func:`open_envelope`."""
    if len(data) < HEADER_SIZE or data[:3] != _PREFIX:
        if data[:2] == MAGIC or data[:5] == b"AGORA":
            raise ProtocolError("unsupported agora protocol version (this peer speaks AGORA/2)")
        raise ProtocolError("not an agora message")
    _, _, channel, kind, sender, context, counter = HEADER.unpack_from(data)
    return Header(channel, kind, sender, context, counter)


def open_envelope(key: bytes, data: bytes, channel: Channel, sender: Sender,
                  kinds: Collection[int] | None = None, context: bytes | None = None,
                  header: Header | None = None) -> tuple[Header, bytes]:
    """Check and decrypt an envelope; ``(header, body)`` or ProtocolError.

    ``sender`` is the role expected to have sealed it (never our own), ``kinds`` the kinds
    acceptable here, ``context`` the context it must belong to (None: the caller checks it).
    ``header`` is what :func:`peek` returned for this very ``data``, if the caller has it
    (it is read once, not twice; every check below is still made on it).
    """
    if header is None:
        header = peek(data)
    if header.channel != channel:
        raise ProtocolError("message belongs to another agora channel")
    if header.sender != sender:
        raise ProtocolError("message was sealed by the wrong party (reflected?)")
    if kinds is not None and header.kind not in kinds:
        raise ProtocolError("message kind is not expected here")
    if len(data) < MIN_SEALED:
        raise ProtocolError("message is truncated")
    body = _decrypt(key, data)
    if context is not None and not hmac.compare_digest(header.context, context):
        raise ProtocolError("message belongs to another context")
    return header, body


def _decrypt(key: bytes, data: bytes) -> bytes:
    """The body of an envelope at least MIN_SEALED long; ProtocolError if its tag fails.

    A small envelope's nonce and ciphertext are passed as slices, a large one's (or one in
    another buffer type than bytes) as pointers into ``data`` (no copy); libsodium checks
    the tag of an empty body without an output buffer."""
    size = len(data) - MIN_SEALED
    out = ffi.new(_BYTES, size) if size else ffi.NULL
    if size < _SLICE_BELOW and type(data) is bytes:  # other buffers: by pointer
        rc = lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
            out, ffi.NULL, ffi.NULL, data[HEADER_SIZE + NONCE_SIZE:], size + TAG_SIZE,
            data, HEADER_SIZE, data[HEADER_SIZE:HEADER_SIZE + NONCE_SIZE], key)
    else:
        at = ffi.from_buffer(data)
        rc = lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
            out, ffi.NULL, ffi.NULL, at + HEADER_SIZE + NONCE_SIZE, size + TAG_SIZE, at,
            HEADER_SIZE, at + HEADER_SIZE, key)
    if rc != 0:
        raise ProtocolError("message could not be authenticated (tampered, or wrong key)")
    return ffi.buffer(out)[:] if size else b""


# -- one context's hot path: the header packed once (a conversation's MESSAGE/ACK) ----------

#: A header without its counter: the same bytes for every message of one channel, kind,
#: sender and context.
PREFIX_SIZE = HEADER_SIZE - 8


def header_prefix(channel: int, kind: int, sender: int, context: bytes) -> bytes:
    """The first PREFIX_SIZE bytes of every header of (channel, kind, sender, context): pack
    it once per context, then :func:`seal_prefixed` and :func:`open_prefixed` per message."""
    return HEADER.pack(MAGIC, VERSION, channel, kind, sender, context, 0)[:PREFIX_SIZE]


def seal_prefixed(key: bytes, prefix: bytes, counter: int, body: bytes) -> bytes:
    """Exactly :func:`seal` of the header ``prefix`` + ``counter``, without packing it."""
    return _encrypt(key, prefix + counter.to_bytes(8, "big"), body, fresh_nonce())


def open_prefixed(key: bytes, data: bytes, prefix: bytes) -> tuple[int, bytes] | None:
    """``(counter, body)`` of an envelope whose header is ``prefix`` + a counter.

    The same checks as :func:`open_envelope` with every field of ``prefix`` expected (magic,
    version, channel, kind, sender, context; compared in constant time), then the tag.
    None when the header is not ``prefix`` or the envelope is truncated: the caller then
    runs :func:`open_envelope`, which says why. ProtocolError if the tag fails.
    """
    if len(data) < MIN_SEALED or not hmac.compare_digest(data[:PREFIX_SIZE], prefix):
        return None
    return int.from_bytes(data[PREFIX_SIZE:HEADER_SIZE], "big"), _decrypt(key, data)


def clear(header: Header, body: bytes) -> bytes:
    """An envelope in clear: only for what cannot be sealed (a refusal to a stranger, the
    broker's public key). Receivers must treat its content as unauthenticated."""
    return header.pack() + body


def open_clear(data: bytes, channel: Channel, sender: Sender, kinds: Collection[int],
               ) -> tuple[Header, bytes]:
    """Header and body of a clear envelope of one of ``kinds``; ProtocolError otherwise."""
    header = peek(data)
    if header.channel != channel or header.sender != sender or header.kind not in kinds:
        raise ProtocolError("unexpected clear message")
    return header, data[HEADER_SIZE:]


# -- freshness and replay ---------------------------------------------------------------------

def timestamp_counter(now: float) -> int:
    """A counter for one-shot requests: milliseconds since the epoch (freshness is checked
    against it, so such requests need no state at the sender)."""
    return int(now * 1000)


def is_fresh(counter: int, now: float, window: float) -> bool:
    """Whether a millisecond-timestamp counter is within ``window`` seconds of ``now``."""
    return abs(now * 1000 - counter) <= window * 1000


class ReplayGuard:
    """Which (context, counter) pairs were seen: a sliding window per context.

    Per context it keeps the highest counter accepted and a bitmap of the ``window`` counters
    below it (as IPsec and DTLS do), so messages may arrive out of order within the window
    but never twice; anything below the window is refused as too old.

    Contexts are bounded: each has an expiry (``now + ttl``, or the context's own lifetime
    given to :meth:`admit`), and when ``max_contexts`` live ones exist a new one is refused
    (:meth:`admit` returns None) rather than evicting one still inside its freshness window,
    which would let its messages be replayed. Only authenticated, fresh messages may be
    passed to :meth:`admit`: a stranger cannot add entries at all.
    """

    def __init__(self, ttl: float, max_contexts: int = 100_000, window: int = 64) -> None:
        self.ttl, self.max_contexts, self.window = ttl, max_contexts, window
        # context -> [expiry, highest counter, bitmap of the counters below it]
        self._contexts: OrderedDict[bytes, list[float | int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._contexts)

    def seen(self, context: bytes, counter: int) -> bool:
        """Whether ``counter`` would be refused in ``context`` (without admitting it)."""
        entry = self._contexts.get(context)
        if entry is None:
            return False
        _, top, bitmap = entry
        if counter > top:
            return False
        offset = top - counter
        return offset >= self.window or bool(int(bitmap) >> offset & 1)

    def admit(self, context: bytes, counter: int, now: float,
              expires: float | None = None) -> bool | None:
        """Record an authenticated, fresh message. True: new. False: replayed (or older than
        the window). None: refused because the guard is full of live contexts."""
        entry = self._contexts.get(context)
        if entry is None:
            self.purge(now)
            if len(self._contexts) >= self.max_contexts:
                return None
            self._contexts[context] = [expires if expires is not None else now + self.ttl,
                                       counter, 1]
            return True
        _, top, bitmap = entry
        top, bitmap = int(top), int(bitmap)
        if counter > top:
            shift = counter - top
            entry[1] = counter
            entry[2] = ((bitmap << shift) | 1) & ((1 << self.window) - 1)
            return True
        offset = top - counter
        if offset >= self.window or bitmap >> offset & 1:
            return False
        entry[2] = bitmap | (1 << offset)
        return True

    def forget(self, context: bytes) -> None:
        """Drop a context that ended (a session logged out, a conversation closed)."""
        self._contexts.pop(context, None)

    def purge(self, now: float) -> None:
        """Drop expired contexts (insertion order is expiry order for a fixed ttl; others are
        dropped when they reach the front)."""
        items = self._contexts
        while items:
            context, entry = next(iter(items.items()))
            if entry[0] > now:
                break
            del items[context]


def context_id(*parts: bytes) -> bytes:
    """A 16-byte context derived from longer identifiers (e.g. a username), BLAKE2b."""
    h = hashlib.blake2b(digest_size=CONTEXT_SIZE, person=b"agora2-context")
    for part in parts:
        h.update(len(part).to_bytes(2, "big") + part)
    return h.digest()


__all__ = [
    "CONTEXT_SIZE", "HEADER_SIZE", "Header", "KEY_SIZE", "MIN_SEALED", "NONCE_SIZE",
    "NO_CONTEXT", "ReplayGuard", "TAG_SIZE", "box_key", "clear", "context_id", "is_fresh",
    "open_clear", "open_envelope", "peek", "public_key", "seal", "timestamp_counter",
    "PREFIX_SIZE", "header_prefix", "open_prefixed", "seal_prefixed", "fresh_nonce",
]
