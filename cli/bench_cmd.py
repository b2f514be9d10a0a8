"""``agora bench``: how fast agora is on this machine, next to the raw transport it uses."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli import options
from cli.common import JsonOption, console, err_console, fail, print_json

#: The longest round a side may be given (keeps every run bounded).
MAX_SECONDS = 10.0


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(143)  # unwinds through the finally that stops every child process


def bench(
    quick: Annotated[bool, typer.Option(
        "--quick", help="Short rounds (about 20 s in all) for a smoke test; the ratios "
        "are noisier.")] = False,
    only: Annotated[list[str] | None, typer.Option(
        "--only", help="Run just this scenario (repeatable): calls, workers, logins "
        "(with sessions), peers, bids.")] = None,
    rounds: Annotated[int | None, typer.Option(
        "--rounds", min=1, max=50, help="Interleaved rounds per scenario.")] = None,
    seconds: Annotated[float | None, typer.Option(
        "--seconds", help=f"Seconds per side per round (at most {MAX_SECONDS:g}).",
        parser=options.positive_duration)] = None,
    keep: Annotated[Path | None, typer.Option(
        "--keep", help="Keep the bench's data (databases, logs) in this directory.",
        metavar="DIR", parser=options.directory)] = None,
    json_out: JsonOption = False,
) -> None:
    """Measure agora against its raw baselines, on loopback, and print the ratios.

    Starts a real broker, a worker, an auctioneer and raw pyzmq/UDP servers on
    127.0.0.1 (multicast on a 239.255.x.x group, TTL 0), runs each scenario and
    its raw baseline in alternating rounds, and stops everything it started.
    Throughput is the median over rounds, p50/p99 are over every operation, and
    "ratio" is the median per-round agora/raw throughput: on a shared machine
    the ratio is the result, not the absolute figures. See docs/BENCHMARKS.md.
    """
    from cli.benchmarks.run import run_bench
    from cli.benchmarks.scenarios import SCENARIOS
    from cli.benchmarks.setup import Plan

    if seconds is not None and seconds > MAX_SECONDS:
        raise fail(f"--seconds is at most {MAX_SECONDS:g} (a round per side)")
    for name in only or []:
        if name not in SCENARIOS:
            raise fail(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    plan = Plan.quick() if quick else Plan.default()
    if rounds or seconds:
        plan = Plan(rounds or plan.rounds, seconds or plan.seconds, plan.sessions,
                    plan.bidders, plan.watchers, plan.profile_logins)
    signal.signal(signal.SIGTERM, _terminated)

    def progress(name: str) -> None:
        if not json_out:
            err_console.print(f"[dim]running {name}…[/]")

    report = run_bench(plan, only, keep, progress)
    if json_out:
        print_json(report)
    else:
        console.print(table(report))
    for name, error in report["errors"].items():
        err_console.print(f"[bold red]error:[/] scenario {name} failed: {error}")
    if report["errors"]:
        raise typer.Exit(1)


def _num(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def table(report: dict[str, Any]) -> Table:
    t = Table(title=f"agora bench — {report['date']}, {report['machine']['cpus']} CPUs, "
              f"{report['plan']['rounds']} rounds × {report['plan']['seconds']} s",
              caption="rate: median over rounds; p50/p99 over all operations, µs; "
              "ratio: median of per-round agora/raw rates")
    for col in ("scenario", "measure", "agora", "p50", "p99", "raw baseline", "raw",
                "raw p50", "ratio", "target", "notes"):
        t.add_column(col, justify="right" if col in {"agora", "p50", "p99", "raw",
                                                     "raw p50", "ratio"} else "left")
    for r in report["rows"]:
        a, raw, extra = r["agora"] or {}, r["raw"] or {}, r["extra"]
        agora_text = (f"{_num(a.get('rate'))} {r['unit']}" if a else
                      f"{extra['rss_mb']} MB" if "rss_mb" in extra else "-")
        t.add_row(r["scenario"], r["name"], agora_text, _num(a.get("p50_us")),
                  _num(a.get("p99_us")), r["baseline"] or "", _num(raw.get("rate")),
                  _num(raw.get("p50_us")), _num(r["ratio"], 2) if r["ratio"] else "",
                  r["target"] or "", _notes(extra))
    return t


def _notes(extra: dict[str, Any]) -> str:
    if "cost_split" in extra:
        return "CPU: " + ", ".join(f"{k} {v:.0%}" for k, v in extra["cost_split"].items())
    if "delivered_pct" in extra:
        return (f"delivered {extra['delivered_pct']}% (directly {extra['seen_directly_pct']}%)"
                f", {extra['rejected_overtaken']} overtaken")
    if "per_session_kb" in extra:
        return f"{extra['per_session_kb']} kB/session"
    return ""
