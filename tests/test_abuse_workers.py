"""Issue 10, workers bound to their services: only a principal the operator bound to a service
may attach its workers, the level is the operator's record, a refused worker says why and
exits non-zero, and a worker whose handler hangs still stops on SIGTERM."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest
from typer.testing import CliRunner

from agora.errors import LocalError, RemoteError
from agora.protocol import ErrorCode, Kind, Level, PrincipalKind
from broker.store import Store
from cli.app import app
from tests.conftest import run_agora
from tests.test_service_cli import broker_process, enroll_and_register, ok
from tests.test_workers_core import attached, bind, client, core, only, request_to, worker

__all__ = ["core"]  # the fixture, shared with test_workers_core


def test_a_principal_not_bound_to_a_service_cannot_attach_as_its_worker(core):
    real = attached(core, "real", service="wordcount", level=3)
    rogue = worker(core, "rogue", level=5)
    command, body = rogue.opened(only(rogue.attach("wordcount", 3), rogue.identity))
    assert (command, body["code"]) == (Kind.DISCONNECT, "forbidden")
    assert "rogue may not offer wordcount" in body["message"]
    ana = client(core, "ana")
    for _ in range(4):  # every call goes to the bound worker, none to the rogue
        out = ana.call("wordcount", {"text": "secret"})
        assert request_to(real, out)["args"] == {"text": "secret"}
        real.send(Kind.REPLY, {"id": request_to(real, out)["id"], "ok": True,
                                        "result": 1})


def test_a_squatter_cannot_set_a_services_level_by_attaching_first(core):
    bind(core, "wordcount", "real", 3)
    squatter = worker(core, "squatter", level=1)
    bind(core, "other", "squatter", 1)
    command, body = squatter.opened(only(squatter.attach("wordcount", 1), squatter.identity))
    assert (command, body["code"]) == (Kind.DISCONNECT, "forbidden")
    assert core.workers.level_of("wordcount") is None
    attached(core, "real", service="wordcount", level=3)
    assert core.workers.level_of("wordcount") == 3
    low = client(core, "low", level=1)
    with pytest.raises(RemoteError) as err:
        low.answer(only(low.call("wordcount"), low.identity))
    assert err.value.code is ErrorCode.FORBIDDEN


def test_a_worker_asking_another_level_than_the_record_is_refused(core):
    bind(core, "wordcount", "w1", 3)
    w = worker(core, "w1", level=5)
    command, body = w.opened(only(w.attach("wordcount", 1), w.identity))
    assert (command, body["code"]) == (Kind.DISCONNECT, "forbidden")
    assert "bound at level 3" in body["message"]


def test_unbinding_detaches_live_workers_and_a_new_level_applies_at_once(core):
    store = core.store
    store.enroll("W One", Level(3), time.time(), PrincipalKind.SERVICE)
    store.bind_service("upper", "w.one", Level(2), time.time())
    core.workers.rebind(store.bindings(), time.time())
    w = attached(core, "w.one", service="upper", level=2)
    store.bind_service("upper", "w.one", Level(3), time.time())
    assert core.workers.rebind(store.bindings(), time.time()) == []
    assert core.workers.level_of("upper") == 3
    store.unbind_service("upper", time.time())
    out = core.workers.rebind(store.bindings(), time.time())
    command, body = w.opened(only(out, w.identity))
    assert (command, body["code"]) == (Kind.DISCONNECT, "forbidden")
    assert core.workers.listing()[0]["workers"] == 0


def test_only_service_principals_within_their_level_can_be_bound():
    store = Store(None)
    store.enroll("Ana Lima", Level(5), 0.0)
    store.enroll("Text Worker", Level(2), 0.0, PrincipalKind.SERVICE)
    for service, who, level, message in [
            ("wordcount", "ana.lima", 1, "not a service principal"),
            ("wordcount", "text.worker", 3, "cannot offer a level 3"),
            ("Word Count", "text.worker", 1, "not a service name"),
            ("wordcount", "nobody", 1, "no such user")]:
        with pytest.raises(LocalError) as err:
            store.bind_service(service, who, Level(level), 0.0)
        assert message in str(err.value)
    assert store.bindings() == {}


def test_enroll_with_a_service_binds_it_and_admin_services_lists_and_changes_it(tmp_path):
    runner, data = CliRunner(), ["--data-dir", str(tmp_path / "b")]
    assert runner.invoke(app, ["broker", "init", *data]).exit_code == 0
    enrolled = runner.invoke(app, ["admin", "enroll", "--name", "Text Worker", "--level", "3",
                                   "--kind", "service", "--service", "wordcount",
                                   "--service-level", "3", "--json", *data])
    assert enrolled.exit_code == 0, enrolled.output
    assert json.loads(enrolled.stdout)["services"] == [{"service": "wordcount", "level": 3}]
    listed = runner.invoke(app, ["admin", "services", "--json", *data])
    assert json.loads(listed.stdout) == [{"service": "wordcount", "level": 3,
                                          "usernames": ["text.worker"]}]
    changed = runner.invoke(app, ["admin", "services", "bind", "wordcount", "--principal",
                                  "text.worker", "--level", "2", *data])
    assert changed.exit_code == 0, changed.output
    gone = runner.invoke(app, ["admin", "services", "unbind", "wordcount", *data])
    assert gone.exit_code == 0 and json.loads(runner.invoke(
        app, ["admin", "services", "--json", *data]).stdout) == []
    person = runner.invoke(app, ["admin", "enroll", "--name", "Pat", "--level", "3",
                                 "--service", "wordcount", *data])
    assert person.exit_code == 1 and "--kind service" in person.stderr


def test_a_refused_worker_says_why_in_one_line_and_exits_non_zero(tmp_path, procs):
    broker, env = broker_process(procs, tmp_path)
    enroll_and_register(env, "Rogue Worker", 5, "service", tmp_path / "rogue")
    result = run_agora("worker", "run", "agents.examples:upper", "--service", "upper",
                       "--level", "1", env=dict(env, AGORA_HOME=str(tmp_path / "rogue")))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "may not offer upper" in result.stderr and "forbidden" in result.stderr


@pytest.mark.time_limit(90)
def test_a_worker_whose_handler_hangs_still_stops_on_sigterm(tmp_path, procs):
    broker, env = broker_process(procs, tmp_path)
    enroll_and_register(env, "Ana Lima", 3, "person", tmp_path / "ana")
    name = enroll_and_register(env, "Hang Worker", 3, "service", tmp_path / "hang")
    ok(run_agora("admin", "services", "bind", "hang", "--principal", name, "--level", "1",
                 env=env))
    hang = procs("worker", "run", "tests.sample_workers:hang", "--service", "hang", "--level",
                 "1", env=dict(env, AGORA_HOME=str(tmp_path / "hang")))
    hang.expect("worker ready")
    caller = threading.Thread(target=run_agora, args=("call", "hang"), daemon=True,
                              kwargs={"env": dict(env, AGORA_HOME=str(tmp_path / "ana"))})
    caller.start()
    deadline = time.monotonic() + 20
    while not any("hang call started" in line for line in hang.stderr_lines):
        assert time.monotonic() < deadline, hang.stderr_lines[-3:]
        time.sleep(0.05)
    hang.popen.send_signal(signal.SIGTERM)
    assert hang.popen.wait(timeout=15) == 0  # today: "stopped" printed, process alive
