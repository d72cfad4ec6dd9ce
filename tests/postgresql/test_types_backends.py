"""Values come back exactly as they went in, on both backends (issue 19; docs/types.md).

A Hypothesis property writes rows of every supported type, edge values
included, through the DB-API (execute and executemany), the asyncio client
and a server method, to a real server over SQLite and over PostgreSQL, and
reads them back equal; typed parameters selected back keep their Python type.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import uuid
from collections.abc import Iterator
from decimal import Context, Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import casemate
import casemate.aio
from casemate.database import create_database
from casemate.pgtest import PostgresServer
from casemate.testing import ServerProcess

from .conftest import init_folder

PW = "types-pw"
METHOD = '''\
from casemate.methods import method


@method
def put(db, row: list) -> int:
    marks = ", ".join("?" * len(row))
    db.execute(f"INSERT INTO vals VALUES ({marks})", tuple(row))
    return len(row)


@method
def echo(db, value):
    return db.execute("SELECT ?", (value,)).fetchone()[0]
'''
COLUMNS = ["id", "i", "f", "t", "b", "n", "d", "ts", "tz", "tm", "bo", "u", "j"]
DDL = {
    "sqlite": "CREATE TABLE vals (id INTEGER PRIMARY KEY, i INTEGER, f REAL, t TEXT, b BLOB, "
              "n DECIMAL, d DATE, ts TIMESTAMP, tz TIMESTAMPTZ, tm TIME, bo BOOLEAN, u UUID, "
              "j JSON)",
    "postgresql": "CREATE TABLE vals (id bigint PRIMARY KEY, i bigint, f double precision, "
                  "t text, b bytea, n numeric, d date, ts timestamp, tz timestamptz, tm time, "
                  "bo boolean, u uuid, j jsonb)",
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp(request.param) / "db"
    if request.param == "sqlite":
        create_database(folder, None, PW)
        (folder / "Methods").mkdir(exist_ok=True)
        (folder / "Methods" / "types_m.py").write_text(METHOD)
        s = ServerProcess(folder, password=PW).start()
    else:
        pg: PostgresServer = request.getfixturevalue("pg")
        r = init_folder(pg, folder, PW)
        assert r.returncode == 0, r.stderr
        (folder / "Methods").mkdir(exist_ok=True)
        (folder / "Methods" / "types_m.py").write_text(METHOD)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CASEMATE_PG_PASSWORD", pg.password)
            s = ServerProcess(folder, password=PW).start()
    with s.connect() as conn:
        conn.execute(DDL[request.param])
        conn.commit()
    yield s
    s.stop()


# -- values ---------------------------------------------------------------------------
def _floats(backend: str) -> st.SearchStrategy[float]:
    # SQLite cannot store NaN (it would become NULL): Casemate refuses it there (below).
    return st.floats(allow_nan=backend == "postgresql") | st.sampled_from(
        [math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308])


_decimals = st.builds(lambda c, k: Decimal(c).scaleb(-k),
                      st.integers(-(10**28) + 1, 10**28 - 1), st.integers(0, 10)) | st.sampled_from(
    [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"), Decimal("1.10"),
     Decimal("12345678901234567.89"), Decimal("-0.00"), Decimal("99999999999999999999999999999999999999")])
_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
_text = st.text(_chars)
_json = st.dictionaries(st.text(_chars, max_size=5),
                        st.integers(-(2**53), 2**53) | _text | st.booleans() | st.none(),
                        max_size=4)
_aware = st.datetimes(min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 12, 31),
                      timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=5,
                                                                                   minutes=30)),
                                                 dt.timezone(dt.timedelta(hours=-8))]))


def _row(backend: str) -> st.SearchStrategy[tuple[Any, ...]]:
    opt = lambda s: st.none() | s  # noqa: E731
    return st.tuples(
        opt(st.integers(-(2**63), 2**63 - 1) | st.sampled_from([2**63 - 1, -(2**63), 0])),
        opt(_floats(backend)), opt(_text), opt(st.binary()), opt(_decimals),
        opt(st.dates() | st.sampled_from([dt.date.min, dt.date.max])),
        opt(st.datetimes() | st.sampled_from([dt.datetime.min, dt.datetime.max])),
        opt(_aware), opt(st.times()), opt(st.booleans()), opt(st.uuids()),
        opt(_json.map(casemate.Json)))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, Decimal) and isinstance(b, Decimal):
        return a.compare_total(b) == 0 if a.is_nan() or b.is_nan() else a == b
    if isinstance(a, casemate.Json):
        return b == a.obj
    return type(a) is type(b) and a == b


def _check(conn: casemate.Connection, rows: list[tuple[Any, ...]]) -> None:
    got = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM vals ORDER BY id").fetchall()
    assert len(got) == len(rows)
    for want, have in zip(rows, got, strict=True):
        for c, a, b in zip(COLUMNS, want, have, strict=True):
            assert (a is None and b is None) or _same(a, b), (c, a, b)


_ids = iter(range(1, 10**9))


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_rows_round_trip_by_every_path(server: ServerProcess, data: st.DataObject) -> None:
    with server.connect() as conn:
        backend = conn.backend
        rows = [(next(_ids), *data.draw(_row(backend))) for _ in range(4)]
        marks = ", ".join("?" * len(COLUMNS))
        conn.execute("DELETE FROM vals")
        conn.execute(f"INSERT INTO vals VALUES ({marks})", rows[0])      # DB-API execute
        conn.cursor().executemany(f"INSERT INTO vals VALUES ({marks})", [rows[1]])
        assert conn.call("put", list(rows[2])) == len(COLUMNS)           # server method
        conn.commit()

        async def through_aio() -> None:
            a = await casemate.aio.connect(server.url)
            try:
                await a.execute(f"INSERT INTO vals VALUES ({marks})", rows[3])
                await a.commit()
            finally:
                await a.close()
        asyncio.run(through_aio())
        _check(conn, rows)
        selected = conn.execute(f"SELECT {marks}", rows[0]).fetchone()  # typed in expressions
        assert selected is not None
        for c, a, b in zip(COLUMNS, rows[0], selected, strict=True):
            assert (a is None and b is None) or _same(a, b), (c, a, b)
        conn.rollback()


TYPED = [Decimal("1.10"), Decimal("12345678901234567890.123456789"), dt.date(2024, 1, 2),
         dt.datetime(2024, 1, 2, 3, 4, 5, 6), dt.time(23, 59, 59, 999999), True, False,
         uuid.UUID(int=7), b"", b"\x00\xff", ""]


def test_typed_parameters_selected_back(server: ServerProcess) -> None:
    with server.connect() as conn:
        cur = conn.cursor()
        for v in TYPED:
            cur.execute("SELECT ?", (v,))
            got = cur.fetchone()
            assert got is not None and _same(v, got[0]), (v, got)
            cur.execute("WITH x(a) AS (SELECT ?) SELECT a FROM x", (v,))
            got = cur.fetchone()
            assert got is not None and _same(v, got[0]), (v, got)
        cur.execute("SELECT ?, ?, ?", (Decimal("1.10"), dt.date(2024, 1, 2), True))
        assert cur.fetchall() == [(Decimal("1.10"), dt.date(2024, 1, 2), True)]
        assert [d[1] for d in cur.description] == ["decimal", "date", "bool"]
        cur.execute("SELECT COALESCE(?, d) FROM vals LIMIT 1", (dt.date(2000, 1, 1),))
        assert cur.fetchall() in ([], [(dt.date(2000, 1, 1),)])
        assert conn.call("echo", Decimal("2.50")) == Decimal("2.50")
        cur.execute("SELECT ?", (casemate.Json({"a": [1, 2]}),))
        assert cur.fetchall() == [({"a": [1, 2]},)] and cur.description[0][1] == "json"
        conn.rollback()


CODES = ["integer", "integer", "float", "text", "bytes", "decimal", "date", "datetime",
         "datetime", "time", "bool", "uuid", "json"]


def test_description_types_without_values(server: ServerProcess) -> None:
    """Type codes come from the declared column types when no row (or a NULL) shows one,
    by every path a column reaches a result: plain, filtered, sorted, a subquery, a view,
    UNION; expressions are typed by their value, parameters by theirs."""
    cols = ", ".join(COLUMNS)
    with server.connect() as conn:
        cur = conn.cursor()
        for sql in (f"SELECT {cols} FROM vals WHERE id < 0",
                    # (id < 0: the round-trip test's generated rows stay in the table,
                    # and Hypothesis draws texts from this file's literals, 'none' too)
                    f"SELECT {cols} FROM vals WHERE t = 'none' AND id < 0 ORDER BY d",
                    f"SELECT * FROM (SELECT {cols} FROM vals) AS s WHERE id = -1",
                    f"SELECT {cols} FROM vals WHERE id < 0 UNION ALL SELECT {cols} FROM vals "
                    "WHERE id < 0"):
            cur.execute(sql)
            assert cur.fetchall() == []
            assert [d[1] for d in cur.description] == CODES, sql
        cur.execute("INSERT INTO vals (id) VALUES (-5)")  # every other column NULL
        cur.execute(f"SELECT {cols} FROM vals WHERE id = -5")
        assert cur.fetchall()[0][1:] == (None,) * 12
        assert [d[1] for d in cur.description] == CODES
        cur.execute("SELECT i + 1, ? FROM vals WHERE id < -5", (dt.date(2024, 1, 1),))
        assert [d[1] for d in cur.description][1] == "date"
        cur.execute("SELECT 1, 'x', NULL")
        assert [d[1] for d in cur.description][:2] == ["integer", "text"]
        conn.rollback()


def test_lastrowid_after_executemany(server: ServerProcess) -> None:
    with server.connect() as conn:
        cur = conn.cursor()
        cur.execute("INSERT INTO vals (id, t) VALUES (-7, 'x')")
        cur.executemany("INSERT INTO vals (id, t) VALUES (?, 'y')", [(-8,), (-9,)])
        assert cur.lastrowid is None and cur.rowcount == 2
        conn.rollback()


def test_exact_decimals_and_arithmetic(server: ServerProcess) -> None:
    with server.connect() as conn:
        conn.execute("CREATE TABLE money (id integer PRIMARY KEY, amount DECIMAL(38, 2), "
                     "d date)")
        big = Decimal("123456789012345678901234567890123456.78")
        conn.cursor().executemany("INSERT INTO money (id, amount) VALUES (?, ?)",
                                  [(1, big), (2, Decimal("5.10")), (3, Decimal("10.00"))])
        assert conn.execute("SELECT amount FROM money ORDER BY amount").fetchall() == [
            (Decimal("5.10"),), (Decimal("10.00"),), (big,)]
        assert conn.execute("SELECT id FROM money WHERE amount > ? ORDER BY id",
                            (Decimal("9.99"),)).fetchall() == [(1,), (3,)]
        add, total = (("decimal_add(amount, ?)", "decimal_sum(amount)")
                      if conn.backend == "sqlite" else ("amount + ?", "sum(amount)"))
        exact = Context(prec=100)
        assert conn.execute(f"SELECT {add} FROM money WHERE id = 1",
                            (Decimal("0.01"),)).fetchone() == (exact.add(big, Decimal("0.01")),)
        assert conn.execute(f"SELECT {total} FROM money").fetchone() == (
            exact.add(big, Decimal("15.10")),)
        conn.rollback()


@pytest.mark.parametrize(("sql", "code"), [
    ("INSERT INTO vals (id, d) VALUES (900, 'abc')", "22007"),
    ("INSERT INTO vals (id, i) VALUES (901, '12x')", "22P02"),
    ("INSERT INTO vals (id, n) VALUES (902, 'twelve')", "22P02"),
    ("INSERT INTO vals (id, bo) VALUES (903, 7)", None),
])
def test_values_that_do_not_fit_are_refused(server: ServerProcess, sql: str,
                                            code: str | None) -> None:
    with server.connect() as conn:
        with pytest.raises(casemate.DatabaseError) as e:
            conn.execute(sql)
        if code is not None:
            assert e.value.code == code, e.value
        conn.rollback()


def test_nan_and_nul_where_a_backend_cannot_store_them(server: ServerProcess) -> None:
    with server.connect() as conn:
        if conn.backend == "sqlite":
            with pytest.raises(casemate.DataError):  # SQLite would store NULL instead
                conn.execute("INSERT INTO vals (id, f) VALUES (950, ?)", (math.nan,))
            conn.execute("INSERT INTO vals (id, t) VALUES (951, ?)", ("a\x00b",))
            assert conn.execute("SELECT t FROM vals WHERE id = 951").fetchone() == ("a\x00b",)
        else:
            with pytest.raises(casemate.DataError):  # PostgreSQL text holds no NUL
                conn.execute("INSERT INTO vals (id, t) VALUES (951, ?)", ("a\x00b",))
        conn.rollback()


def test_decimal_precision_is_enforced_as_postgresql_does(server: ServerProcess) -> None:
    with server.connect() as conn:
        conn.execute("CREATE TABLE small (a NUMERIC(5, 2))")
        conn.execute("INSERT INTO small VALUES (?)", (Decimal("999.99"),))
        for too_big in (Decimal("1000"), Decimal("999.995"), Decimal("Infinity")):
            with pytest.raises(casemate.DataError) as e:
                conn.execute("INSERT INTO small VALUES (?)", (too_big,))
            assert e.value.code == "22003", e.value
            if conn.backend == "postgresql":
                conn.rollback()
                conn.execute("CREATE TABLE IF NOT EXISTS small (a NUMERIC(5, 2))")
        conn.rollback()


@pytest.mark.parametrize("value", [Decimal("0"), Decimal("5"), Decimal("-0.00"), Decimal("5E+3"),
                                   Decimal("-12.5"), Decimal("NaN"), Decimal("-Infinity")])
def test_integral_decimals_stay_decimals(server: ServerProcess, value: Decimal) -> None:
    # Found by the property test: PostgreSQL read a bare 0 as an integer.
    with server.connect() as conn:
        (got,) = conn.execute("SELECT ?", (value,)).fetchone() or (None,)
        assert isinstance(got, Decimal) and _same(value, got), got
        conn.rollback()
