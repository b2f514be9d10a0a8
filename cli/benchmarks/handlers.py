"""Service handlers the bench's worker process serves (``agora worker run MODULE:FN``)."""

from __future__ import annotations

from typing import Any


def echo(**args: Any) -> dict[str, Any]:
    """Returns its arguments: the worker-served twin of the broker's built-in echo."""
    return args
