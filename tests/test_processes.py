"""Real `agora` processes end to end: broker start, admin, register, login, kill -9."""

from __future__ import annotations

import json
import os
import signal

from tests.conftest import PASSWORD, agora_env, run_agora


def start_broker(procs, data_dir, bind="tcp://127.0.0.1:0"):
    env = agora_env(AGORA_BROKER_DIR=str(data_dir))
    proc = procs("broker", "start", "--bind", bind, env=env)
    match = proc.expect(r"agora broker ready at (\S+) fingerprint (\S+)")
    return proc, match.group(1), match.group(2)


def enroll(data_dir, name, level="3"):
    result = run_agora("admin", "enroll", "--name", name, "--level", level, "--json",
                       env=agora_env(AGORA_BROKER_DIR=str(data_dir)))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def registered_env(tmp_path, data_dir, endpoint, fingerprint):
    """Enroll Ana and register her through the CLI; the environment of her commands."""
    enrolled = enroll(data_dir, "Ana Lima")
    env = agora_env(AGORA_HOME=str(tmp_path / "ana"), AGORA_PASSWORD=PASSWORD,
                    AGORA_BROKER=endpoint)
    result = run_agora("register", "--username", enrolled["username"], "--one-time-id",
                       enrolled["one_time_id"], "--fingerprint", fingerprint, env=env)
    assert result.returncode == 0, result.stderr
    return env


def test_broker_process_register_login_and_sigterm(procs, tmp_path):
    data_dir = tmp_path / "broker"
    broker, endpoint, fingerprint = start_broker(procs, data_dir)
    enrolled = enroll(data_dir, "Ana Lima")
    assert enrolled["fingerprint"] == fingerprint
    env = agora_env(AGORA_HOME=str(tmp_path / "ana"), AGORA_PASSWORD=PASSWORD,
                    AGORA_BROKER=endpoint)
    result = run_agora("register", "--username", enrolled["username"],
                       "--one-time-id", enrolled["one_time_id"], "--fingerprint", fingerprint,
                       env=env)
    assert result.returncode == 0, result.stderr
    creds = tmp_path / "ana" / "credentials.json"
    assert oct(creds.stat().st_mode & 0o777) == "0o600"
    assert b"token" not in creds.read_bytes()  # encrypted, not just encoded
    result = run_agora("login", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["username"] == "ana.lima"
    assert broker.terminate() == 0
    assert any("broker stopped" in line for line in broker.stderr_lines)
    assert any("login ana.lima ok" in line for line in broker.stderr_lines)


def test_broker_killed_minus_nine_loses_nothing(procs, tmp_path):
    data_dir = tmp_path / "broker"
    broker, endpoint, fingerprint = start_broker(procs, data_dir)
    env = registered_env(tmp_path, data_dir, endpoint, fingerprint)
    assert run_agora("login", env=env).returncode == 0
    os.killpg(broker.popen.pid, signal.SIGKILL)
    broker.popen.wait(5)

    _, endpoint2, fingerprint2 = start_broker(procs, data_dir, bind=endpoint)
    assert (endpoint2, fingerprint2) == (endpoint, fingerprint)
    result = run_agora("whoami", "--json", env=env)  # the rotated token survived
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["level"] == 3
    audit = json.loads(run_agora("admin", "audit", "ana.lima", "--json",
                                 env=agora_env(AGORA_BROKER_DIR=str(data_dir))).stdout)
    actions = [(r["action"], r["outcome"]) for r in reversed(audit)]
    assert actions[:3] == [("enroll", "ok"), ("register", "ok"), ("login", "ok")]


def test_concurrent_commands_of_one_collaborator_do_not_corrupt_credentials(procs, tmp_path):
    import subprocess

    from tests.conftest import agora_command

    data_dir = tmp_path / "broker"
    _, endpoint, fingerprint = start_broker(procs, data_dir)
    env = registered_env(tmp_path, data_dir, endpoint, fingerprint)
    running = [subprocess.Popen([*agora_command(), "whoami", "--json"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(4)]
    results = [(p.wait(60), p.stderr.read()) for p in running]
    for p in running:
        p.stdout.close()
        p.stderr.close()
    assert [code for code, _ in results] == [0, 0, 0, 0], results
    assert run_agora("whoami", env=env).returncode == 0
