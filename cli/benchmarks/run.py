"""Run the chosen scenarios in one lab and gather one report (a plain dict, JSON-ready)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cli.benchmarks.lab import Lab
from cli.benchmarks.scenarios import SCENARIOS, Row
from cli.benchmarks.setup import Plan, Setup


def run_bench(plan: Plan, only: list[str] | None = None, keep: Path | None = None,
              progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Every chosen scenario, in order; a scenario that fails is reported, the rest run."""
    chosen = [name for name in SCENARIOS if not only or name in only]
    started = time.monotonic()
    rows: list[Row] = []
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    lab = Lab(keep)
    try:
        setup = Setup(lab, plan)
        setup.launch(set(chosen))
        for name in chosen:
            progress(name)
            begun = time.monotonic()
            try:
                rows.extend(SCENARIOS[name](setup))
            except Exception as exc:  # one scenario's failure must not hide the others
                errors[name] = f"{type(exc).__name__}: {exc}"
            timings[name] = round(time.monotonic() - begun, 1)
    finally:
        lab.close()
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "system": platform.platform(terse=True),
                    "load_avg": [round(x, 2) for x in os.getloadavg()]},
        "plan": {"rounds": plan.rounds, "seconds": plan.seconds,
                 "sessions": list(plan.sessions), "bidders": plan.bidders,
                 "watchers": plan.watchers},
        "elapsed_s": round(time.monotonic() - started, 1),
        "scenario_s": timings,
        "rows": [r.to_dict() for r in rows],
        "errors": errors,
    }
