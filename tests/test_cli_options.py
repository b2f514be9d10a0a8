"""Every command's options, read the same way: malformed values are one line, never a traceback.

The walk covers every registered command, so a new command with a float, path or endpoint
option that does not use cli.options fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from cli import options
from cli.app import app

runner = CliRunner()


def commands(command=None, path=()):
    """(path, click command) for every leaf command of the agora app."""
    command = command or typer.main.get_command(app)
    for name, sub in getattr(command, "commands", {}).items():
        if getattr(sub, "commands", None):
            yield from commands(sub, (*path, name))
        else:
            yield (*path, name), sub


def malformed(param, a_file: Path) -> list[str]:
    """Bad values for this parameter's kind; fails for a kind the CLI does not validate."""
    info = param.type_descriptor.parameter_info
    parser = getattr(info, "parser", None)
    annotation = param.type_descriptor.annotation
    by_parser = {
        options.endpoint: ["127.0.0.1:5555", "bogus", "tcp://127.0.0.1:99999"],
        options.positive_duration: ["-1", "abc", "nan", "0", "inf"],
        options.duration: ["-1", "inf", "abc"],
        options.directory: [str(a_file)],
        options.existing_directory: [str(a_file), str(a_file.parent / "missing")],
        options.money: ["1e3", "-5", "+5", "1.234", "NaN"],
        options.since: ["yesterday", "-5m", "10 parsecs"],
        options.multicast_group: ["224.0.0.251", "10.0.0.1", "239.256.0.1", "foo"],
        options.ipv4_address: ["nonsense", "1.2.3", "::1"],
    }
    if parser is not None:
        assert parser in by_parser, f"{param.name}: parser {parser} is not one of cli.options"
        return by_parser[parser]
    assert annotation not in (float, Path), \
        f"{param.name}: a {annotation.__name__} option must use a cli.options parser"
    if annotation is int:
        return ["abc", "-1"] if param.min is not None else ["abc"]
    return []


CASES = [(path, param.name) for path, command in commands() for param in command.params
         if param.type_descriptor.annotation in (int, float, Path)
         or getattr(param.type_descriptor.parameter_info, "parser", None) is not None]


def test_the_walk_reaches_every_command_group():
    paths = {" ".join(p) for p, _ in commands()}
    assert {"broker start", "admin list", "register", "auction bid", "auctioneer start",
            "worker run", "send", "demo"} <= paths
    assert len(CASES) > 30
    endpoints = [(path, p.name) for path, command in commands() for p in command.params
                 if p.name in ("broker", "endpoint", "bind", "pub")]
    assert len(endpoints) > 10
    for path, command in commands():
        for p in command.params:
            if p.name in ("broker", "endpoint", "bind", "pub"):
                assert p.type_descriptor.parameter_info.parser is options.endpoint, (path, p.name)


def test_multicast_options_are_checked_before_anything_starts():
    by_name = {"group": options.multicast_group, "interface": options.ipv4_address}
    seen = set()
    for path, command in commands():
        for p in command.params:
            if p.name in by_name:
                seen.add(p.name)
                assert p.type_descriptor.parameter_info.parser is by_name[p.name], (path, p.name)
    assert seen == set(by_name)


@pytest.mark.parametrize("path,name", CASES, ids=[f"{' '.join(p)}:{n}" for p, n in CASES])
def test_malformed_option_values_are_one_line_and_no_traceback(path, name, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    command = dict(commands())[path]
    param = next(p for p in command.params if p.name == name)
    for value in malformed(param, a_file):
        args = [*path, "--", value] if param.param_type_name == "argument" else \
            [*path, param.opts[0], value]
        result = runner.invoke(app, args, env={"AGORA_PASSWORD": "", "AGORA_HOME": "",
                                              "AGORA_BROKER": ""})
        where = f"agora {' '.join(args)}"
        assert result.exit_code == 2, (where, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1, (where, result.stderr)
        assert lines[0].startswith("error: Invalid value for "), (where, lines[0])
        assert "Traceback" not in result.output + result.stderr


def test_endpoint_without_scheme_from_the_environment_says_what_is_valid():
    result = runner.invoke(app, ["whoami"], env={"AGORA_BROKER": "127.0.0.1:5555"})
    assert result.exit_code == 2
    assert result.stderr == (
        "error: Invalid value for '--broker' (env var: 'AGORA_BROKER'): '127.0.0.1:5555' is "
        "not an endpoint; use tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555 (see 'agora whoami "
        "--help')\n")


def test_negative_timeout_is_one_line():
    result = runner.invoke(app, ["login", "--timeout", "-1"])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: Invalid value for '--timeout' (env var: 'AGORA_TIMEOUT'): '-1' is not a "
        "duration (a number, more than 0); use e.g. 2.5 (see 'agora login --help')\n")


def test_data_dir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "hostname").write_text("x")
    result = runner.invoke(app, ["admin", "list", "--data-dir", str(tmp_path / "hostname")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: Invalid value for '--data-dir'")
    assert "is a file, not a directory; give a directory (it is created if missing)" in \
        result.stderr


def test_bid_with_an_exponent_is_refused_before_anything_is_sent():
    result = runner.invoke(app, ["auction", "bid", "1e3"], env={"AGORA_PASSWORD": ""})
    assert result.exit_code == 2
    assert result.stderr == (
        "error: Invalid value for 'AMOUNT': amount '1e3' is not an amount like \"12.50\" "
        "(digits, at most two decimals) (see 'agora auction bid --help')\n")


def test_unknown_command_and_missing_option_are_one_line():
    result = runner.invoke(app, ["admin", "enroll"])
    assert (result.exit_code, result.stderr) == (
        2, "error: Missing option '--name'. (see 'agora admin enroll --help')\n")
    result = runner.invoke(app, ["lgoin"])
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1


def test_help_shows_flags_as_flags():
    result = runner.invoke(app, ["register", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    assert "<bool>" not in result.stdout
    assert "--force" in result.stdout and "ENDPOINT" in result.stdout
