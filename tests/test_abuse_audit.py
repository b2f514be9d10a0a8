"""Issue 10, audit: counted refusals, a retention bound, a bounded buffer, escaped peer text."""

from __future__ import annotations

import logging
import os
import time

import pytest

from agora.envelope import seal
from agora.keyfile import KeyPair
from agora.protocol import Kind
from agora.text import OneLineFormatter, printable
from agora.wire import login_context, request_header
from broker.audit import AuditBuffer
from broker.core import AUDIT_PRUNE_BATCH, BrokerCore
from broker.services import builtin_services
from broker.store import Store

FORGED = "carol.dias\n2026-01-01 12:00:00 agora.broker login carol.dias ok"


@pytest.fixture
def core():
    return BrokerCore(Store(None), KeyPair.generate(), builtin_services(), audit_days=1)


def junk_login(username: str) -> list[bytes]:
    """A LOGIN as a stranger sends it: a username and an envelope under a key nobody has."""
    header = request_header(Kind.LOGIN, login_context(username), int(time.time() * 1000))
    return [username.encode(), seal(os.urandom(32), header, os.urandom(40))]


def audit(core: BrokerCore) -> list[dict]:
    return core.store.audit_rows(limit=100_000)


def test_junk_logins_from_one_source_are_one_counted_row_per_minute(core):
    now = 1_700_000_040.0  # the start of a minute
    for i in range(1500):
        core.handle(b"x", junk_login(f"guess{i}"), now + i * 0.02, "10.9.9.9")
        if i % 100 == 0:
            core.tick(now + i * 0.02)  # flushes every 0.5 s in between
    core.flush_audit(now + 30)
    rows = audit(core)
    assert len(rows) == 1, rows  # one row, however many requests and made-up names
    row = rows[0]
    assert row["count"] == 1500 and row["source"] == "10.9.9.9"  # the flood's true size
    assert (row["action"], row["outcome"], row["detail"]) == (
        "login", "refused", "unknown-user (+1499 other usernames)")
    # The next minute is a new row.
    core.handle(b"x", junk_login("guess"), now + 121, "10.9.9.9")
    core.flush_audit(now + 121)
    assert [r["count"] for r in audit(core)] == [1, 1500]


def test_a_refusal_is_not_written_to_sqlite_on_the_request_path(core):
    core.handle(b"x", junk_login("nobody"), 1_700_000_000.0)
    assert audit(core) == []  # only tick() writes
    core.flush_audit(1_700_000_000.0)
    assert [r["outcome"] for r in audit(core)] == ["refused"]


def test_audit_buffer_is_bounded_and_counts_what_it_could_not_keep():
    buf = AuditBuffer(max_keys=100)
    for i in range(5000):
        buf.add(1_700_000_000.0, f"user{i}", f"call:s{i}", "unknown")
    rows = buf.take()
    assert len(rows) == 101
    overflow = [r for r in rows if r.action == "audit-overflow"]
    assert overflow[0].count == 4900
    assert buf.take() == []


def test_old_audit_rows_are_pruned_in_bounded_batches_by_tick(core):
    now = 1_700_000_000.0
    with core.store.db.conn:
        core.store.db.conn.executemany(
            "insert into audit (ts, action, outcome, count) values (?, 'old', 'ok', 1)",
            [(now - 2 * 86400 + i,) for i in range(AUDIT_PRUNE_BATCH + 10)])
    core.store.audit(None, "recent", "ok", "", now - 3600)
    core.tick(now)
    assert len(audit(core)) == 11  # one batch per tick, never one long delete
    core.tick(now + 0.1)  # a full batch: the rest goes at the next tick
    assert [r["action"] for r in audit(core)] == ["recent"]


def test_printable_escapes_what_a_peer_sent():
    assert printable(FORGED) == ("carol.dias\\n2026-01-01 12:00:00 agora.broker login "
                                 "carol.dias ok")
    assert printable("x" * 100) == "x" * 80 + "..."
    assert printable("x" * 80) == "x" * 80 and printable("call:bench.echo") == "call:bench.echo"
    assert printable("a\\nb\x1b[2J\u2028") == "a\\\\nb\\x1b[2J\\u2028"
    assert printable(b"\xff\x00ok") == "\\xff\\x00ok"
    assert printable(None) == "-"


def test_forged_username_is_escaped_in_the_log_and_the_audit(core, caplog):
    caplog.set_level(logging.INFO, logger="agora")
    core.handle(b"x", junk_login(FORGED[:60]), time.time())
    core.flush_audit(time.time())
    lines = [r.getMessage() for r in caplog.records]
    assert lines and all("\n" not in line for line in lines)
    assert any("carol.dias\\n2026" in line for line in lines)
    (row,) = audit(core)
    assert "\n" not in row["username"] and row["username"].startswith("carol.dias\\n")


def test_every_log_record_is_one_line_whatever_the_caller_passed():
    record = logging.LogRecord("agora", logging.INFO, __file__, 1, "login %s ok",
                               (FORGED,), None)
    text = OneLineFormatter("%(name)s %(message)s").format(record)
    assert "\n" not in text and "carol.dias\\n2026" in text


@pytest.mark.parametrize("follow", [False, True], ids=["table", "follow"])
def test_a_strangers_made_up_username_is_shown_as_written_in_the_operators_audit(tmp_path,
                                                                                 follow):
    """One junk LOGIN named "[/x]" made `agora admin audit` stop with a MarkupError."""
    from typer.testing import CliRunner

    from agora.keyfile import load_or_create
    from broker.server import init_broker
    from cli.app import app

    init_broker(tmp_path)
    store = Store(tmp_path / "broker.db")
    core = BrokerCore(store, load_or_create(tmp_path / "broker.key"), builtin_services())
    now = time.time()
    core.handle(b"x", junk_login("[/x] [bold]y\x1b[2J"), now, "127.0.0.1")
    core.flush_audit(now)
    store.db.close()
    args = ["--follow", "--max-time", "0.3"] if follow else []
    shown = CliRunner().invoke(app, ["admin", "audit", *args, "--data-dir", str(tmp_path)])
    assert shown.exit_code == 0, shown.stderr
    assert "[/x] [bold]y\\x1b[2J" in shown.stdout and "\x1b" not in shown.stdout
