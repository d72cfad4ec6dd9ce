"""The SQLite storage's typed values (storage/sqlite_types.py), without a server:
the DDL rewrite, the result typing rule and the decimal collation (issue 19)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from casemate.storage import StorageConnection, StorageError
from casemate.storage.access import Policy
from casemate.storage.sqlite import SQLiteBackend
from casemate.storage.sqlite_types import rewrite_ddl

D = dt.date(2020, 5, 5)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[StorageConnection]:
    c = SQLiteBackend.create(tmp_path).connect()
    c.set_policy(Policy("admin"))
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, d DATE, a DECIMAL(10,2))", ())
    c.execute("INSERT INTO t (name, d, a) VALUES ('bob', '2024-01-01', '1.50'), "
              "('al', '2024-02-01', '12.25')", ())
    yield c
    c.close()


def rows(c: StorageConnection, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return c.execute(sql, params).fetch(100)


@pytest.mark.parametrize(("sql", "params", "want"), [
    ("SELECT ?", (D,), [(D,)]),
    ("SELECT (SELECT ?)", (D,), [(D,)]),
    ("SELECT * FROM (SELECT ? AS x, id FROM t) ORDER BY id LIMIT ?", (D, 1), [(D, 1)]),
    ("VALUES (?), (?)", (D, D), [(D,), (D,)]),
    ("SELECT ? FROM t GROUP BY name", (True,), [(True,), (True,)]),
    ("SELECT decimal_sum(a), decimal(max(a)) FROM t", (), [(Decimal("13.75"), Decimal("12.25"))]),
    # Not typed: computed by SQL, or a parameter of another (untyped) value.
    ("SELECT ? || ''", (D,), [("2020-05-05",)]),
    ("SELECT ?, ?", (D, "2020-05-05"), [(D, "2020-05-05")]),
    ("SELECT ifnull(?, 0)", (True,), [(1,)]),
    ("SELECT count(*) FROM t WHERE ?", (True,), [(2,)]),
    ("SELECT CASE WHEN id = 1 THEN ? ELSE 'abc' END FROM t ORDER BY id", (D,),
     [("2020-05-05",), ("abc",)]),
])
def test_result_typing_rule(conn: StorageConnection, sql: str, params: tuple[Any, ...],
                            want: list[tuple[Any, ...]]) -> None:
    assert rows(conn, sql, params) == want


def test_decimal_collation_orders_numbers(conn: StorageConnection) -> None:
    assert rows(conn, "SELECT a FROM t ORDER BY a DESC") == [(Decimal("12.25"),),
                                                             (Decimal("1.50"),)]
    assert rows(conn, "SELECT max(a), min(a) FROM t") == [("12.25", "1.50")]
    assert rows(conn, "SELECT id FROM t WHERE a = ?", (Decimal("1.5"),)) == [(1,)]
    assert rows(conn, "SELECT id FROM t WHERE a > 2") == [(2,)]


@pytest.mark.parametrize(("sql", "code"), [
    ("INSERT INTO t (d) VALUES ('abc')", "22007"),
    ("INSERT INTO t (a) VALUES ('1_000')", "22P02"),
    ("INSERT INTO t (a) VALUES ('123456789.00')", "22003"),
    ("INSERT INTO t (id) VALUES ('x')", "22P02"),
])
def test_type_checks(conn: StorageConnection, sql: str, code: str) -> None:
    with pytest.raises(StorageError) as e:
        conn.execute(sql, ())
    assert e.value.code == code


@pytest.mark.parametrize("sql", [
    "CREATE TABLE x AS SELECT 1 AS a",
    "CREATE TABLE x (a INTEGER, b DECIMAL) STRICT",
    "CREATE INDEX i ON t (a)",
    "SELECT 'CREATE TABLE'",
    "create table x (a decimal(10,2",  # SQLite reports the error itself
])
def test_statements_left_alone(sql: str) -> None:
    assert rewrite_ddl(sql) == sql


def test_rewrite_keeps_quoted_names_defaults_and_comments() -> None:
    sql = ('CREATE TABLE "we""ird" ("a b" DECIMAL(10, 2) NOT NULL DEFAULT 0, -- c, (\n'
           "[c] DATE DEFAULT (date('now')), e, CHECK (e > 0))")
    new = rewrite_ddl(sql)
    db = sqlite3.connect(":memory:")
    from casemate.storage.sqlite_types import install
    install(db)
    db.execute(new)
    cols = {r[1]: r[2] for r in db.execute('PRAGMA table_info("we""ird")')}
    assert cols == {"a b": "DECIMAL TEXT(10, 2)", "c": "DATE", "e": ""}
    db.execute('INSERT INTO "we""ird" ("a b", e) VALUES (?, 1)', ("1.50",))
    assert db.execute('SELECT "a b", c IS NOT NULL FROM "we""ird"').fetchone() == ("1.50", 1)


@pytest.mark.parametrize(("value", "ok"), [
    ("2024-02-29", True), ("0001-01-01", True), ("9999-12-31", True), ("2024-02-30", False),
    ("2023-02-29", False), ("2024-1-2", False), ("abc", False), (20240102, False)])
def test_dates_must_be_real_days(conn: StorageConnection, value: object, ok: bool) -> None:
    try:
        conn.execute("INSERT INTO t (d) VALUES (?)", (value,))
    except StorageError as e:
        assert not ok and e.code == "22007"
    else:
        assert ok


def test_ddl_through_executemany_is_rewritten(conn: StorageConnection) -> None:
    conn.executemany("CREATE TABLE m (a DECIMAL)", [()])
    conn.execute("INSERT INTO m VALUES (?)", (Decimal("0.10000000000000000001"),))
    assert rows(conn, "SELECT a FROM m") == [(Decimal("0.10000000000000000001"),)]
