"""The SQLite backend translates its engine's errors itself (issue 15, item 5).

No ``sqlite3`` exception leaves ``casemate.storage.sqlite``: each leaves as a
StorageError with Casemate's code, as the PostgreSQL backend's errors do, so the
server no longer imports ``sqlite3`` or matches SQLite's wording (the import
rule itself is an import-linter contract, tests/test_walls.py).  Checked on the
backend directly, at every kind of call (statement, later fetch, commit,
savepoint, user store), then through a real server process.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import casemate
from casemate.database import create_database
from casemate.storage import StorageError
from casemate.storage.access import Policy
from casemate.storage.base import StorageConnection
from casemate.storage.sqlite import DEFAULT_MAX_VALUE, SQLiteBackend
from casemate.testing import ADMIN_PASSWORD, ServerProcess

# Rows 1..3000; from row 2500 on each one overflows: the failure comes in a later fetch.
LATE_FAILURE = ("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 3000) "
                "SELECT CASE WHEN x < 2500 THEN x ELSE abs(-9223372036854775808) END FROM n")


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[SQLiteBackend]:
    b = SQLiteBackend(tmp_path)
    yield b
    b.close()


@pytest.fixture
def conn(backend: SQLiteBackend) -> Iterator[StorageConnection]:
    c = backend.connect()
    c.set_policy(Policy("admin"))
    c.execute("CREATE TABLE p (id INTEGER PRIMARY KEY)", ())
    c.execute("CREATE TABLE c (p INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)", ())
    c.execute("INSERT INTO p VALUES (1)", ())
    yield c
    c.close()


def _translated(call: Callable[[], Any], code: str) -> StorageError:
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the point is which class
        call()
    e = caught.value
    assert isinstance(e, StorageError), f"{type(e).__module__}.{type(e).__name__}: {e}"
    assert not isinstance(e, sqlite3.Error | sqlite3.Warning)
    assert e.code == code, (e.code, e.message)
    assert isinstance(e.__cause__, sqlite3.Error | sqlite3.Warning)  # kept for the log
    return e


@pytest.mark.parametrize(("sql", "params", "code"), [
    ("INSERT INTO p VALUES (1)", (), "23000"),                  # IntegrityError
    ("SELECT * FROM no_such_table", (), "42P01"),
    ("SELEC 1", (), "42601"),
    ("SELECT (1", (), "42601"),                                # incomplete input
    ("SELECT 1; SELECT 2", (), "42000"),                       # ProgrammingError
    ("SELECT ?", (), "42000"),                                 # wrong number of parameters
    ("SELECT zeroblob(?)", (DEFAULT_MAX_VALUE + 1,), "22000"),  # DataError: too big
    # The code comes from the error, never from a word the user wrote (matched anywhere in
    # the message, these names once made "database is busy" or a syntax error).
    ("SELECT * FROM busy_orders", (), "42P01"),
    ("SELECT * FROM locked_accounts", (), "42P01"),
    ("SELECT [syntax error]", (), "42000"),                   # no such column
])
def test_a_failing_statement_leaves_as_storage_error(conn: StorageConnection, sql: str,
                                                     params: tuple[Any, ...], code: str) -> None:
    _translated(lambda: conn.execute(sql, params), code)
    assert conn.execute("SELECT 1", ()).fetch(1) == [(1,)]  # the connection goes on


def test_a_failure_in_a_later_fetch_leaves_as_storage_error(conn: StorageConnection) -> None:
    cur = conn.execute(LATE_FAILURE, ())
    assert len(cur.fetch(1000)) == 1000
    e = _translated(lambda: cur.fetch(2000), "42000")
    assert "overflow" in e.message


def test_a_deferred_constraint_failing_at_commit(conn: StorageConnection) -> None:
    conn.begin()
    conn.execute("INSERT INTO c VALUES (99)", ())  # no parent: checked at COMMIT
    _translated(conn.commit, "23000")
    assert conn.in_transaction  # SQLite keeps it open: the client may fix it or roll back
    conn.rollback()
    assert not conn.in_transaction


def test_savepoints_and_many(conn: StorageConnection) -> None:
    _translated(lambda: conn.release("never_made", undo=False), "42000")
    _translated(lambda: conn.executemany("INSERT INTO p VALUES (?)", [(5,), (5,)]), "23000")
    _translated(lambda: conn.atomic_many("INSERT INTO p VALUES (?)", [(6,), (6,)]), "23000")
    assert conn.execute("SELECT count(*) FROM p WHERE id = 6", ()).fetch(1) == [(0,)]


def test_the_user_store(backend: SQLiteBackend) -> None:
    backend.close()
    _translated(lambda: backend.get_user("admin"), "42000")  # a closed database
    _translated(backend.list_users, "42000")


def test_opening_a_data_folder_sqlite_cannot_use(tmp_path: Path) -> None:
    (tmp_path / "data.sqlite").mkdir()  # a directory where the data file should be
    e = _translated(lambda: SQLiteBackend(tmp_path), "42000")
    assert "unable to open" in e.message


# -- through a real server ---------------------------------------------------------

METHODS = '''
from casemate.methods import method
from casemate.storage import StorageError


@method
def insert_or_code(db, n: int) -> str:
    """Insert; a failing statement is a StorageError with its code, on either backend."""
    try:
        db.execute("INSERT INTO p VALUES (?)", (n,))
    except StorageError as e:
        return e.code
    return "inserted"


@method
def insert(db, n: int) -> None:
    db.execute("INSERT INTO p VALUES (?)", (n,))


@method
def bump(db) -> str:
    """Read a JSON document, edit it, write it back: what is stored is the edited one."""
    db.execute("CREATE TABLE IF NOT EXISTS docs (id INTEGER PRIMARY KEY, d JSON)")
    db.execute("INSERT OR REPLACE INTO docs VALUES (1, ?)", ({"n": 1},))
    (doc,) = db.execute("SELECT d FROM docs WHERE id = 1").fetchone()
    doc.obj["n"] += 1
    db.execute("UPDATE docs SET d = ? WHERE id = 1", (doc,))
    return db.execute("SELECT CAST(d AS TEXT) FROM docs WHERE id = 1").fetchone()[0]


@method
def depth(db, doc) -> int:
    """How deep a casemate.Json argument is (reading .obj decodes it)."""
    d, v = 0, doc.obj
    while isinstance(v, list) and v:
        d, v = d + 1, v[0]
    return d
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db = tmp_path_factory.mktemp("errors") / "db"
    create_database(db, "errors", ADMIN_PASSWORD)
    (db / "Methods" / "errs.py").write_text(METHODS)
    s = ServerProcess(db).start()
    with s.connect() as conn:
        conn.execute("CREATE TABLE p (id INTEGER PRIMARY KEY)")
        conn.execute("CREATE TABLE c (p INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)")
        conn.execute("INSERT INTO p VALUES (1)")
        conn.commit()
    yield s
    s.stop()


def test_codes_reach_the_client_and_the_session_goes_on(server: ServerProcess) -> None:
    with server.connect() as conn:
        cur = conn.cursor()
        for sql, cls, code in (("INSERT INTO p VALUES (1)", casemate.IntegrityError, "23000"),
                               ("SELECT * FROM nope", casemate.ProgrammingError, "42P01"),
                               ("SELECT * FROM locked_accounts", casemate.ProgrammingError,
                                "42P01"),
                               ("SELEC 1", casemate.ProgrammingError, "42601")):
            with pytest.raises(cls) as e:
                cur.execute(sql)
            assert e.value.code == code
            conn.rollback()
        cur.execute(LATE_FAILURE)
        with pytest.raises(casemate.Error) as e:
            cur.fetchall()
        assert e.value.code == "42000" and "overflow" in e.value.message
        conn.rollback()
        cur.execute("INSERT INTO c VALUES (99)")
        with pytest.raises(casemate.IntegrityError) as e:
            conn.commit()
        assert e.value.code == "23000"
        conn.rollback()
        cur.execute("SELECT count(*) FROM c")
        assert cur.fetchone() == (0,)
        assert "ERROR" not in server.log() and "Traceback" not in server.log()


def test_a_server_method_catches_a_failing_statement_as_storage_error(
        server: ServerProcess) -> None:
    with server.connect() as conn:
        assert conn.call("insert_or_code", 1) == "23000"
        assert conn.call("insert_or_code", 7) == "inserted"
        with pytest.raises(casemate.IntegrityError) as e:  # not caught: its own code
            conn.call("insert", 1)
        assert e.value.code == "23000"
        conn.rollback()


def test_the_asyncio_client_gets_the_same_codes(server: ServerProcess) -> None:
    import asyncio

    import casemate.aio

    async def main() -> None:
        conn = await casemate.aio.connect(server.url)
        try:
            for sql, code in (("SELECT * FROM locked_accounts", "42P01"),
                              ("INSERT INTO p VALUES (1)", "23000"), ("SELEC 1", "42601")):
                with pytest.raises(casemate.Error) as e:
                    await conn.execute(sql)
                assert e.value.code == code
                await conn.rollback()
            assert await conn.fetch("SELECT 1") == [(1,)]
        finally:
            await conn.close()
    asyncio.run(main())


def test_every_public_method_translates_sqlite_errors() -> None:
    """Each public method of the SQLite backend's classes is either wrapped by
    engine_boundary or marked translates_itself (it catches SQLite's exceptions in its
    own body, to save a wrapper call on the request path): a new method can't forget."""
    import inspect

    from casemate.storage import sqlite, sqlite_cursor, sqlite_files, sqlite_system

    classes = [sqlite._Connection, sqlite.SQLiteBackend, sqlite_cursor._Cursor,
               sqlite_system.UserStore, sqlite_files.Snapshot]
    for cls in classes:
        for name, fn in vars(cls).items():
            if not inspect.isfunction(fn) or (name.startswith("_") and name != "__init__"):
                continue
            assert hasattr(fn, "__wrapped__") or getattr(
                fn, "__casemate_translates__", False), f"{cls.__name__}.{name}"


def test_a_json_argument_too_deep_to_decode_fails_the_call_only(server: ServerProcess) -> None:
    value: list[object] = []
    for _ in range(2999):
        value = [value]
    limit = sys.getrecursionlimit()
    with server.connect() as conn:
        assert conn.call("depth", casemate.Json([[[]]])) == 2
        conn.execute("INSERT INTO p VALUES (77)")
        sys.setrecursionlimit(4000)
        try:
            with pytest.raises(casemate.Error) as e:
                conn.call("depth", casemate.Json(value))
        finally:
            sys.setrecursionlimit(limit)
        assert "nested deeper than the server can decode" in e.value.message
        assert conn.call("depth", casemate.Json([[]])) == 1  # the session goes on
        conn.rollback()


def test_a_method_that_edits_a_json_document_it_read_stores_the_edit(
        server: ServerProcess) -> None:
    with server.connect() as conn:
        assert conn.call("bump") == '{"n":2}'  # not the text it read
        conn.rollback()
