"""Small worker handlers to try the service bus with (`agora worker run agents.examples:...`).

    agora worker run agents.examples:word_count --service wordcount --level 2

Each is an ordinary function: the call's arguments arrive as keyword arguments.
"""

from __future__ import annotations

from collections import Counter


def upper(text: str) -> str:
    """Upper-cases a text."""
    return text.upper()


def word_count(text: str, top: int = 5) -> dict:
    """Counts the words of a text; returns the total and the most common ones."""
    words = [w.strip(".,;:!?\"'()").lower() for w in text.split()]
    counts = Counter(w for w in words if w)
    return {"words": sum(counts.values()), "distinct": len(counts),
            "top": counts.most_common(max(0, min(int(top), 50)))}
