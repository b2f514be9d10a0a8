"""Starting real ``agora`` processes and reading their output, with bounded waits.

Used by ``agora demo`` and by the end-to-end tests, so both drive the processes the same
way: start in a new session (so the whole group can be killed), read stdout lines in the
background, wait for a "ready" line with a timeout, stop with SIGTERM then SIGKILL.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

#: The directory holding the ``cli`` package, so ``python -m cli`` works from a checkout too.
SOURCE_ROOT = Path(__file__).resolve().parent.parent


def agora_command() -> list[str]:
    """How to run agora: the ``agora`` script beside this Python, else ``python -m cli``."""
    script = Path(sys.executable).with_name("agora")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli"]


def agora_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """An environment for a child agora: no inherited AGORA_* settings, wide output."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if not k.startswith("AGORA_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), env.get("PYTHONPATH")]))
    env["COLUMNS"] = "200"  # keep Rich from wrapping lines that are read back
    env.update(extra)
    return env


class AgoraProcess:
    """A long-running ``agora`` process whose output lines are collected in the background."""

    def __init__(self, args: list[str], env: dict[str, str],
                 stdin: int = subprocess.DEVNULL) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            [*agora_command(), *args], env=env, stdin=stdin,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        for stream, sinks in ((self.popen.stdout, (self.lines.put, self.stdout_lines.append)),
                              (self.popen.stderr, (self.stderr_lines.append,))):
            threading.Thread(target=_pump, args=(stream, sinks), daemon=True).start()

    def expect(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        """Wait for a stdout line matching ``pattern``; raise TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise TimeoutError(f"agora {' '.join(self.args[:2])}: no line matching {pattern!r} "
                           f"within {timeout:g}s; last output: {(seen or self.stderr_lines)[-3:]}")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def terminate(self, timeout: float = 10) -> int:
        """SIGTERM, then SIGKILL if it does not stop within ``timeout``; the exit code."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.wait(5)

    def kill(self) -> None:
        """SIGKILL the process and everything it started."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(5)


def _pump(stream: IO[str], sinks: tuple[Callable[[str], None], ...]) -> None:
    for line in stream:
        for sink in sinks:
            sink(line.rstrip("\n"))
