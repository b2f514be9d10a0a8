"""The real `agora` processes: broker, `agora worker run`, `agora services` / `call` / audit."""

from __future__ import annotations

import json
import sys
import time

import pytest

from agora.errors import LocalError
from cli.service_cmd import load_handler, parse_call_args
from tests.conftest import PASSWORD, agora_env, run_agora


def ok(result):
    assert result.returncode == 0, result.stderr
    return result.stdout


def enroll_and_register(env, name: str, level: int, kind: str, home) -> str:
    enrolled = json.loads(ok(run_agora("admin", "enroll", "--name", name, "--level", str(level),
                                       "--kind", kind, "--json", env=env)))
    ok(run_agora("register", "--username", enrolled["username"], "--one-time-id",
                 enrolled["one_time_id"], "--fingerprint", enrolled["fingerprint"],
                 "--home", str(home), env=env))
    return enrolled["username"]


def broker_process(procs, tmp_path, *options: str):
    """A real ``agora broker start`` on tmp_path/broker, and the environment (password,
    data directory, endpoint) that agora commands reach it with."""
    env = agora_env(AGORA_BROKER_DIR=str(tmp_path / "broker"), AGORA_PASSWORD=PASSWORD)
    broker = procs("broker", "start", "--bind", "tcp://127.0.0.1:0", *options, env=env)
    env["AGORA_BROKER"] = broker.expect(r"ready at (\S+)").group(1)
    return broker, env


def wait_for(predicate, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_worker_process_serves_calls_and_its_death_fails_the_call(tmp_path, procs):
    broker, env = broker_process(procs, tmp_path, "--call-timeout", "20")
    enroll_and_register(env, "Ana Lima", 3, "person", tmp_path / "ana")
    upper = enroll_and_register(env, "Upper Worker", 3, "service", tmp_path / "upper")
    slow = enroll_and_register(env, "Slow Worker", 3, "service", tmp_path / "slow")
    ok(run_agora("admin", "services", "bind", "upper", "--principal", upper, "--level", "2",
                 env=env))
    ok(run_agora("admin", "services", "bind", "slow", "--principal", slow, "--level", "1",
                 env=env))
    ana = dict(env, AGORA_HOME=str(tmp_path / "ana"))

    procs("worker", "run", "agents.examples:upper", "--service", "upper", "--level", "2",
          env=dict(env, AGORA_HOME=str(tmp_path / "upper"))).expect("worker ready")
    slow = procs("worker", "run", "tests.sample_workers:slow", "--service", "slow",
                 "--level", "1", env=dict(env, AGORA_HOME=str(tmp_path / "slow")))
    slow.expect("worker ready")

    listed = {s["name"]: s for s in json.loads(ok(run_agora("services", "--json", env=ana)))}
    assert (listed["upper"]["level"], listed["upper"]["workers"]) == (2, 1)
    assert json.loads(ok(run_agora("call", "upper", "text=hi", env=ana))) == "HI"

    unknown = run_agora("call", "no.such", env=ana)
    assert unknown.returncode == 1
    assert unknown.stderr.strip().count("\n") == 0 and "unknown-service" in unknown.stderr

    call = procs("call", "slow", "seconds=60", env=ana)
    wait_for(lambda: any("slow call started" in line for line in slow.stderr_lines))
    started = time.monotonic()
    slow.kill()  # kill -9 mid-request: no DISCONNECT, only silence
    assert call.popen.wait(15) == 1
    assert time.monotonic() - started < 10  # noticed by heartbeat, not the 20 s call timeout
    wait_for(lambda: call.stderr_lines)
    assert "service-failed" in call.stderr_lines[-1]

    time.sleep(0.6)  # the broker writes its audit rows in batches, every 0.5 s
    audit = json.loads(ok(run_agora("admin", "audit", "--json", "-n", "200", env=env)))
    decisions = {(r["action"], r["outcome"]) for r in audit}
    assert {("call:upper", "ok"), ("call:no.such", "unknown"),
            ("call:slow", "worker-died")} <= decisions
    assert "hi" not in json.dumps([r["detail"] for r in audit])


def test_call_arguments_merge_file_json_and_pairs(tmp_path):
    data = tmp_path / "args.json"
    data.write_text('{"a": 1, "b": "file"}')
    args = parse_call_args(["b=pair", "n=3", "flag=true", "word=plain"], '{"c": [1]}',
                           f"@{data}")
    assert args == {"a": 1, "b": "pair", "c": [1], "n": 3, "flag": True, "word": "plain"}


@pytest.mark.parametrize("pairs,json_text,message", [
    (["novalue"], None, "not key=value"),
    ([], "[1, 2]", "must be a JSON object"),
    ([], "{oops", "not valid JSON"),
    ([], '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "--json is nested too deeply"),
    ([], '{"a": NaN}', "--json is not valid JSON: NaN is not JSON"),
    ([], '{"a": 1e999}', "--json is not valid JSON: a number too large for JSON"),
])
def test_bad_call_arguments_are_a_local_error(pairs, json_text, message):
    with pytest.raises(LocalError, match=message):
        parse_call_args(pairs, json_text, None)


def test_a_value_that_does_not_parse_as_json_is_taken_as_text():
    deep = "[" * 100_000
    assert parse_call_args(["name=ana", "n=3", f"deep={deep}", "x=NaN", "big=1e999"], None,
                           None) == {"name": "ana", "n": 3, "deep": deep, "x": "NaN",
                                     "big": "1e999"}


def test_call_help_teaches_the_argument_forms():
    out = ok(run_agora("call", "--help"))
    assert "key=value" in out and "--data @args.json" in out


@pytest.mark.parametrize("source,says", [
    ("def handler(:\n    pass\n", "SyntaxError: invalid syntax"),
    ("raise RuntimeError('no config file')\n", "RuntimeError: no config file"),
])
def test_a_handler_module_that_fails_to_import_is_a_local_error(tmp_path, monkeypatch, source,
                                                                 says):
    (tmp_path / "broken_handlers.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_handler adds the directory
    with pytest.raises(LocalError, match=f"cannot import broken_handlers: {says}"):
        load_handler("broken_handlers:handler")


@pytest.mark.parametrize("spec,says", [
    ("agents.examples", "'agents.examples' is not MODULE:FUNCTION"),
    (":upper", "':upper' is not MODULE:FUNCTION"),
    ("agents.examples:no_such", "agents.examples has no function 'no_such'"),
    ("agents.examples:__doc__", "agents.examples has no function '__doc__'"),  # not callable
])
def test_a_handler_spec_that_names_no_function_is_a_local_error(spec, says):
    with pytest.raises(LocalError) as refused:
        load_handler(spec)
    assert str(refused.value) == says


def test_call_data_is_inline_text_or_a_file_read_in_one_line(tmp_path):
    assert parse_call_args([], None, '{"a": 1}') == {"a": 1}
    with pytest.raises(LocalError) as refused:
        parse_call_args([], None, f"@{tmp_path / 'missing.json'}")
    assert str(refused.value) == (f"cannot read {tmp_path / 'missing.json'}: "
                                  "No such file or directory")


def test_worker_run_rejects_a_bad_target(tmp_path):
    result = run_agora("worker", "run", "no_such_module:fn", "--service", "x", "--level", "1",
                       env=agora_env(AGORA_HOME=str(tmp_path), AGORA_PASSWORD=PASSWORD))
    assert result.returncode == 1
    assert "cannot import no_such_module" in result.stderr
