"""The PEP 249 surface of casemate, against a real server process.

Module globals, exceptions and type objects; cursor attributes (description,
rowcount, lastrowid, arraysize, iteration, close); typed values through
``SELECT ?`` and through declared column types; error classes and codes.
"""

from __future__ import annotations

import datetime as dt
import socket
import time
from decimal import Decimal

import pytest

import casemate
from tests.conftest import ADMIN_PASSWORD, set_setting

# -- module level (no server) ------------------------------------------------


def test_module_globals() -> None:
    assert casemate.apilevel == "2.0"
    assert casemate.threadsafety == 1
    assert casemate.paramstyle == "qmark"
    assert callable(casemate.connect)


def test_exception_hierarchy() -> None:
    m = casemate
    assert issubclass(m.Warning, Exception)
    assert issubclass(m.Error, Exception)
    assert not issubclass(m.Warning, m.Error)
    assert issubclass(m.InterfaceError, m.Error)
    assert issubclass(m.DatabaseError, m.Error)
    assert not issubclass(m.InterfaceError, m.DatabaseError)
    for cls in (m.DataError, m.OperationalError, m.IntegrityError, m.InternalError,
                m.ProgrammingError, m.NotSupportedError):
        assert issubclass(cls, m.DatabaseError), cls
    # Casemate's own refinements stay inside the PEP 249 tree.
    assert issubclass(m.ProtocolError, m.OperationalError)
    assert issubclass(m.SecurityError, m.OperationalError)
    # Optional extension: the exceptions as Connection attributes.
    for name in ("Warning", "Error", "InterfaceError", "DatabaseError", "DataError",
                 "OperationalError", "IntegrityError", "InternalError", "ProgrammingError",
                 "NotSupportedError"):
        assert getattr(m.Connection, name) is getattr(m, name), name


def test_type_objects_and_constructors() -> None:
    m = casemate
    assert m.STRING == "text"
    assert m.NUMBER == "integer"
    assert m.NUMBER == "float"
    assert m.NUMBER != "text"
    assert m.STRING != "integer"
    assert m.BINARY == "bytes"
    assert m.DATETIME == "date"
    assert m.DATETIME == "datetime"
    assert m.ROWID == "integer"
    assert m.Date(2024, 2, 29) == dt.date(2024, 2, 29)
    assert m.Time(1, 2, 3) == dt.time(1, 2, 3)
    assert m.Timestamp(2024, 1, 2, 3, 4, 5) == dt.datetime(2024, 1, 2, 3, 4, 5)
    assert m.Binary(b"ab") == b"ab"
    ticks = dt.datetime(2024, 5, 6, 7, 8, 9).timestamp()
    assert m.DateFromTicks(ticks) == dt.date(2024, 5, 6)
    assert m.TimeFromTicks(ticks) == dt.time(7, 8, 9)
    assert m.TimestampFromTicks(ticks) == dt.datetime(2024, 5, 6, 7, 8, 9)


# -- cursor surface --------------------------------------------------------------


def test_cursor_surface(plain_server) -> None:  # type: ignore[no-untyped-def]
    conn = plain_server.connect()
    try:
        cur = conn.cursor()
        assert cur.connection is conn
        assert cur.description is None and cur.rowcount == -1 and cur.arraysize == 1
        with pytest.raises(casemate.ProgrammingError):
            cur.fetchone()  # nothing executed yet

        cur.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL)")
        assert cur.description is None
        cur.execute("INSERT INTO t (name, score) VALUES (?, ?)", ("a", 1.5))
        assert cur.rowcount == 1
        assert cur.lastrowid == 1
        assert cur.description is None
        with pytest.raises(casemate.ProgrammingError):
            cur.fetchall()  # an INSERT has no result set
        cur.executemany("INSERT INTO t (name, score) VALUES (?, ?)",
                        [(f"n{i}", i * 0.5) for i in range(2, 11)])
        assert cur.rowcount == 9
        cur.execute("INSERT INTO t (name, score) VALUES (?, ?)", ("last", 0.0))
        assert cur.lastrowid == 11
        cur.execute("UPDATE t SET score = score + 1 WHERE id <= ?", (4,))
        assert cur.rowcount == 4
        cur.execute("DELETE FROM t WHERE name = ?", ("last",))
        assert cur.rowcount == 1

        cur.execute("SELECT id, name, score FROM t ORDER BY id")
        assert [d[0] for d in cur.description] == ["id", "name", "score"]
        assert all(len(d) == 7 for d in cur.description)
        assert cur.description[0][1] == casemate.NUMBER
        assert cur.description[1][1] == casemate.STRING
        assert cur.description[2][1] == casemate.NUMBER
        assert cur.rowcount == -1  # unknown for a SELECT
        assert cur.fetchone() == (1, "a", 2.5)
        assert cur.fetchmany() == [(2, "n2", 2.0)]  # arraysize rows
        cur.arraysize = 3
        assert [r[0] for r in cur.fetchmany()] == [3, 4, 5]
        assert [r[0] for r in cur.fetchmany(2)] == [6, 7]
        assert [r[0] for r in cur] == [8, 9, 10]  # iteration takes the rest
        assert cur.fetchone() is None
        assert cur.fetchmany(5) == []
        assert cur.fetchall() == []

        cur.execute("SELECT id FROM t WHERE id > 100")
        assert [d[0] for d in cur.description] == ["id"]
        assert cur.fetchall() == []

        # A result larger than one batch, read through fetchmany and iteration.
        cur.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<5000)"
                    " SELECT x FROM c")
        first = cur.fetchmany(2500)
        rest = list(cur)
        assert [r[0] for r in first + rest] == list(range(1, 5001))

        # Re-executing a cursor in the middle of a result drops the old one.
        cur.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<9000)"
                    " SELECT x FROM c")
        assert cur.fetchone() == (1,)
        cur.execute("SELECT count(*) FROM t")
        assert cur.fetchall() == [(10,)]

        with pytest.raises(casemate.ProgrammingError):
            cur.execute("SELECT ?", {"a": 1})  # type: ignore[arg-type]
        with pytest.raises(casemate.ProgrammingError):
            cur.callproc("p")
        cur.setinputsizes([None])
        cur.setoutputsize(10)

        # Shortcut and context manager on cursors.
        with conn.execute("SELECT 42") as c2:
            assert c2.fetchall() == [(42,)]
        with pytest.raises(casemate.InterfaceError):
            c2.fetchone()

        cur.execute("SELECT id FROM t")
        cur.close()
        cur.close()  # twice is fine
        with pytest.raises(casemate.InterfaceError):
            cur.fetchone()
        with pytest.raises(casemate.InterfaceError):
            cur.execute("SELECT 1")
        conn.commit()
        other = conn.cursor()
    finally:
        conn.close()
    assert conn.closed
    with pytest.raises(casemate.InterfaceError, match="already closed"):
        conn.close()  # PEP 249: any use of a closed connection raises, closing too
    with pytest.raises(casemate.InterfaceError):
        other.execute("SELECT 1")
    with pytest.raises(casemate.InterfaceError):
        conn.cursor()
    with pytest.raises(casemate.InterfaceError):
        conn.commit()


def test_connection_info(plain_server) -> None:  # type: ignore[no-untyped-def]
    with plain_server.connect(program="dbapi-test") as conn:
        assert conn.session_id > 0
        assert conn.server_version == casemate.__version__
        assert conn.backend == "sqlite"
        assert not conn.security.encrypted
        assert not conn.in_transaction
        conn.ping()
        conn.execute("SELECT 1").fetchall()
        assert conn.in_transaction  # autocommit is off: the SELECT began a transaction
        conn.rollback()
        assert not conn.in_transaction


# -- typed values ------------------------------------------------------------


def test_select_parameter_roundtrip(plain_server) -> None:  # type: ignore[no-untyped-def]
    cases = [
        (0, 0, "integer"),
        (-7, -7, "integer"),
        (2**63 - 1, 2**63 - 1, "integer"),
        (-(2**63), -(2**63), "integer"),
        (1.5, 1.5, "float"),
        (-0.0, -0.0, "float"),
        (1e300, 1e300, "float"),
        ("", "", "text"),
        ("héllo wörld ✓ \U0001f600", "héllo wörld ✓ \U0001f600", "text"),
        ("x" * 100_000, "x" * 100_000, "text"),
        (b"", b"", "bytes"),
        (bytes(range(256)), bytes(range(256)), "bytes"),
        (None, None, None),
    ]
    with plain_server.connect() as conn:
        cur = conn.cursor()
        for value, expected, code in cases:
            cur.execute("SELECT ?", (value,))
            rows = cur.fetchall()
            assert rows == [(expected,)], value if not isinstance(value, str) else value[:20]
            assert type(rows[0][0]) is type(expected)
            assert cur.description[0][1] == code, value
        # Several parameters in one statement, in order.
        cur.execute("SELECT ?, ?, ?, ?, ?", (1, "two", 3.0, b"4", None))
        assert cur.fetchall() == [(1, "two", 3.0, b"4", None)]
        # Parameters are values, never SQL.
        cur.execute("SELECT ?", ("'); DROP TABLE x; --",))
        assert cur.fetchone() == ("'); DROP TABLE x; --",)
        with pytest.raises(casemate.ProgrammingError):
            cur.execute("SELECT ?, ?", (1,))  # wrong parameter count
        # Documented (storage/sqlite.py): SQLite integers are 64-bit; a larger int is refused
        # rather than silently turned into a lossy float.  It travels (codec EXT_BIGINT) and
        # the server says what to do.
        for big in (2**63, 2**64 - 1, 2**70, -(2**63) - 1, -(2**200)):
            with pytest.raises(casemate.DataError) as e:
                cur.execute("SELECT ?", (big,))
            assert e.value.code == "22003"
            assert str(big) in e.value.message and "64 bits" in e.value.message
        cur.execute("CREATE TABLE big (v INTEGER)")
        conn.commit()
        with pytest.raises(casemate.DataError) as e:
            cur.executemany("INSERT INTO big VALUES (?)", [(1,), (2**64,)])
        assert e.value.code == "22003"
        cur.execute("SELECT ?", (str(2**70),))  # the suggested way: as text
        assert cur.fetchall() == [(str(2**70),)]
        conn.rollback()  # the transaction stays open after the error: roll it back
        cur.execute("SELECT count(*) FROM big")
        assert cur.fetchall() == [(0,)]


def test_declared_types_roundtrip(plain_server) -> None:  # type: ignore[no-untyped-def]
    rows = [
        (1, dt.date(2024, 2, 29), dt.datetime(2024, 1, 2, 3, 4, 5, 123456),
         Decimal("12345.67"), True),
        (2, dt.date(1999, 12, 31), dt.datetime(2030, 6, 7, 8, 9, 10, tzinfo=dt.UTC),
         Decimal("-0.5"), False),
        (3, dt.date(1, 1, 1),
         dt.datetime(2024, 3, 4, 5, 6, 7, tzinfo=dt.timezone(dt.timedelta(hours=-5, minutes=-30))),
         Decimal("42"), True),
        (4, None, None, None, None),
    ]
    with plain_server.connect() as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE typed (id INTEGER PRIMARY KEY, d DATE, ts TIMESTAMP, "
                    "amount DECIMAL(12, 2), flag BOOLEAN)")
        cur.executemany("INSERT INTO typed VALUES (?, ?, ?, ?, ?)", rows)
        conn.commit()
    with plain_server.connect() as conn:  # a new session reads them back
        cur = conn.cursor()
        cur.execute("SELECT id, d, ts, amount, flag FROM typed ORDER BY id")
        got = cur.fetchall()
        assert got == rows
        for g, r in zip(got, rows, strict=True):
            assert [type(v) for v in g] == [type(v) for v in r]
        assert got[1][2].utcoffset() == dt.timedelta(0)
        assert got[2][2].utcoffset() == dt.timedelta(hours=-5, minutes=-30)
        codes = [d[1] for d in cur.description]
        assert codes[0] == casemate.NUMBER
        assert codes[1] == casemate.DATETIME and codes[1] == "date"
        assert codes[2] == casemate.DATETIME and codes[2] == "datetime"
        assert codes[3] == casemate.NUMBER and codes[3] == "decimal"
        assert codes[4] == casemate.NUMBER and codes[4] == "bool"
        # Typed values as parameters compare with the stored ones.
        cur.execute("SELECT id FROM typed WHERE d = ? AND flag = ?", (dt.date(2024, 2, 29), True))
        assert cur.fetchall() == [(1,)]


def test_decimal_keeps_its_precision(plain_server) -> None:  # type: ignore[no-untyped-def]
    exact = Decimal("12345678901234567890.123456789")
    with plain_server.connect() as conn:
        conn.execute("CREATE TABLE money (amount DECIMAL)")
        conn.execute("INSERT INTO money VALUES (?)", (exact,))
        assert conn.execute("SELECT amount FROM money").fetchall() == [(exact,)]


# -- errors ------------------------------------------------------------------


def test_sql_errors_have_codes_and_session_survives(plain_server) -> None:  # type: ignore[no-untyped-def]
    with plain_server.connect() as conn:
        cur = conn.cursor()
        with pytest.raises(casemate.ProgrammingError) as e:
            cur.execute("SELEC 1")
        assert e.value.code == "42601"
        assert "syntax error" in e.value.message
        assert str(e.value).startswith("[42601] ")
        with pytest.raises(casemate.ProgrammingError) as e:
            cur.execute("SELECT * FROM no_such_table")
        assert e.value.code == "42P01"
        assert "no_such_table" in e.value.message
        cur.execute("CREATE TABLE u (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        cur.execute("INSERT INTO u VALUES (1, 'a')")
        with pytest.raises(casemate.IntegrityError) as e:
            cur.execute("INSERT INTO u VALUES (1, 'b')")
        assert e.value.code == "23000"
        with pytest.raises(casemate.IntegrityError):
            cur.executemany("INSERT INTO u VALUES (?, ?)", [(2, "x"), (3, None)])
        # The session carries on after each error.
        cur.execute("SELECT k, v FROM u ORDER BY k")
        assert cur.fetchall()[0] == (1, "a")


def test_wrong_password_and_unknown_user_look_the_same(plain_server) -> None:  # type: ignore[no-untyped-def]
    base = f"casemate://{{}}@127.0.0.1:{plain_server.port}"
    with pytest.raises(casemate.OperationalError) as bad_pw:
        casemate.connect(base.format("admin:not-the-password"))
    with pytest.raises(casemate.OperationalError) as no_user:
        casemate.connect(base.format(f"nobody:{ADMIN_PASSWORD}"))
    a, b = bad_pw.value, no_user.value
    assert type(a) is type(b) is casemate.OperationalError
    assert a.code == b.code == "28P01"
    assert '"admin"' in a.message and '"nobody"' in b.message
    assert a.message.replace('"admin"', '"?"') == b.message.replace('"nobody"', '"?"')
    assert a.hint == b.hint
    # The right password still works afterwards.
    with plain_server.connect() as conn:
        assert conn.execute("SELECT 1").fetchall() == [(1,)]


def test_unreachable_server() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(casemate.OperationalError) as e:
        casemate.connect(host="127.0.0.1", port=port, password="x", connect_timeout=5)
    assert e.value.code == "08001"
    assert f"127.0.0.1:{port}" in e.value.message


def test_bad_parameters_are_interface_errors() -> None:
    with pytest.raises(casemate.InterfaceError):
        casemate.connect("postgres://a:b@localhost")
    with pytest.raises(casemate.InterfaceError):
        casemate.connect(host="127.0.0.1", password="x", colour="blue")
    with pytest.raises(casemate.InterfaceError):
        casemate.connect(host="127.0.0.1", password="x", encryption="maybe")


def test_a_cursor_that_reconnected_reads_only_its_own_rows(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    """execute() that reconnects on the way (the server ended the idle session) opens its
    result on the new link; the next execute() drops it there, so the rows of the first
    result never come in front of the second's (found by review: they did)."""
    db = make_db()
    set_setting(db, "idle_timeout_seconds", "1")
    server = server_factory(db)
    with casemate.connect(server.url) as setup:
        setup.execute("CREATE TABLE big (x INTEGER)")
        setup.cursor().executemany("INSERT INTO big VALUES (?)", [(i,) for i in range(10000)])
        setup.commit()
    conn = casemate.connect(server.url)
    conn.autocommit = True
    cur = conn.cursor()
    generation = conn.generation
    deadline = time.monotonic() + 10
    while conn._channel.poll_alive() and time.monotonic() < deadline:
        time.sleep(0.1)  # until the server has ended the idle session
    cur.execute("SELECT x FROM big ORDER BY x")  # reconnects on the way
    assert conn.generation == generation + 1
    assert cur.fetchone() == (0,)  # a result left open, more batches on the server
    cur.execute("SELECT 'new'")
    assert cur.fetchall() == [("new",)]
    conn.close()


def test_dict_parameters_need_text_keys(plain_server) -> None:  # type: ignore[no-untyped-def]
    # The server refuses other map keys (their hashes can be made to collide) by ending
    # the session; the client refuses them first, so the transaction and connection stay.
    with plain_server.connect() as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE dk (v JSON)")
        cur.execute("INSERT INTO dk VALUES (?)", ({"a": 1},))
        for bad in ({1: "a"}, [{"ok": {(1, 2): None}}]):
            with pytest.raises(casemate.ProgrammingError) as e:
                cur.execute("INSERT INTO dk VALUES (?)", (bad,))
            assert "keys of dicts sent to the server must be str" in str(e.value)
            with pytest.raises(casemate.ProgrammingError):
                cur.executemany("INSERT INTO dk VALUES (?)", [({"b": 2},), (bad,)])
        assert conn.in_transaction
        cur.execute("SELECT v FROM dk")
        assert cur.fetchall() == [({"a": 1},)]
        conn.commit()


def test_a_parameter_nested_deeper_than_the_server_decodes_is_refused_before_sending(
        plain_server) -> None:  # type: ignore[no-untyped-def]
    # msgpack nests 1,024 levels, the request's arrays included: a dict of 1,022 levels was
    # sent, and the server ended the session (and its transaction) over it.
    deep: dict[str, object] = {}
    for _ in range(1021):
        deep = {"a": deep}
    with plain_server.connect() as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE nest (v JSON)")
        cur.execute("INSERT INTO nest VALUES (?)", ({"a": 1},))
        for call in (lambda: cur.execute("INSERT INTO nest VALUES (?)", (deep,)),
                     lambda: cur.executemany("INSERT INTO nest VALUES (?)", [(deep,)]),
                     lambda: cur.execute("SELECT ?", ([[deep]],))):
            with pytest.raises(casemate.ProgrammingError) as e:
                call()
            assert "nested deeper than 1000 levels" in str(e.value)
        assert conn.in_transaction
        cur.execute("SELECT count(*) FROM nest")
        assert cur.fetchall() == [(1,)]
        conn.rollback()


def test_json_nested_deeper_than_python_decodes_comes_back_as_text(plain_server) -> None:  # type: ignore[no-untyped-def]
    # SQLite's json_valid takes 999 levels; decoding them in the server raised
    # RecursionError: an internal error that ended the session.
    with plain_server.connect() as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE deep (n INTEGER, v JSON)")
        for n in (50, 999):
            cur.execute("INSERT INTO deep VALUES (?, ?)", (n, "[" * n + "]" * n))
        cur.execute("SELECT v FROM deep ORDER BY n")
        shallow, deep = (r[0] for r in cur.fetchall())
        assert isinstance(shallow, list)
        assert deep == "[" * 999 + "]" * 999
        cur.execute("SELECT 1")
        assert cur.fetchall() == [(1,)]
        conn.rollback()
    assert "internal error" not in plain_server.log()
