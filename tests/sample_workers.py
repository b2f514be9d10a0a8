"""Worker handlers the tests serve besides agents.examples: slow, crashing, caller-aware."""

from __future__ import annotations

import logging
import time

from agents.worker import Caller


def tagged(n: int, caller: Caller) -> dict:
    """Returns n with the caller the broker named: shows which caller got which answer."""
    return {"n": n, "caller": caller.username}


def slow(seconds: float) -> str:
    """Sleeps, then answers: a worker that is too late."""
    logging.getLogger("agora.worker").info("slow call started")  # tests wait for this line
    time.sleep(seconds)
    return "done"


def crash() -> None:
    """Always raises: a buggy worker."""
    raise RuntimeError("database password is hunter2")  # must not reach the caller


def hang() -> None:
    """Never answers (until the process is told to stop): a wedged handler."""
    logging.getLogger("agora.worker").info("hang call started")  # tests wait for this line
    while True:
        time.sleep(1)
