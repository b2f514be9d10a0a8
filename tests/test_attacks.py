"""The AGORA/2 attack suite: every attack against every channel (harnesses in tests/attacks).

Each attack must be refused with a documented code or dropped — never ``internal``, never an
exception — and the channel must serve a legitimate message right after.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

from agora.protocol import MAX_MESSAGE_SIZE
from tests import attacks
from tests.attacks import HARNESSES, ChannelHarness

for _mod in pkgutil.iter_modules(attacks.__path__):
    importlib.import_module(f"tests.attacks.{_mod.name}")

# A point of order 8 on Curve25519 (libsodium's small-order blacklist).
LOW_ORDER = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")


def tampered(h: ChannelHarness) -> list[bytes] | None:
    frames = h.legitimate()
    last = bytearray(frames[-1])
    last[-1] ^= 1
    return [*frames[:-1], bytes(last)]


def truncated(h: ChannelHarness) -> list[bytes] | None:
    frames = h.legitimate()
    return [*frames[:-1], frames[-1][: len(frames[-1]) // 2]]


def wrong_signature(h: ChannelHarness) -> list[bytes] | None:
    frames = h.legitimate()
    i = next(i for i, f in enumerate(frames) if f.startswith(b"AG\x02"))
    return [*frames[:i], b"AGORA01" + frames[i][7:], *frames[i + 1:]]


def replayed(h: ChannelHarness) -> list[bytes] | None:
    frames = h.legitimate()
    assert h.deliver(frames).accepted, f"{h.name}: the legitimate message was not accepted"
    return frames


def oversized(h: ChannelHarness) -> list[bytes] | None:
    frames = h.legitimate()
    return [*frames[:-1], frames[-1] + bytes(MAX_MESSAGE_SIZE + 1)]


ATTACKS = {
    "tampered": tampered,
    "truncated": truncated,
    "wrong-signature": wrong_signature,
    "reflected": lambda h: h.reflected(),
    "replayed": replayed,
    "stale": lambda h: h.stale(),
    "other-context": lambda h: h.other_context(),
    "all-zero-key": lambda h: h.with_public_key(bytes(32)),
    "low-order-key": lambda h: h.with_public_key(LOW_ORDER),
    "oversized": oversized,
}


@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.parametrize("harness", HARNESSES, ids=lambda c: c.name)
def test_attack_is_refused_and_channel_still_serves(harness, attack):
    h = harness()
    frames = ATTACKS[attack](h)
    if frames is None:
        pytest.skip(f"{attack} does not apply to the {h.name} channel")
    outcome = h.deliver(frames)
    assert not outcome.accepted, f"{attack} was accepted on {h.name}"
    assert outcome.code != "internal"
    assert outcome.code is None or outcome.code in h.refusal_codes, outcome.code
    assert h.deliver(h.legitimate()).accepted, f"{h.name} stopped serving after {attack}"
