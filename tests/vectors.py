"""Known-answer test vectors (docs/vectors/*.json): the format, a writer and a reader.

A vector file is a JSON list; each vector names one message kind of one channel::

    {"name": "client.call", "key": hex, "nonce": hex,
     "header": {"channel": 1, "kind": 4, "sender": 1, "context": hex, "counter": 7},
     "fields": {...what the message says...}, "body": hex, "envelope": hex}

``body`` is the exact plaintext the channel's encoder makes from ``fields``; ``envelope``
the exact bytes on the wire. tests/test_vectors.py checks both directions: encode + seal
gives ``envelope``, open + decode gives ``fields``. Regenerate a file only on purpose, when
the wire format changes (and bump the spec): ``python -m tests.vectors``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agora.envelope import Header, seal

VECTORS = Path(__file__).resolve().parent.parent / "docs" / "vectors"


def vector(name: str, key: bytes, header: Header, body: bytes, nonce: bytes,
           fields: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "key": key.hex(), "nonce": nonce.hex(),
            "header": {"channel": header.channel, "kind": header.kind,
                       "sender": header.sender, "context": header.context.hex(),
                       "counter": header.counter},
            "fields": fields, "body": body.hex(),
            "envelope": seal(key, header, body, nonce).hex()}


def header_of(v: dict[str, Any]) -> Header:
    h = v["header"]
    return Header(h["channel"], h["kind"], h["sender"], bytes.fromhex(h["context"]),
                  h["counter"])


def load(name: str) -> list[dict[str, Any]]:
    return json.loads((VECTORS / f"{name}.json").read_text())


def write(name: str, vectors: list[dict[str, Any]]) -> None:
    (VECTORS / f"{name}.json").write_text(json.dumps(vectors, indent=1) + "\n")
