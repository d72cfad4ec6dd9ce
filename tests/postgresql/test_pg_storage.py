"""The PostgreSQL backend through the storage interface, in this process."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from casemate.pgtest import PostgresServer
from casemate.protocol import codec
from casemate.protocol.codec import Json
from casemate.settings import StorageSettings
from casemate.storage import StorageConnection, StorageError
from casemate.storage.access import Policy
from casemate.storage.postgresql import PostgreSQLBackend

from .conftest import dsn_of

ENV = "CASEMATE_PG_TEST_PASSWORD"


def settings(pg: PostgresServer, pool_size: int = 5, busy: float = 1.0,
             password_file: str = "", dsn: str | None = None) -> StorageSettings:
    return StorageSettings("postgresql", dsn or dsn_of(pg), ENV, password_file, pool_size, busy, 4,
                           0, 0.2)


@pytest.fixture(scope="module")
def backend(pg: PostgresServer) -> Iterator[PostgreSQLBackend]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV, pg.password)
        b = PostgreSQLBackend(settings(pg))
        b.initialize()
        b.initialize()  # idempotent
        admin = session(b, "admin")
        admin.execute("CREATE TABLE t (id serial PRIMARY KEY, v text)", ())
        admin.executemany("INSERT INTO t (v) VALUES (?)", [(f"v{i}",) for i in range(10)])
        admin.close()
        yield b
        b.close()


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch, pg: PostgresServer) -> None:
    monkeypatch.setenv(ENV, pg.password)


def session(b: PostgreSQLBackend, group: str) -> StorageConnection:
    conn = b.connect()
    conn.set_policy(Policy(group, b.grants_for(group)))
    return conn


def rows(conn: StorageConnection, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    cur = conn.execute(sql, params)
    try:
        return cur.fetch(100_000)
    finally:
        cur.close()


def code_of(conn: StorageConnection, sql: str) -> str:
    with pytest.raises(StorageError) as e:
        conn.execute(sql, ())
    return e.value.code


def test_each_group_runs_as_its_own_role_and_cannot_leave_it(backend: PostgreSQLBackend) -> None:
    ro = session(backend, "readonly")
    try:
        assert rows(ro, "SELECT current_user = session_user, current_user") == [
            (True, "casemate_postgres_readonly")]
        for sql in ("RESET ROLE", "SET ROLE postgres", "SET ROLE casemate_postgres_admin",
                    "SELECT set_config('role', 'postgres', false)",
                    "SET SESSION AUTHORIZATION postgres", "SELECT * FROM casemate.users",
                    "DELETE FROM t", "CREATE TABLE x (a int)"):
            assert code_of(ro, sql) == "42501", sql
        assert rows(ro, "SELECT current_user") == [("casemate_postgres_readonly",)]
        assert rows(ro, "SELECT count(*) FROM t") == [(10,)]
    finally:
        ro.close()


def test_custom_group_grants_are_postgresql_grants(backend: PostgreSQLBackend) -> None:
    backend.add_group("clerks")
    with pytest.raises(KeyError):
        backend.add_group("clerks")
    backend.set_grants("clerks", "T", frozenset({"SELECT", "INSERT"}))
    assert backend.list_groups()["clerks"] == {"t": frozenset({"SELECT", "INSERT"})}
    c = session(backend, "clerks")
    try:
        assert rows(c, "INSERT INTO t (v) VALUES ('clerk') RETURNING v") == [("clerk",)]  # serial
        assert code_of(c, "UPDATE t SET v = 'x'") == "42501"
        backend.set_grants("clerks", "t", frozenset({"SELECT"}))
        assert code_of(c, "INSERT INTO t (v) VALUES ('again')") == "42501"
        with pytest.raises(StorageError) as e:  # PostgreSQL checks the table exists
            backend.set_grants("clerks", "no_such_table", frozenset({"SELECT"}))
        assert e.value.code == "42P01"
    finally:
        c.close()
    with pytest.raises(KeyError):
        backend.set_grants("nobody", "t", frozenset({"SELECT"}))
    backend.remove_group("clerks")
    assert "clerks" not in backend.list_groups()
    with pytest.raises(KeyError):
        backend.remove_group("clerks")


def test_big_results_come_by_fetch_and_survive_commit(backend: PostgreSQLBackend) -> None:
    c = session(backend, "admin")
    try:
        c.begin()
        cur = c.execute("SELECT g, 'x' AS pad FROM generate_series(1, 1000) g", ())
        assert [d[0] for d in cur.description or ()] == ["g", "pad"]
        assert cur.rowcount == -1 and cur.lastrowid is None
        assert [r[0] for r in cur.fetch(300)] == list(range(1, 301))
        c.execute("UPDATE t SET v = v WHERE id = 1", ())  # the same connection meanwhile
        c.commit()
        assert not c.in_transaction
        rest = cur.fetch(1000)  # WITH HOLD: the cursor outlives its transaction
        assert [r[0] for r in rest] == list(range(301, 1001))
        assert cur.fetch(10) == []
        cur.close()
        # a cursor closed early does not abort the transaction around it
        c.begin()
        cur = c.execute("SELECT g FROM generate_series(1, 100000) g", ())
        assert len(cur.fetch(10)) == 10
        cur.close()
        assert rows(c, "SELECT 1") == [(1,)]
        c.commit()
        # outside a transaction too, with other statements while it is open
        cur = c.execute("SELECT g FROM generate_series(1, 600) g", ())
        assert rows(c, "SELECT count(*) FROM t")[0][0] >= 10
        assert len(cur.fetch(1000)) == 600
        cur.close()
        # nothing left open but this query's own cursor
        assert rows(c, "SELECT count(*) FROM pg_cursors WHERE name LIKE 'casemate%'") == [(1,)]
    finally:
        c.close()


def test_empty_result_still_has_a_description(backend: PostgreSQLBackend) -> None:
    c = session(backend, "readonly")
    try:
        cur = c.execute("SELECT id, v FROM t WHERE false", ())
        assert [d[0] for d in cur.description or ()] == ["id", "v"]
        assert cur.fetch(10) == []
    finally:
        c.close()


def test_failed_statement_ends_the_transaction_and_commit_says_so(
        backend: PostgreSQLBackend) -> None:
    c = session(backend, "admin")
    try:
        c.begin()
        c.execute("INSERT INTO t (v) VALUES ('lost')", ())
        assert code_of(c, "SELEC 1") == "42601"  # refused by the parser: PostgreSQL never saw it
        assert code_of(c, "SELECT 1 / 0") == "22012"
        assert code_of(c, "SELECT 1") == "25P02"
        with pytest.raises(StorageError) as e:
            c.commit()
        assert e.value.code == "25P02" and "rolled back" in e.value.message
        assert not c.in_transaction
        assert rows(c, "SELECT count(*) FROM t WHERE v = 'lost'") == [(0,)]
    finally:
        c.close()


def test_savepoints(backend: PostgreSQLBackend) -> None:
    c = session(backend, "admin")
    try:
        c.savepoint("sp1")  # starts the transaction too
        assert c.in_transaction
        c.execute("INSERT INTO t (v) VALUES ('kept')", ())
        c.savepoint("sp2")
        c.execute("INSERT INTO t (v) VALUES ('undone')", ())
        cur = c.execute("SELECT g FROM generate_series(1, 1000) g", ())
        c.release("sp2", undo=True)
        cur.close()  # its cursor went with the savepoint: closing must not break anything
        c.release("sp1", undo=False)
        c.commit()
        assert rows(c, "SELECT v FROM t WHERE v IN ('kept', 'undone')") == [("kept",)]
    finally:
        c.close()


def test_interrupt_cancels_the_running_statement(backend: PostgreSQLBackend) -> None:
    c = session(backend, "readonly")
    try:
        c.begin()
        timer = threading.Timer(0.3, c.interrupt)
        timer.start()
        t0 = time.monotonic()
        assert code_of(c, "SELECT pg_sleep(10)") == "57014"
        assert time.monotonic() - t0 < 5
        timer.join()
        c.rollback()
        assert rows(c, "SELECT 1") == [(1,)]
    finally:
        c.close()


def test_session_state_does_not_leak_to_the_next_session(backend: PostgreSQLBackend) -> None:
    c = session(backend, "admin")  # SET is reserved to admins
    try:
        c.begin()
        c.execute("SET statement_timeout = 4321", ())
        c.execute("CREATE TEMP TABLE scratch (a int)", ())
        assert rows(c, "SHOW statement_timeout") == [("4321ms",)]
        c.commit()
        assert rows(c, "SHOW statement_timeout") == [("0",)]
        assert rows(c, "SELECT to_regclass('pg_temp.scratch') IS NULL") == [(True,)]
    finally:
        c.close()


def test_values_have_wire_encodings(backend: PostgreSQLBackend) -> None:
    c = session(backend, "readonly")
    try:
        (row,) = rows(c, "SELECT gen_random_uuid(), interval '1 day 2 hours', "
                         "'{\"a\": [1, 2]}'::jsonb, ARRAY[1, 2], int4range(1, 3), now(), "
                         "1.50::numeric, '\\x0102'::bytea, ?::int[], ?::jsonb, ? || '%'",
                      ((4, 5), {"k": "v"}, "100"))
        codec.pack(row)  # every value can travel to the client
        assert row[1] == "1 day 02:00:00" and row[2] == Json({"a": [1, 2]}) and row[3] == [1, 2]
        assert row[4] == "[1,3)" and row[7] == b"\x01\x02" and row[8] == [4, 5]
        assert row[9] == Json({"k": "v"}) and row[10] == "100%"
        assert isinstance(row[0], uuid.UUID)  # JSON and UUID travel typed (docs/types.md)
        assert codec.unpack(codec.pack(row[2])) == {"a": [1, 2]}
    finally:
        c.close()


def test_lock_wait_ends_after_busy_timeout(backend: PostgreSQLBackend) -> None:
    a, b = session(backend, "readwrite"), session(backend, "readwrite")
    try:
        a.begin()
        a.execute("UPDATE t SET v = 'a' WHERE id = 2", ())
        b.begin()
        t0 = time.monotonic()
        assert code_of(b, "UPDATE t SET v = 'b' WHERE id = 2") == "55P03"  # lock_timeout
        assert 0.8 < time.monotonic() - t0 < 4
        b.rollback()
        a.rollback()
    finally:
        a.close()
        b.close()


def test_pool_limit_gives_a_clear_error(pg: PostgresServer) -> None:
    small = PostgreSQLBackend(settings(pg, pool_size=1, busy=0.5))
    try:
        small.check()
        a, b = session(small, "readwrite"), session(small, "readonly")
        a.begin()
        a.execute("SELECT 1", ())  # holds the only connection
        t0 = time.monotonic()
        with pytest.raises(StorageError) as e:
            b.execute("SELECT 1", ())
        assert e.value.code == "53300" and "storage.pool_size" in e.value.message
        assert time.monotonic() - t0 < 3
        a.commit()
        assert rows(b, "SELECT 2") == [(2,)]  # an idle connection of another role is replaced
        a.close()
        b.close()
    finally:
        small.close()


def test_password_file_and_tls(pg: PostgresServer, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV)
    pw = tmp_path / "pgpass"
    pw.write_text(pg.password + "\n")
    pw.chmod(0o600)
    b = PostgreSQLBackend(settings(pg, password_file=str(pw)))
    try:
        b.check()
        c = session(b, "readonly")
        assert rows(c, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == [(True,)]
        c.close()
        assert b.data_size() > 1_000_000 and b.integrity_check() == "ok"
    finally:
        b.close()


def test_connection_errors_are_clear(pg: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StorageError) as e:
        PostgreSQLBackend(settings(pg, dsn=dsn_of(pg, port=1)))
    assert e.value.code == "08001" and "cannot connect to PostgreSQL" in e.value.message
    monkeypatch.setenv(ENV, "wrong")
    with pytest.raises(StorageError) as e:
        PostgreSQLBackend(settings(pg))
    assert e.value.code == "28P01" and ENV in (e.value.hint or "")
    assert "wrong" not in e.value.message
    monkeypatch.setenv(ENV, pg.password)
    with psycopg.connect(pg.dsn(), autocommit=True) as su:
        su.execute("CREATE DATABASE no_schema")
    b = PostgreSQLBackend(settings(pg, dsn=dsn_of(pg, dbname="no_schema")))
    try:
        with pytest.raises(StorageError) as e:
            b.check()
        assert e.value.code == "3F000" and "casemate init" in (e.value.hint or "")
    finally:
        b.close()


def test_schema_version_is_checked(backend: PostgreSQLBackend, pg: PostgresServer) -> None:
    with psycopg.connect(pg.dsn(), autocommit=True) as su:
        su.execute("UPDATE casemate.meta SET schema_version = 99")
        try:
            with pytest.raises(StorageError) as e:
                backend.check()
            assert "version 99" in e.value.message
            with pytest.raises(StorageError):
                backend.initialize()
        finally:
            su.execute("UPDATE casemate.meta SET schema_version = 1")
    backend.check()


def test_statement_shapes(backend: PostgreSQLBackend) -> None:
    c = session(backend, "admin")
    try:
        assert code_of(c, "SELECT 1; SELECT 2") == "42601"  # one statement at a time
        assert rows(c, "SELECT 1; ") == [(1,)]
        assert rows(c, "SELECT ? -- a comment at the end", (5,)) == [(5,)]
        assert rows(c, "SELECT ?::float8 * 2, ?", (1.25, 2.5)) == [(2.5, 2.5)]
        c.begin()  # executemany right after BEGIN: BEGIN rides along
        assert c.executemany("INSERT INTO t (v) VALUES (?)", [("m1",), ("m2",)]) == 2
        c.rollback()
        assert rows(c, "SELECT count(*) FROM t WHERE v LIKE 'm_'") == [(0,)]
        rows(c, "SELECT 1")  # leaves a CLOSE ALL owed...
        c.execute("VACUUM t", ())  # ...which must not share VACUUM's query
        c.begin()
        before = c.execute("SELECT g FROM generate_series(1, 1000) g", ())
        c.execute("SAVEPOINT mine", ())
        after = c.execute("SELECT g FROM generate_series(1, 1000) g", ())
        after2 = c.execute("SELECT g FROM generate_series(1, 1000) g", ())
        c.execute("ROLLBACK TO SAVEPOINT mine", ())  # in SQL: the later cursors are gone
        after.close()
        with pytest.raises(StorageError) as e:
            after2.fetch(1000)
        assert e.value.code == "34000"
        after2.close()
        assert len(before.fetch(2000)) == 1000  # the earlier one is not
        before.close()
        assert rows(c, "SELECT 1") == [(1,)]  # none of this aborted the transaction
        c.commit()
        c.begin()
        cur = c.execute("SELECT g FROM generate_series(1, 1000) g", ())
        c.execute("ROLLBACK", ())  # in SQL, not through rollback(): the cursor is gone
        c.begin()
        c.execute("INSERT INTO t (v) VALUES ('after')", ())
        with pytest.raises(StorageError) as e:
            cur.fetch(1000)
        assert e.value.code == "34000"
        cur.close()
        c.commit()  # the new transaction was not aborted by the stale cursor
        assert rows(c, "SELECT count(*) FROM t WHERE v = 'after'") == [(1,)]
    finally:
        c.close()


def test_pooled_connections_survive_a_postgresql_restart(backend: PostgreSQLBackend,
                                                        pg: PostgresServer) -> None:
    b = PostgreSQLBackend(settings(pg))
    try:
        b.check()
        conns = [session(b, "readonly") for _ in range(3)]
        for c in conns:
            c.begin()
            rows(c, "SELECT 1")  # three connections in the pool once committed
        for c in conns:
            c.commit()
        pg._run(str(pg.bin / "pg_ctl"), "-D", str(pg.data), "-l", str(pg.base / "postgres.log"),
                "-m", "fast", "-w", "restart")
        for c in conns:
            assert rows(c, "SELECT 2") == [(2,)]  # no stale connection reaches a session
        assert b.get_user("nobody") is None  # nor the service pool
        for c in conns:
            c.close()
    finally:
        b.close()


def test_roles_of_another_database_are_not_taken_over(backend: PostgreSQLBackend,
                                                      pg: PostgresServer) -> None:
    with psycopg.connect(pg.dsn(), autocommit=True) as su:
        su.execute('CREATE DATABASE "Postgres"')  # its roles would be named like postgres's
    other = PostgreSQLBackend(settings(pg, dsn=dsn_of(pg, dbname="Postgres")))
    try:
        with pytest.raises(StorageError) as e:
            other.initialize()
        assert e.value.code == "42710" and "another database (postgres)" in e.value.message
    finally:
        other.close()
    fresh = PostgreSQLBackend(settings(pg))  # the first database's roles still log in
    try:
        fresh.check()
        c = session(fresh, "readonly")
        assert rows(c, "SELECT current_user") == [("casemate_postgres_readonly",)]
        c.close()
    finally:
        fresh.close()
