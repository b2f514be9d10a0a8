"""Measuring without sockets of its own: timed loops, interleaved rounds, the figures.

Every loop here is bounded twice, by a deadline and by a maximum count, so a scenario
finishes even when what it measures stops answering (the operation then raises).

A *side* is one thing measured (agora, or its raw baseline): a function that runs for about
``seconds`` and returns a :class:`Sample`. :func:`interleave` runs the sides of a scenario
in turns, round after round, with the order flipped every round, so that every side sees the
same machine load; the ratio agora/raw is taken per round and its median reported.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: No timed loop runs more operations than this, whatever the deadline says.
MAX_OPS = 2_000_000


@dataclass
class Sample:
    """One side's operations in one round: how many, how long, each one's latency."""

    ops: int
    seconds: float
    latencies_ns: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Figures:
    """A side's result over all rounds: median throughput, pooled latency percentiles."""

    rate: float
    p50_us: float | None
    p99_us: float | None
    ops: int
    rounds: int

    @classmethod
    def of(cls, samples: list[Sample]) -> Figures:
        latencies = sorted(x for s in samples for x in s.latencies_ns)
        return cls(rate=statistics.median(s.rate for s in samples),
                   p50_us=_percentile(latencies, 0.50), p99_us=_percentile(latencies, 0.99),
                   ops=sum(s.ops for s in samples), rounds=len(samples))

    def to_dict(self) -> dict[str, Any]:
        return {"rate": round(self.rate, 1), "p50_us": _round(self.p50_us),
                "p99_us": _round(self.p99_us), "ops": self.ops, "rounds": self.rounds}


def _percentile(sorted_ns: list[int], q: float) -> float | None:
    if not sorted_ns:
        return None
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


Side = Callable[[float], Sample]


def interleave(sides: dict[str, Side], rounds: int, seconds: float) -> dict[str, list[Sample]]:
    """Run every side for ``seconds``, ``rounds`` times, alternating the order each round."""
    names = list(sides)
    out: dict[str, list[Sample]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            out[name].append(sides[name](seconds))
    return out


def median_ratio(top: list[Sample], bottom: list[Sample]) -> float | None:
    """Median over rounds of top's rate / bottom's rate (rounds paired by index)."""
    ratios = [t.rate / b.rate for t, b in zip(top, bottom, strict=True) if b.rate > 0]
    return statistics.median(ratios) if ratios else None


def timed_loop(op: Callable[[], Any], seconds: float, max_ops: int = MAX_OPS) -> Sample:
    """Call ``op`` back to back for about ``seconds``; each call's latency is recorded."""
    clock = time.perf_counter_ns
    latencies: list[int] = []
    start = clock()
    deadline = start + int(seconds * 1e9)
    now = start
    while now < deadline and len(latencies) < max_ops:
        op()
        end = clock()
        latencies.append(end - now)
        now = end
    return Sample(len(latencies), (now - start) / 1e9, latencies)


def threaded_loops(ops: list[Callable[[], Any]], seconds: float,
                   max_ops: int = MAX_OPS) -> Sample:
    """``timed_loop`` in one thread per op, started together; the pooled Sample.

    An op that raises stops its thread and the error is raised here, after all joined.
    """
    barrier = threading.Barrier(len(ops) + 1)
    results: list[Sample | BaseException] = [Sample(0, 0.0)] * len(ops)

    def run(i: int) -> None:
        try:
            barrier.wait(10)
            results[i] = timed_loop(ops[i], seconds, max_ops // len(ops))
        except BaseException as exc:  # reported by the caller's thread
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(ops))]
    for t in threads:
        t.start()
    started = time.perf_counter()
    barrier.wait(10)
    for t in threads:
        t.join(seconds + 30)
    elapsed = time.perf_counter() - started
    for r in results:
        if isinstance(r, BaseException):
            raise r
    samples = [r for r in results if isinstance(r, Sample)]
    return Sample(sum(s.ops for s in samples), elapsed,
                  [x for s in samples for x in s.latencies_ns])
