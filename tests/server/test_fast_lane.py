"""The server's side of the fast lane (issue 16): everything the lane does for a request
runs under the event loop's cut-off, as the general inline call's does
(``Runner.read_now``), and its reply is made of the same frames as the general path's
(``handlers._lane_done`` against ``_query_done``).  The storage side is
tests/storage/test_read_now.py."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from casemate.server import handlers
from casemate.server.inline import CostModel
from casemate.server.results import BATCH_BYTES, execute_first
from casemate.server.runner import Runner
from casemate.storage import sqlite_rows
from casemate.storage.access import Policy
from casemate.storage.base import TooLong
from casemate.storage.sqlite import SQLiteBackend

needs_compiled = pytest.mark.skipif(not sqlite_rows.COMPILED,
                                    reason="the pure row path is forced (CASEMATE_PURE)")


@pytest.mark.skipif(not sqlite_rows.COMPILED, reason="the pure row path is forced (CASEMATE_PURE)")
def test_the_column_types_of_an_empty_result_are_read_under_the_cut_off(tmp_path: Path) -> None:
    """A result whose first row cannot tell its column types (no row, a NULL) asks the
    schema (EXPLAIN and table lookups): in the event loop only what a thread worked out
    and kept is read; anything else is TooLong at once and left to a thread.  helper-37
    found the fifth stop's lane working them out after the cut-off was lifted: a short
    statement with new parameter types held the event loop for seconds."""
    conn = SQLiteBackend.create(tmp_path).connect()
    conn.set_policy(Policy("admin"))
    conn.execute("CREATE TABLE w (" + ", ".join(f"c{i} TEXT" for i in range(60)) + ")", ())
    ctes = ["a0 AS NOT MATERIALIZED (SELECT c0 FROM w)"] + [
        f"a{i} AS NOT MATERIALIZED (SELECT * FROM a{i - 1} UNION ALL SELECT * FROM a{i - 1})"
        for i in range(1, 8)]
    sql = "WITH " + ", ".join(ctes) + " SELECT * FROM a7 WHERE ?1 AND ?2 AND 0"
    conn.arm()  # a worker thread: the declared types are worked out there, and kept
    execute_first(conn, sql, (1, 1), False, 1000)[0].close()
    conn.disarm()
    conn.arm(60.0)  # the statement itself is short: no row, once prepared
    read = conn.read_now(sql, (1, 1), 1000, BATCH_BYTES)
    conn.disarm()
    assert read is not None and read[4] == 0  # rows
    read[0].close()
    session: Any = SimpleNamespace(server=SimpleNamespace(cost=CostModel(0.0001)), seq=1,
                                   closed=False)
    runner = Runner(session)
    t0 = time.monotonic()
    with pytest.raises(TooLong):  # new parameter types: the schema is asked again
        runner.read_now(conn, (sql, False), sql, (1, "a"), 1000)
    assert time.monotonic() - t0 < 2.0
    assert session.server.cost.cut_calls == 1  # a thread next time, as inline() decides
    assert not session.server.cost.inline((sql, False))
    conn.close()


class _Proto:
    """Records the frames a reply is made of, instead of encoding them."""

    def send_result(self, desc: Any, types: Any, body: bytes, rowcount: int, lastrowid: Any,
                    in_txn: bool) -> tuple[Any, ...]:
        return ("RESULT", [d[0] for d in desc], list(types), body, rowcount, lastrowid, in_txn)

    def send_packed(self, msg: Any, body: bytes) -> tuple[Any, ...]:
        return (msg.name, body)

    def send(self, msg: Any, body: Any = None) -> tuple[Any, ...]:
        return (msg.name, body)


def _session(conn: Any) -> tuple[Any, list[Any]]:
    out: list[Any] = []
    s: Any = SimpleNamespace(proto=_Proto(), write=out.append, portals={}, storage=conn,
                             result_frames=True,
                             server=SimpleNamespace(lock_released=lambda: out.append("woken")))
    s.send = lambda msg, body=None: out.append(s.proto.send(msg, body))
    return s, out


@needs_compiled
@pytest.mark.parametrize(("sql", "params"), [
    ("SELECT name, qty, price FROM t WHERE id = ?", (1,)),
    ("SELECT name, qty, price FROM t WHERE id = ?", (2,)),  # NULLs: the declared types
    ("SELECT name, qty, price FROM t WHERE id = ?", (99,)),  # no row
    ("SELECT id, name FROM t ORDER BY id", ()),  # more rows than a batch: a portal
])
@pytest.mark.parametrize("in_txn", [False, True])
def test_the_lane_replies_with_the_general_paths_frames(
        tmp_path: Path, sql: str, params: tuple[Any, ...], in_txn: bool) -> None:
    conn = SQLiteBackend.create(tmp_path).connect()
    conn.set_policy(Policy("admin"))
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, price REAL)", ())
    conn.execute("INSERT INTO t VALUES (1, 'one', 1, 0.25), (2, NULL, 2, NULL), "
                 "(3, 'three', 3, 0.75)", ())
    if in_txn:
        conn.begin()
    conn.arm()  # as a worker thread: the declared types of NULLs are worked out, kept
    try:
        execute_first(conn, sql, params, False, 2)[0].close()
    finally:
        conn.disarm()
    replies = []
    for use_lane in (True, False):
        s, out = _session(conn)
        conn.arm(5.0)
        try:
            done = conn.read_now(sql, params, 2, BATCH_BYTES) if use_lane else None
            result = None if use_lane else execute_first(conn, sql, params, False, 2)
        finally:
            conn.disarm()
        if use_lane:
            assert done is not None
            handlers._lane_done(s, 7, conn, done)
        else:
            assert result is not None
            handlers._query_done(s, 7, sql, conn, result)
        portal = s.portals.pop(7, None)
        # the rows a FETCH reads next from the cursor kept as the portal
        after = None if portal is None else portal.pack(1000, BATCH_BYTES, False)
        if portal is not None:
            portal.close()
        replies.append((out, after))
    assert replies[0] == replies[1]
    assert conn.in_transaction is in_txn
    conn.close()
