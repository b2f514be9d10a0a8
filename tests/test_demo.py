"""`agora demo` as a newcomer runs it: a real subprocess, judged by its JSON events."""

from __future__ import annotations

import json

from tests.conftest import agora_env, run_agora


def demo_events(tmp_path):
    result = run_agora("demo", "--json", "--keep", str(tmp_path / "demo"),
                       env=agora_env(), timeout=120)
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result, events


def test_demo_runs_every_step_and_exits_zero(tmp_path):
    result, events = demo_events(tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = events[-1]
    assert summary["event"] == "summary" and summary["ok"] is True
    steps = [e for e in events if e["event"] == "step"]
    assert summary["steps"] == len(steps)
    assert all(e["outcome"] in ("ok", "refused") for e in steps)
    refused = {(e["actor"], e["detail"].rsplit("[", 1)[-1].rstrip("]"))
               for e in steps if e["outcome"] == "refused"}
    assert ("thief", "token-reused") in refused
    assert ("bruno.costa", "flagged") in refused
    logins = [e for e in steps if e["action"].startswith("log in (password")]
    assert {e["actor"] for e in logins} == {"ana.lima", "bruno.costa", "carla.dias"}


def test_demo_leaves_no_process_running(tmp_path):
    import subprocess

    result, _ = demo_events(tmp_path)
    assert result.returncode == 0
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(tmp_path / "demo") not in ps.stdout
