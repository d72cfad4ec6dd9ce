"""A stop (cancel, statement timeout) that SQLite reports after the commit it interrupted
cannot undo it: the commit is reported as done, never as cancelled (found by review: a
COMMIT's only progress check comes after the Halt that commits)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from casemate.storage.access import Policy
from casemate.storage.sqlite import SQLiteBackend
from casemate.storage.sqlite_cursor import _Done

ROUNDS = 3000  # the stop lands after the commit in a few rounds per thousand


@pytest.fixture
def conn(tmp_path: Path):  # type: ignore[no-untyped-def]
    backend = SQLiteBackend(tmp_path)
    c = backend.connect()
    c.set_policy(Policy("admin", {}))
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INT)", ()).close()
    yield c
    c.close()
    backend.close()


@pytest.mark.parametrize("how", ["message", "sql"])
def test_what_a_stopped_commit_reports_is_what_is_stored(conn, tmp_path: Path, how: str) -> None:  # type: ignore[no-untyped-def]
    raw = sqlite3.connect(tmp_path / "data.sqlite")
    lies = []
    for i in range(ROUNDS):
        conn.arm()  # as before a worker thread's call
        conn.begin()
        conn.execute("INSERT INTO t (v) VALUES (?)", (i,)).close()
        conn.interrupt()  # a CANCEL arriving while the COMMIT runs
        try:
            if how == "message":
                conn.commit()
            else:
                conn.execute("/* done */ COMMIT", ()).close()
            reported = True
        except Exception:
            reported = False
            if conn.in_transaction:
                conn.rollback()
            conn.rollback()  # clears what a reported loss left
        stored = raw.execute("SELECT count(*) FROM t WHERE v = ?", (i,)).fetchone()[0] == 1
        if reported != stored:
            lies.append((i, reported, stored))
    raw.close()
    assert not lies, f"{len(lies)} commits reported otherwise than stored: {lies[:3]}"


def test_a_write_done_before_its_stop_counts_its_own_rows(conn) -> None:  # type: ignore[no-untyped-def]
    """The count of a write whose stop came after its commit is the statement's own, as the
    usual path gives it: rows written by its triggers are not counted."""
    conn.execute("CREATE TABLE log (v INT)", ()).close()
    conn.execute("CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO log VALUES (new.v); "
                 "INSERT INTO log VALUES (new.v); END", ()).close()
    conn.arm()
    assert conn.execute("INSERT INTO t (v) VALUES (-1)", ()).rowcount == 1
    done = []
    for i in range(ROUNDS):
        conn.arm()
        conn.interrupt()
        try:
            cur = conn.execute("INSERT INTO t (v) VALUES (?)", (i,))
        except Exception:
            continue  # stopped before its commit: nothing written
        if isinstance(cur, _Done):  # its stop was reported after its commit
            done.append(cur.rowcount)
    assert done, "no stop landed after a commit in this many rounds"
    assert set(done) == {1}
