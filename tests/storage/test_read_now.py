"""The server's fast lane on SQLite (``StorageConnection.read_now``, issue 16) against the
general path it shortens (``execute_first`` + ``fetch_batch``): the same bytes, types,
column names, row id, following rows and transaction bookkeeping, the same errors, and
None (nothing run) wherever the general path has more to do."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casemate.server.results import BATCH_BYTES, execute_first, fetch_batch
from casemate.storage import StorageConnection, StorageError, sqlite_rows
from casemate.storage.access import Policy
from casemate.storage.base import TooLong
from casemate.storage.sqlite import SQLiteBackend
from casemate.storage.sqlite_typer import has_typed_result

needs_compiled = pytest.mark.skipif(not sqlite_rows.COMPILED,
                                    reason="the pure row path is forced (CASEMATE_PURE)")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[StorageConnection, StorageConnection]]:
    """Two compiled connections on one database: one for the lane, one for the general path."""
    backend = SQLiteBackend.create(tmp_path)
    a, b = backend.connect(), backend.connect()
    for c in (a, b):
        c.set_policy(Policy("admin"))
    a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, price REAL, "
              "d DECIMAL(10,2), j JSON, when_ TIMESTAMP)", ())
    a.execute("INSERT INTO t (id, name, qty, price) VALUES (1, 'one', 1, 0.25), "
              "(2, NULL, 2, NULL), (3, 'three', NULL, 0.75)", ())
    yield a, b
    a.close()
    b.close()


def lane(c: StorageConnection, sql: str, params: tuple[Any, ...], rows: int = 1000) -> Any:
    c.arm(5.0)
    try:
        done = c.read_now(sql, params, rows, BATCH_BYTES)
    finally:
        c.disarm()
    if done is None:
        return None
    cur, desc, types, body, n, more, lastrowid = done
    out = ((body, n, more, types), [d[0] for d in desc], -1, lastrowid, rest(cur, more))
    cur.close()
    return out


def warm(c: StorageConnection, sql: str, params: tuple[Any, ...]) -> None:
    """Run ``sql`` as a worker thread does (no cut-off): the declared column types of a
    result whose first row cannot tell them are worked out there and kept; in the event
    loop they are only read from what was kept (else TooLong: a thread next)."""
    c.arm()
    try:
        cur, _ = execute_first(c, sql, params, False, 1000)
    finally:
        c.disarm()
    cur.close()


def general(c: StorageConnection, sql: str, params: tuple[Any, ...], rows: int = 1000) -> Any:
    c.arm(5.0)
    try:
        cur, batch = execute_first(c, sql, params, False, rows)
    finally:
        c.disarm()
    assert batch is not None
    out = (tuple(batch), [d[0] for d in cur.description or ()], cur.rowcount, cur.lastrowid,
           rest(cur, batch.more))
    cur.close()
    return out


def rest(cur: Any, more: bool) -> list[Any]:
    """The batches a FETCH would read next, from the cursor kept for them."""
    out: list[Any] = []
    while more:
        batch = fetch_batch(cur, 1000, describe=False)
        out.append(tuple(batch))
        more = batch.more
    return out


STATEMENTS = [
    ("SELECT name, qty, price FROM t WHERE id = ?", (1,)),
    ("SELECT name, qty, price FROM t WHERE id = ?", (2,)),  # NULLs: declared types
    ("SELECT name, qty, price FROM t WHERE id = ?", (99,)),  # no row
    ("SELECT id, name, qty, price FROM t ORDER BY id", ()),
    ("SELECT id FROM t ORDER BY id", ()),
    ("SELECT ?, ?, ?, ?, ?", (None, -(2**63), 1.5, "é", b"\x00\xff")),
    ("SELECT count(*), sum(qty) FROM t", ()),
    ("WITH r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 3000) SELECT i FROM r", ()),
    ("VALUES (1, 'a'), (2, 'b')", ()),
    ("select name from t where name like ?", ("t%",)),
]


@needs_compiled
@pytest.mark.parametrize(("sql", "params"), STATEMENTS)
@pytest.mark.parametrize("in_txn", [False, True])
def test_the_lane_gives_what_the_general_path_gives(
        pair: tuple[StorageConnection, StorageConnection], sql: str, params: tuple[Any, ...],
        in_txn: bool) -> None:
    a, _ = pair  # one connection for both: the same last row id
    if in_txn:
        a.begin()
    for rows in (1000, 2):  # the whole result, and a first batch with more to come
        warm(a, sql, params)
        got = lane(a, sql, params, rows)
        after_lane = (a.in_transaction, a.txn_since, a.write_since)
        ref = general(a, sql, params, rows)
        assert got is not None, "the lane declined a statement it takes"
        assert got == ref
        assert after_lane == (a.in_transaction, a.txn_since, a.write_since)
        assert a.in_transaction is in_txn


values = st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
                   st.floats(allow_nan=False), st.text(max_size=50), st.binary(max_size=50))


@needs_compiled
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=st.tuples(values, values, values))
def test_the_same_bytes_for_any_values(pair: tuple[StorageConnection, StorageConnection],
                                       row: tuple[Any, ...]) -> None:
    a, _ = pair
    a.execute("CREATE TABLE IF NOT EXISTS v (id INTEGER PRIMARY KEY, a, b, c)", ())
    a.execute("DELETE FROM v", ())
    a.execute("INSERT INTO v VALUES (7, ?, ?, ?)", row)
    sql = "SELECT a, b, c, ? FROM v WHERE id = 7"
    warm(a, sql, (row[0],))
    assert lane(a, sql, (row[0],)) == general(a, sql, (row[0],))


@pytest.mark.parametrize(("sql", "params"), [
    ("INSERT INTO t (id) VALUES (10) RETURNING id", ()),  # writes: never here
    ("EXPLAIN SELECT 1", ()),
    ("EXPLAIN QUERY PLAN SELECT 1", ()),
    ("SELECT ?", (Decimal("1.5"),)),  # a typed result: the typer's plan
    ("SELECT decimal_add(d, d) FROM t", ()),
    ("SELECT d FROM t", ()),  # a declared type with a converter
    ("SELECT when_ FROM t", ()),
    ("CREATE TABLE u (x DECIMAL(5,2))", ()),
    ("SELECT 1; SELECT 2", ()),
    ("SELECT * FROM no_such_table", ()),  # a prepare error: the general path reports it
])
def test_the_lane_declines_what_needs_the_general_path(
        pair: tuple[StorageConnection, StorageConnection], sql: str,
        params: tuple[Any, ...]) -> None:
    a, _ = pair
    before = a.execute("SELECT count(*) FROM t", ()).fetch(1)
    assert lane(a, sql, params) is None
    assert a.execute("SELECT count(*) FROM t", ()).fetch(1) == before
    assert not a.in_transaction


def test_the_lane_declines_a_per_table_group_and_a_lost_transaction(
        pair: tuple[StorageConnection, StorageConnection]) -> None:
    a, _ = pair
    policy = Policy("clerks", {"t": frozenset({"SELECT"})})
    a.set_policy(policy)
    assert policy.per_table  # its statements' programs are checked: the general path
    assert lane(a, "SELECT id FROM t", ()) is None
    a.set_policy(Policy("admin"))
    a.begin()
    a._lost = True  # type: ignore[attr-defined]  # a stopped write undid the transaction
    assert lane(a, "SELECT id FROM t", ()) is None


@needs_compiled
@pytest.mark.parametrize(("sql", "params"), [
    ("SELECT abs(-9223372036854775807 - 1)", ()),  # fails while stepping
    ("SELECT json(?)", ("{",)),
    ("SELECT * FROM t WHERE id = ?", (1, 2)),  # a parameter count mismatch
])
def test_the_same_errors(pair: tuple[StorageConnection, StorageConnection], sql: str,
                         params: tuple[Any, ...]) -> None:
    a, b = pair
    with pytest.raises(Exception) as got:
        if lane(a, sql, params) is None:
            general(a, sql, params)  # declined: the general path reports it
    with pytest.raises(Exception) as ref:
        general(b, sql, params)
    assert type(got.value) is type(ref.value)
    assert str(got.value) == str(ref.value)
    if isinstance(ref.value, StorageError):
        assert got.value.code == ref.value.code  # type: ignore[attr-defined]
    assert lane(a, "SELECT 1", ()) is not None  # the connection goes on


@needs_compiled
@pytest.mark.parametrize("params", [(2**63,), (-(2**63) - 1,), (float("nan"),),
                                    (Decimal("1.5"),), ({"a": 1},)])
def test_parameters_execute_must_check_or_type_are_declined(
        pair: tuple[StorageConnection, StorageConnection], params: tuple[Any, ...]) -> None:
    """An integer beyond 64 bits or a NaN (execute() refuses them with its own message),
    a value of a typed type (its result is read through the typer's plan): nothing runs,
    the general path takes the statement."""
    a, _ = pair
    assert lane(a, "SELECT ?", params) is None
    assert lane(a, "SELECT ?", (2**63 - 1,)) is not None  # the largest that fits: taken


@needs_compiled
def test_a_stop_at_the_cut_off_is_too_long(
        pair: tuple[StorageConnection, StorageConnection]) -> None:
    a, _ = pair
    slow = ("WITH r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 100000000) "
            "SELECT count(*) FROM r")
    a.arm(0.002)
    t0 = time.monotonic()
    try:
        with pytest.raises(TooLong):
            a.read_now(slow, (), 1000, BATCH_BYTES)
    finally:
        a.disarm()
    assert time.monotonic() - t0 < 2
    assert lane(a, "SELECT 2", ()) is not None  # nothing left behind


@needs_compiled
def test_a_typed_statement_is_declined_without_reading_the_schema(
        pair: tuple[StorageConnection, StorageConnection]) -> None:
    """A typed statement's plan may read the schema again after another connection
    changed it (helper-37: outside the cut-off, that held the event loop; a stop there
    ended the session).  The lane never asks for a plan: it declines on the parameter's
    type, before anything runs, however stale the schema."""
    a, b = pair
    sql = "SELECT id, name FROM t WHERE d > ?"
    for i in range(300):  # a schema that takes SQLite more than a few steps to read
        b.execute(f"CREATE TABLE filler{i} (x INTEGER, y TEXT)", ())
    a.arm(1e-9)  # every progress check from now on stops
    try:
        assert a.read_now(sql, (Decimal("1.5"),), 1000, BATCH_BYTES) is None
    finally:
        a.disarm()
    assert lane(a, "SELECT 3", ()) is not None  # the connection goes on


@needs_compiled
def test_what_the_lane_keeps_per_text_is_bounded(
        pair: tuple[StorageConnection, StorageConnection]) -> None:
    a, _ = pair
    for i in range(2000):
        assert lane(a, f"SELECT {i}", ()) is not None
    assert len(a._lane) <= 256  # type: ignore[attr-defined]


@needs_compiled
def test_the_transaction_bookkeeping_of_a_read_and_of_a_write_before_it(
        pair: tuple[StorageConnection, StorageConnection]) -> None:
    """note_transaction's effect, which the lane keeps without the call: a transaction's
    start is noted by its first statement; a read notes no write; a write before it
    stays noted."""
    a, _ = pair
    a.begin()
    assert lane(a, "SELECT 1", ()) is not None
    assert a.txn_since is not None and a.write_since is None
    a.execute("UPDATE t SET qty = qty WHERE id = 1", ())
    since = a.write_since
    assert since is not None
    assert lane(a, "SELECT 2", ()) is not None
    assert a.write_since == since
    a.commit()
    assert lane(a, "SELECT 3", ()) is not None
    assert (a.txn_since, a.write_since) == (None, None)


@pytest.mark.parametrize("path", ["lane", "general"])
def test_declared_types_from_a_schema_text_over_the_event_loops_value_size(
        pair: tuple[StorageConnection, StorageConnection], path: str) -> None:
    """helper-39: a table whose CREATE text is longer than the value size allowed in the
    event loop (16 KiB): the declared types of a NULL column are read from that text,
    which SQLite refused as too big; the DataError left the storage untranslated and the
    session ended with XX000 (on both paths).  Now it is TooLong: a thread reads it."""
    a, _ = pair
    cols = ", ".join(f"column_with_a_rather_long_name_{i:04d} INTEGER" for i in range(300))
    a.execute(f"CREATE TABLE wide (id INTEGER PRIMARY KEY, {cols})", ())
    a.execute("INSERT INTO wide (id) VALUES (1)", ())
    sql = "SELECT column_with_a_rather_long_name_0001 FROM wide WHERE id = ?"
    with pytest.raises(TooLong):
        if path == "lane":
            lane(a, sql, (1,))
        else:
            general(a, sql, (1,))
    a.arm()  # a worker thread: the usual value size
    try:
        cur, batch = execute_first(a, sql, (1,), False, 10)
    finally:
        a.disarm()
    assert batch is not None and batch.types == ["integer"]
    cur.close()


def test_the_decimal_function_check_is_linear_in_the_text() -> None:
    """Whether a statement calls a decimal_* function is asked of every statement (the
    general path's typer) and of every new text (the lane).  Searched inside words, a
    text of "decimal" repeated was quadratic (helper-39: 23 ms at 4 KiB; 40 KiB ~2 s);
    from word starts it is linear.  The bound is a thousand times what it takes."""
    t0 = time.perf_counter()
    assert not has_typed_result("SELECT " + "decimal" * 6000)
    assert time.perf_counter() - t0 < 1.0
    assert has_typed_result("SELECT decimal_add(a, b) FROM t")
    assert has_typed_result("SELECT 1 + DECIMAL_SUM (x) FROM t")
    assert not has_typed_result("SELECT decimal_col FROM t")



@needs_compiled
@pytest.mark.parametrize("path", ["lane", "general"])
def test_declared_types_are_worked_out_in_a_thread_then_read_in_the_loop(
        pair: tuple[StorageConnection, StorageConnection], path: str) -> None:
    """A result whose first row cannot tell its column types (a NULL, no row): working
    them out runs an EXPLAIN that SQLite never stops and analyses it in Python (helper-39:
    0.6-1.3 s of the event loop for a crafted statement).  In the loop that is TooLong
    (a thread next), where they are worked out and kept; the loop then reads them."""
    a, _ = pair
    sql = "SELECT name, qty, price FROM t WHERE id = ?"
    run = lane if path == "lane" else general
    with pytest.raises(TooLong):
        run(a, sql, (2,))  # NULLs in the first row, types never worked out
    warm(a, sql, (2,))
    got = run(a, sql, (2,))
    assert got is not None and got[0][3] == ["text", "integer", "float"]
    assert run(a, sql, (99,))[0][3] == ["text", "integer", "float"]  # no row: the same
