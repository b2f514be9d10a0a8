"""`agora demo` as a newcomer runs it: a real subprocess, judged by its JSON events."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import agora_env, run_agora


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One real `agora demo --json` run (about 20 s), shared by this module's tests."""
    keep = tmp_path_factory.mktemp("demo") / "data"
    result = run_agora("demo", "--json", "--keep", str(keep), env=agora_env(), timeout=120)
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result, events, keep


def test_demo_runs_every_step_and_exits_zero(demo_run):
    result, events, _ = demo_run
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
    assert ("carla.dias", "forbidden") in refused  # wordcount needs level 3
    assert ("bruno.costa", "not-found") in refused  # no read up
    worker_call = [e for e in steps if e["action"].startswith("call wordcount (level 3")]
    assert worker_call[0]["outcome"] == "ok" and "6 words" in worker_call[0]["detail"]
    assert ("carla.dias", "bid-too-low") in refused
    assert ("stranger", "unknown-user") in refused
    logins = [e for e in steps if e["action"].startswith("log in (password")]
    assert {e["actor"] for e in logins} == {"ana.lima", "bruno.costa", "carla.dias"}
    arrived = [e["detail"] for e in steps if e["action"] == "the message arrives in agora listen"]
    assert arrived == ["ana.lima: 'The draft is on your desk.'", "carla.dias: 'Lunch at noon?'"]
    winners = [e["detail"] for e in steps if e["action"].startswith("winner of")]
    assert [w.split(" (seen by")[0] for w in winners] == [
        "sold to bruno.costa for 14.00", "sold to ana.lima for 36.00"]
    assert all("seen by ana.lima, bruno.costa, carla.dias" in w for w in winners)
    assert any(e["action"] == "soft close: the late bid extends the auction" for e in steps)


def test_demo_leaves_no_process_running(demo_run):
    result, _, keep = demo_run
    assert result.returncode == 0
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(keep) not in ps.stdout


def test_a_step_that_does_not_do_what_it_should_is_named(tmp_path, capsys):
    from agora.protocol import ErrorCode
    from cli.demo import Demo, DemoFailed, Transcript

    demo = Demo(tmp_path, Transcript(json_out=True))
    try:
        with pytest.raises(DemoFailed, match="step 1 'call something forbidden' failed: "
                                             "expected a forbidden refusal"):
            demo.refused("carla", "call something forbidden", lambda: "allowed!",
                         ErrorCode.FORBIDDEN)
    finally:
        demo.close()
    event = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (event["step"], event["outcome"]) == (1, "failed")

