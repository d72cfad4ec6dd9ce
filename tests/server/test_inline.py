"""Storage calls in the event loop: the cost model, and what it must never break
(slow statements still off the loop, lock waits, the event loop setting)."""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from typing import Any

import pytest

import casemate
from casemate.protocol.core import PROTOCOL_CORE
from casemate.server.inline import MAX_KEY_TEXT, MAX_KEYS, CostModel
from casemate.storage import sqlite_rows
from tests.conftest import set_setting

SLOW = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
        "SELECT count(*) FROM c")


def status(conn: casemate.Connection) -> dict[str, Any]:
    columns, rows = conn.admin_table("status")
    return dict(zip(columns, rows[0], strict=True))


# -- the cost model -----------------------------------------------------------------------

def test_unknown_calls_go_to_a_thread_until_seen_to_be_short() -> None:
    m = CostModel(0.001)
    k = m.key("SELECT 1", False)
    assert not m.inline(k)                # never seen: a thread
    m.record(k, 0.0001)
    assert m.inline(k)                    # seen short: the event loop
    m.record(k, 0.01)
    assert not m.inline(k)                # one slow run sends the next one to a thread
    m.record(k, 0.0001)
    m.record(k, 0.0001)
    m.record(k, 0.0001)
    assert m.inline(k)                    # and it comes back once short again
    assert not m.inline(m.key("SELECT 1", True))  # in a transaction: another kind of call


def test_cost_model_limits() -> None:
    assert CostModel(0).key("SELECT 1") is None  # switched off: no key, always a thread
    m = CostModel(0.001)
    assert not m.inline(None)
    assert m.key("x" * (MAX_KEY_TEXT + 1)) is None  # a huge statement is never remembered
    for i in range(MAX_KEYS + 5):  # bounded memory, whatever the clients send
        m.record(m.key(f"SELECT {i}"), 0.0001)
    assert len(m._est) <= MAX_KEYS
    calls = m.inline_calls
    assert m.run_inline(m.key("a"), lambda x: x + 1, 1) == 2
    assert m.inline_calls == calls + 1 and m.inline(m.key("a"))
    with pytest.raises(ZeroDivisionError):
        m.run_inline(m.key("b"), lambda: 1 / 0)
    assert m.inline(m.key("b"))  # a failing call is measured too


# -- against a real server -------------------------------------------------------------------

def test_repeated_statements_run_in_the_event_loop(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(make_db())
    with server.connect() as c:
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
        c.cursor().executemany("INSERT INTO t VALUES (?, ?)", [(i, f"n{i}") for i in range(100)])
        c.commit()
        before = status(c)
        for i in range(200):
            assert c.execute("SELECT name FROM t WHERE id = ?", (i % 100,)).fetchone() == (
                f"n{i % 100}",)
        c.commit()
        after = status(c)
    assert after["storage_calls_in_event_loop"] - before["storage_calls_in_event_loop"] >= 190
    assert after["storage_calls_in_threads"] - before["storage_calls_in_threads"] < 10


def test_inline_limit_zero_keeps_every_call_in_threads(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    set_setting(db, "inline_limit_ms", "0")
    server = server_factory(db)
    with server.connect() as c:
        for _ in range(50):
            c.execute("SELECT 1").fetchall()
        c.commit()
        st = status(c)
    assert st["storage_calls_in_event_loop"] == 0
    assert st["storage_calls_in_threads"] >= 50


def test_a_slow_statement_does_not_stall_other_sessions(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(make_db())
    with server.connect() as slow, server.connect() as quick:
        n = 200_000
        t0 = time.monotonic()
        slow.execute(SLOW, (n,)).fetchall()
        while time.monotonic() - t0 < 0.3 and n < 50_000_000:  # about a second of SQLite work
            n *= 4
            t0 = time.monotonic()
            slow.execute(SLOW, (n,)).fetchall()
        for _ in range(5):  # the quick statement is known to be short: the event loop
            quick.execute("SELECT 1").fetchall()
        done = threading.Event()
        errors: list[BaseException] = []

        def run_slow() -> None:
            try:
                slow.execute(SLOW, (n,)).fetchall()  # known to be slow: a worker thread
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
            finally:
                done.set()
        t = threading.Thread(target=run_slow)
        t.start()
        time.sleep(0.05)
        worst = 0.0
        while not done.is_set():
            t1 = time.monotonic()
            quick.execute("SELECT 1").fetchall()
            worst = max(worst, time.monotonic() - t1)
        t.join()
        assert not errors
        assert worst < 0.25, f"a quick statement waited {worst:.2f} s behind the slow one"


def test_a_short_write_that_meets_the_lock_waits_for_it(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(make_db())
    with server.connect() as a, server.connect() as b:
        a.execute("CREATE TABLE t (x INTEGER)")
        a.commit()
        for i in range(5):  # b's INSERT becomes a known-short call, served in the event loop
            b.execute("INSERT INTO t VALUES (?)", (i,))
            b.commit()
        a.execute("INSERT INTO t VALUES (100)")  # a holds the write lock, uncommitted
        threading.Timer(0.5, a.commit).start()
        t0 = time.monotonic()
        b.execute("INSERT INTO t VALUES (?)", (200,))  # waits for the lock, then succeeds
        waited = time.monotonic() - t0
        b.commit()
        assert waited >= 0.4
        assert b.execute("SELECT count(*) FROM t").fetchone() == (7,)
        b.commit()


@pytest.mark.parametrize("choice", ["asyncio", "uvloop"])
def test_event_loop_setting(make_db, server_factory, choice: str) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("uvloop")
    db = make_db(encrypted=True)
    set_setting(db, "event_loop", f'"{choice}"')
    server = server_factory(db)
    with server.connect() as c:
        assert c.execute("SELECT 41 + 1").fetchone() == (42,)
        assert status(c)["event_loop"] == choice
        # the server says which row path it runs: compiled unless the pure one is forced
        assert status(c)["row_path"] == sqlite_rows.ROW_PATH
        assert status(c)["protocol_core"] == PROTOCOL_CORE  # the same for the protocol core
    assert sqlite_rows.ROW_PATH == "compiled" or os.environ.get("CASEMATE_PURE")
    assert PROTOCOL_CORE == "compiled" or os.environ.get("CASEMATE_PURE")
    assert (f"event loop: {choice}; row path: {sqlite_rows.ROW_PATH}; protocol core: "
            f"{PROTOCOL_CORE}") in (db / "Logs" / "server.log").read_text()


def test_uvloop_asked_but_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    cli = importlib.import_module("casemate.cli.main")  # (casemate.cli.main is also a function)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now fails
    assert cli._loop_factory("auto") is None            # auto: the standard loop
    assert cli._loop_factory("asyncio") is None
    with pytest.raises(SystemExit) as e:
        cli._loop_factory("uvloop")
    assert e.value.code == 2


def test_idle_timeout_counts_from_requests_served_at_once(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    """A request served straight from data_received is activity, and the idle timeout runs
    from it: not from when the session's task last woke up."""
    db = make_db()
    set_setting(db, "idle_timeout_seconds", "2")
    server = server_factory(db)
    conn = server.connect(reconnect_attempts=0)
    conn.autocommit = True
    try:
        for _ in range(3):  # known to be short from now on: served without the task
            conn.execute("SELECT 1").fetchall()
        time.sleep(1.2)
        conn.execute("SELECT 1").fetchall()  # the last activity
        time.sleep(1.0)
        assert conn.execute("SELECT 2").fetchall() == [(2,)]  # 1.0 s idle: still open
        last = time.monotonic()
        time.sleep(2.4)  # 2.4 s idle: closed at about 2.0 s
        with pytest.raises(casemate.OperationalError):
            conn.execute("SELECT 3")
        assert any(code == "57P05" for code, _ in conn.notices)
        assert time.monotonic() - last < 5
    finally:
        conn.close()


def test_inline_limits_do_not_outlive_the_event_loop(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A call in the event loop holds values to INLINE_MAX_LENGTH and stays so after it
    (disarm keeps the limits for the next inline call); the next call in a thread (arm)
    builds a value of any size under the usual limit."""
    from casemate.storage import StorageError, TooLong
    from casemate.storage.access import Policy
    from casemate.storage.sqlite import INLINE_MAX_LENGTH, SQLiteBackend

    backend = SQLiteBackend(tmp_path)
    conn = backend.connect()
    try:
        conn.set_policy(Policy("admin"))
        big = f"SELECT length(zeroblob({4 * INLINE_MAX_LENGTH}))"
        for _ in range(2):  # the second inline call starts with the limits left in place
            conn.arm(0.05)
            with pytest.raises(TooLong):
                conn.execute(big, ())
            conn.disarm()
        conn.arm(0.05)
        assert conn.execute("SELECT 1", ()).fetch(1) == [(1,)]
        conn.disarm()
        conn.arm()  # as before a worker thread's call
        assert conn.execute(big, ()).fetch(1) == [(4 * INLINE_MAX_LENGTH,)]
        conn.arm(0.05)  # and back in the event loop, the inline limit again
        with pytest.raises((TooLong, StorageError)):
            conn.execute(big, ())
        conn.disarm()
    finally:
        conn.close()
        backend.close()
