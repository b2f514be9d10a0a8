"""The consoles' page files (HTML, CSS, plain JavaScript), shipped as package data.

No build step and no network: the browser gets exactly these files from the console.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"


@cache
def template(name: str) -> str:
    """A page's HTML (placeholders like ``{{csrf}}`` are filled in per request)."""
    return (STATIC_DIR / name).read_text(encoding="utf-8")
