"""`agora bench`: a real `--quick --json` run produces numbers for every scenario.

No timing is asserted (the machine is shared); only that each scenario measured something,
against its raw baseline where it has one, and that every watcher ended with every bid.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.app import app
from cli.benchmarks.measure import Sample, interleave, median_ratio
from cli.benchmarks.scenarios import ROW_SCENARIOS
from tests.conftest import agora_env, run_agora


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    keep = tmp_path_factory.mktemp("bench")
    result = run_agora("bench", "--quick", "--json", "--keep", str(keep), env=agora_env(),
                       timeout=90)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(result.stdout)


@pytest.mark.time_limit(100)
def test_quick_bench_measures_every_scenario_against_its_baseline(report):
    assert report["errors"] == {}
    rows = report["rows"]
    assert {r["scenario"] for r in rows} == set(ROW_SCENARIOS)
    for row in rows:
        if row["scenario"] == "sessions":
            assert row["extra"]["rss_mb"] > 0
            continue
        assert row["agora"]["rate"] > 0 and row["agora"]["ops"] > 0, row
        if row["baseline"]:
            assert row["raw"]["rate"] > 0 and row["ratio"] > 0, row
    assert [r["extra"]["sessions"] for r in rows if r["scenario"] == "sessions"] == [
        1, 100, 1000]
    split = next(r for r in rows if r["scenario"] == "logins")["extra"]["cost_split"]
    assert set(split) == {"crypto", "store", "sockets", "other"}
    assert abs(sum(split.values()) - 1) < 0.01


def test_quick_bench_delivers_every_bid_to_every_watcher(report):
    bids = next(r for r in report["rows"] if r["scenario"] == "bids")
    assert bids["extra"]["accepted"] > 0
    assert bids["extra"]["watchers"] == 4
    assert bids["extra"]["delivered_pct"] == 100.0


def test_interleaved_rounds_alternate_order_and_pair_ratios():
    order = []

    def side(name, rate):
        def run(seconds):
            order.append(name)
            return Sample(int(rate * seconds), seconds)
        return run

    samples = interleave({"raw": side("raw", 100), "agora": side("agora", 50)}, 3, 1.0)
    assert order == ["raw", "agora", "agora", "raw", "raw", "agora"]
    assert median_ratio(samples["agora"], samples["raw"]) == 0.5


def test_unknown_scenario_is_one_line_error():
    result = CliRunner().invoke(app, ["bench", "--only", "nope"])
    assert result.exit_code == 1
    assert "unknown scenario 'nope'" in result.output
