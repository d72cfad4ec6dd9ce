"""Attacks on Casemate's layer around PostgreSQL (issue 20), against a real PostgreSQL.

Each test replays what an attacker did with a group's rights: SQL injection through
the ``?`` translation, state left on pooled connections, taking over the group's
PostgreSQL role, reading other sessions' activity, a password left in casemate.toml,
and the smaller ones (COPY, large objects, connection details in errors).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from casemate.pgtest import PostgresServer
from casemate.storage import StorageConnection, StorageError
from casemate.storage.postgresql import PostgreSQLBackend

from .conftest import cli, dsn_of
from .test_pg_storage import ENV, code_of, rows, session, settings

RO, RW = "casemate_postgres_readonly", "casemate_postgres_readwrite"


@pytest.fixture(scope="module")
def backend(pg: PostgresServer) -> Iterator[PostgreSQLBackend]:
    """One pooled connection: every session of a group reuses the same PostgreSQL session."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV, pg.password)
        b = PostgreSQLBackend(settings(pg, pool_size=1))
        b.initialize()
        admin = session(b, "admin")
        for sql in ("DROP TABLE IF EXISTS orders", "CREATE TABLE orders (id int, card text)",
                    "INSERT INTO orders VALUES (1, 'a'), (2, 'b')"):
            admin.execute(sql, ())
        admin.close()
        b.add_group("clerks")
        b.set_grants("clerks", "orders", frozenset({"SELECT", "INSERT"}))
        yield b
        b.close()


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch, pg: PostgresServer) -> None:
    monkeypatch.setenv(ENV, pg.password)


def superuser(pg: PostgresServer) -> psycopg.Connection[Any]:
    return psycopg.connect(pg.dsn(), autocommit=True)


def order_count(pg: PostgresServer) -> int:
    with superuser(pg) as su:
        row = su.execute("SELECT count(*) FROM orders").fetchone()
    return int(row[0]) if row else -1


def run(conn: StorageConnection, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Rows, or [] when Casemate or PostgreSQL refused the statement."""
    try:
        return rows(conn, sql, params)
    except StorageError:
        if conn.in_transaction:
            conn.rollback()
        return []


# -- 1. SQL injection through the ? translation ---------------------------------------------
def test_parameter_value_never_runs_as_sql(backend: PostgreSQLBackend, pg: PostgresServer
                                           ) -> None:
    evil = "$😀$, current_user, $😀$"
    c = session(backend, "readwrite")
    try:
        # The ? inside a non-BMP dollar quote is text, not a placeholder: the statement has
        # none, so one parameter is an error (never the value pasted in as SQL).
        for sql in ("SELECT $😀$ ? $😀$", "SELECT $𝔘$ ? $𝔘$"):
            with pytest.raises(StorageError) as e:
                rows(c, sql, (evil,))
            assert "parameter" in e.value.message, e.value.message
            if c.in_transaction:
                c.rollback()
            assert rows(c, sql) == [(" ? ",)]  # the quote's text, as PostgreSQL reads it
        # A ? after an identifier ending in $: a placeholder, and the value comes back as is.
        assert rows(c, "SELECT 1 AS 😀$a$, ?", (evil,)) == [(1, evil)]
        assert RW not in str(rows(c, "SELECT ?::text", (evil,)))
        # e? is an identifier and a placeholder, never an escape string e'...': whatever
        # PostgreSQL makes of it, the DELETE in the value does not run (order_count below).
        run(c, "SELECT e?", ("\\' ; DELETE FROM orders; --",))
    finally:
        c.close()
    assert order_count(pg) == 2


def test_hidden_second_statement_is_refused(backend: PostgreSQLBackend, pg: PostgresServer
                                            ) -> None:
    c = session(backend, "readwrite")
    try:
        for sql in ("SELECT 1 AS 😀$a$; DELETE FROM orders; SELECT 1 AS 😀$a$",
                    "SELECT 1 AS 𝔘$q$; DELETE FROM orders; SELECT 1 AS 𝔘$q$"):
            assert code_of(c, sql) == "42601"
        assert order_count(pg) == 2
    finally:
        c.close()


# -- 2. state left on pooled connections --------------------------------------------------------
def test_shadow_table_does_not_reach_the_next_session(backend: PostgreSQLBackend,
                                                     pg: PostgresServer) -> None:
    a = session(backend, "clerks")
    a.execute("CREATE TABLE pg_temp.orders (id int, card text)", ())  # shadows public.orders
    a.close()
    b = session(backend, "clerks")
    try:
        b.execute("INSERT INTO orders VALUES (3, 'c')", ())
        assert rows(b, "SELECT to_regclass('pg_temp.orders') IS NULL") == [(True,)]
    finally:
        b.close()
    assert order_count(pg) == 3
    with superuser(pg) as su:
        su.execute("DELETE FROM orders WHERE id = 3")


def test_settings_do_not_reach_the_next_session(backend: PostgreSQLBackend) -> None:
    a = session(backend, "admin")  # admins may change settings: for their session only
    before = rows(a, "SHOW statement_timeout")
    a.begin()
    a.execute("SELECT \"set_config\"('statement_timeout', '4321', false)", ())
    assert rows(a, "SHOW statement_timeout") == [("4321ms",)]
    a.commit()
    a.close()
    b = session(backend, "admin")
    try:
        assert rows(b, "SHOW statement_timeout") == before
    finally:
        b.close()


def test_advisory_lock_does_not_outlive_its_statement(backend: PostgreSQLBackend,
                                                      pg: PostgresServer) -> None:
    a = session(backend, "readwrite")
    a.execute("SELECT \"pg_advisory_lock\"(4242)", ())
    try:
        with superuser(pg) as su:
            su.execute("SET lock_timeout = '5s'")
            su.execute("SELECT pg_advisory_lock(4242)")  # 55P03 if the lock were left behind
            su.execute("SELECT pg_advisory_unlock_all()")
    finally:
        a.close()


# -- 3. the group's PostgreSQL role -----------------------------------------------------------------
@pytest.mark.parametrize("sql", [
    "ALTER ROLE CURRENT_USER PASSWORD 'mine'", "ALTER USER CURRENT_USER PASSWORD 'mine'",
    "ALTER ROLE CURRENT_USER SET default_transaction_read_only = on",
    "ALTER ROLE CURRENT_USER IN DATABASE postgres SET default_transaction_read_only = on",
    "ALTER ROLE casemate_postgres_readwrite RENAME TO x",
    "DO $$BEGIN EXECUTE 'ALTER ROLE CURRENT_USER PASSWORD ''mine'''; END$$",
    "CREATE FUNCTION pg_temp.f() RETURNS void LANGUAGE sql AS "
    "'ALTER ROLE CURRENT_USER PASSWORD ''mine'''",
])
def test_members_cannot_change_their_role(backend: PostgreSQLBackend, pg: PostgresServer,
                                          sql: str) -> None:
    c = session(backend, "readwrite")
    try:
        assert code_of(c, sql) == "42501"
    finally:
        c.close()
    with superuser(pg) as su:
        row = su.execute("SELECT rolconfig FROM pg_roles WHERE rolname = %s", (RW,)).fetchone()
    assert row == (None,)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg.dsn(user=RW, password="mine")).close()


def test_a_changed_role_is_repaired(backend: PostgreSQLBackend, pg: PostgresServer) -> None:
    with superuser(pg) as su:  # changed outside Casemate (a DBA, a direct login...)
        su.execute(f"ALTER ROLE {RO} PASSWORD 'taken'")
        su.execute(f"ALTER ROLE {RO} SET default_transaction_read_only = on")
        su.execute(f"ALTER ROLE {RO} IN DATABASE postgres SET work_mem = '64kB'")
    fresh = PostgreSQLBackend(settings(pg))
    try:
        c = session(fresh, "readonly")  # the refused password is set back, then it logs in
        assert rows(c, "SELECT current_user") == [(RO,)]
        c.close()
        fresh.check()  # what a server does at start
        with superuser(pg) as su:
            assert su.execute("SELECT rolconfig FROM pg_roles WHERE rolname = %s",
                              (RO,)).fetchone() == (None,)
            assert su.execute("SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles r ON "
                              "r.oid = s.setrole WHERE r.rolname = %s", (RO,)).fetchone() == (0,)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg.dsn(user=RO, password="taken")).close()
    finally:
        fresh.close()


# -- 4. other sessions' activity ---------------------------------------------------------------------
@pytest.mark.parametrize("sql", [
    "SELECT query FROM pg_stat_activity", "SELECT query FROM pg_catalog.\"pg_stat_activity\"",
    "SELECT * FROM pg_stat_get_activity(NULL)",
    "SELECT pg_stat_get_backend_activity(i) FROM pg_stat_get_backend_idset() i",
    "SELECT table_to_xml('pg_stat_activity', true, false, '')::text",
    "SELECT query_to_xml('SELECT query FROM pg_stat_activity', true, false, '')::text",
    "SELECT pg_terminate_backend(pid) FROM pg_locks",
    "SELECT (pid).pg_cancel_backend FROM pg_locks",
])
def test_a_clerk_sees_and_ends_no_other_session(backend: PostgreSQLBackend, pg: PostgresServer,
                                                sql: str) -> None:
    big = PostgreSQLBackend(settings(pg))  # two connections at once
    a, b = session(big, "clerks"), session(big, "clerks")
    try:
        a.begin()
        rows(a, "SELECT count(*) FROM orders WHERE card = ?", ("4111111111111111",))
        assert code_of(b, sql) == "42501"
        assert rows(a, "SELECT 1") == [(1,)]  # still connected
        a.rollback()
    finally:
        a.close()
        b.close()
        big.close()


# -- 5. the database password ----------------------------------------------------------------------
def test_password_in_the_dsn_is_refused(pg: PostgresServer, tmp_path: Path) -> None:
    for dsn in (dsn_of(pg) + f" password={pg.password}",
                f"postgresql://postgres:{pg.password}@127.0.0.1:{pg.port}/postgres"):
        r = cli("init", str(tmp_path / "db"), "--storage", "postgresql", "--dsn", dsn,
                "--admin-password", "x-admin-pw")
        assert r.returncode != 0 and "contains a password" in r.stderr
        assert not (tmp_path / "db" / "casemate.toml").exists()
    with pytest.raises(StorageError) as e:
        PostgreSQLBackend(settings(pg, dsn=dsn_of(pg) + f" password={pg.password}"))
    assert pg.password not in e.value.message


def test_password_file_must_be_private(pg: PostgresServer, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV)
    pw = tmp_path / "pgpass"
    pw.write_text(pg.password + "\n")
    pw.chmod(0o644)
    with pytest.raises(StorageError) as e:
        PostgreSQLBackend(settings(pg, password_file=str(pw)))
    assert "not private" in e.value.message and "chmod 600" in (e.value.hint or "")
    pw.chmod(0o600)
    PostgreSQLBackend(settings(pg, password_file=str(pw))).close()


# -- 6. smaller ones ------------------------------------------------------------------------------
@pytest.mark.parametrize("sql", ["COPY orders TO STDOUT", "COPY orders FROM STDIN",
                                 "COPY (SELECT 1) TO STDOUT"])
def test_copy_is_refused_and_the_session_goes_on(backend: PostgreSQLBackend, sql: str) -> None:
    c = session(backend, "admin")
    try:
        assert code_of(c, sql) == "42501"
        assert rows(c, "SELECT 1") == [(1,)]
    finally:
        c.close()


def test_readonly_cannot_create_large_objects(backend: PostgreSQLBackend,
                                              pg: PostgresServer) -> None:
    c = session(backend, "readonly")
    try:
        for sql in ("SELECT lo_create(0)", "SELECT lo_from_bytea(0, 'x')", "SELECT \"lo_creat\"(-1)"):
            assert code_of(c, sql) == "42501"
    finally:
        c.close()
    with superuser(pg) as su:
        assert su.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone() == (0,)


def test_users_are_not_told_where_the_database_is(pg: PostgresServer,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    b = PostgreSQLBackend(settings(pg))
    try:
        b.check()  # serving from now on
        b.settings = dataclasses.replace(b.settings, dsn=dsn_of(pg, port=1))
        c = session(b, "readwrite")
        with caplog.at_level(logging.ERROR, "casemate.storage.postgresql"), \
                pytest.raises(StorageError) as e:
            c.execute("SELECT 1", ())
        said = f"{e.value.message} {e.value.hint}"
        assert "storage unavailable" in said
        for secret in ("127.0.0.1", "port", "postgres", RW):
            assert secret not in said
        assert "port=1" in caplog.text  # the administrator learns it from the log
    finally:
        b.close()


def test_a_session_holding_the_setup_lock_does_not_hang_init(backend: PostgreSQLBackend,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    from casemate.storage import pg_roles
    monkeypatch.setattr(pg_roles, "INIT_LOCK_SECONDS", 0.5)
    c = session(backend, "readwrite")
    try:
        c.begin()
        c.execute("SELECT pg_advisory_xact_lock(?)", (pg_roles._INIT_LOCK,))
        with pytest.raises(StorageError) as e:
            backend.initialize()
        assert e.value.code == "55P03" and "setup lock" in e.value.message
        c.rollback()
        backend.initialize()
    finally:
        c.close()


# -- found by the red team after the fixes -----------------------------------------------------
def test_a_clerk_cannot_forge_a_rights_notification(backend: PostgreSQLBackend,
                                                    pg: PostgresServer) -> None:
    """pg_notify('casemate_rights') made every server reload its users: flooded, a DoS."""
    watcher = PostgreSQLBackend(settings(pg))
    watcher.watch_rights()
    c = session(backend, "clerks")
    try:
        time.sleep(0.3)
        before = watcher.grants_version()
        for sql in ("SELECT pg_notify('casemate_rights', 'x')",
                    "SELECT pg_catalog.\"pg_notify\"('casemate_rights', g::text) "
                    "FROM generate_series(1, 3) g"):
            assert code_of(c, sql) == "42501"
        time.sleep(1.0)  # the listener polls every 0.5 s
        assert watcher.grants_version() == before
    finally:
        c.close()
        watcher.close()


def test_random_seed_does_not_reach_the_next_session(backend: PostgreSQLBackend) -> None:
    """DISCARD ALL keeps random()'s state: a setseed would let one clerk predict the next's."""
    a = session(backend, "clerks")
    try:
        assert code_of(a, "SELECT setseed(0.5)") == "42501"
        assert code_of(a, "SELECT x.setseed FROM (VALUES (0.5)) x") == "42501"
    finally:
        a.close()


def test_a_nul_in_the_statement_is_refused(backend: PostgreSQLBackend, pg: PostgresServer
                                           ) -> None:
    """libpq stops at a NUL: the text after it (Casemate's own FETCH) was lost."""
    c = session(backend, "readwrite")
    try:
        for sql in ("SELECT 1 \x00; DELETE FROM orders", "DELETE FROM orders WHERE false \x00"):
            assert code_of(c, sql) == "42601"
        assert rows(c, "SELECT 1") == [(1,)]
    finally:
        c.close()
    assert order_count(pg) == 2


class _SlowLock:
    """A lock whose acquire first yields for a while: the thread switch that lets a session
    give its connection back between interrupt() reading it and marking the cancel."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def acquire(self, blocking: bool = True) -> bool:
        time.sleep(0.3)
        return self._lock.acquire(blocking)

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_a_late_cancel_never_reaches_the_next_session(backend: PostgreSQLBackend) -> None:
    a = session(backend, "clerks")  # one pooled connection: b gets a's
    a._cancelling = _SlowLock()  # type: ignore[attr-defined]
    a.begin()
    rows(a, "SELECT 1")
    t = threading.Thread(target=a.interrupt)  # the statement timer fires as a finishes
    t.start()
    time.sleep(0.1)
    a.arm()  # as the server does before every call
    a.rollback()
    a.close()
    b = session(backend, "clerks")
    try:
        assert rows(b, "SELECT 1 FROM pg_sleep(0.8)") == [(1,)]  # not cancelled (57014)
    finally:
        t.join()
        b.close()


_TRAP = ("CREATE FUNCTION public.trap({args}) RETURNS {ret} LANGUAGE plpgsql AS $$BEGIN "
         "INSERT INTO public.loot VALUES (current_user); RETURN {body}; END$$")


@pytest.fixture
def loot(backend: PostgreSQLBackend, pg: PostgresServer) -> Iterator[StorageConnection]:
    """An admin session that left a table where a trap (its own function, run as whoever
    calls it) writes the name of the role it ran as."""
    a = session(backend, "admin")
    a.execute("CREATE TABLE public.loot (who text)", ())
    a.execute("GRANT INSERT ON public.loot TO PUBLIC", ())
    try:
        yield a
    finally:
        a.close()
        with superuser(pg) as su:
            su.execute("DROP TABLE IF EXISTS public.loot, public.counters")
            su.execute("DROP OPERATOR IF EXISTS public.= (oid, regclass)")
            su.execute("DROP FUNCTION IF EXISTS public.trap(oid, regclass)")
            su.execute("DROP FUNCTION IF EXISTS public.bt_index_check(oid)")
            su.execute("DROP EXTENSION IF EXISTS amcheck")


def _looted(pg: PostgresServer) -> list[Any]:
    with superuser(pg) as su:
        return su.execute("SELECT who FROM public.loot WHERE who NOT LIKE 'casemate%'").fetchall()


def test_an_admins_operator_never_runs_as_the_service_role(backend: PostgreSQLBackend,
                                                            pg: PostgresServer,
                                                            loot: StorageConnection) -> None:
    """CVE-2018-1058's pattern: the service role's queries compare oid with regclass; an
    exact-match operator in public would win over pg_catalog's (which needs a cast)."""
    loot.execute(_TRAP.format(args="l oid, r regclass", ret="boolean", body="l = r::oid"), ())
    loot.execute("CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = regclass, "
                 "FUNCTION = public.trap)", ())
    loot.execute("CREATE TABLE public.counters (id serial PRIMARY KEY)", ())
    backend.set_grants("clerks", "counters", frozenset({"INSERT"}))
    assert _looted(pg) == []  # not "postgres" (the service role, here a superuser)


def test_an_admins_function_never_runs_in_the_integrity_check(backend: PostgreSQLBackend,
                                                              pg: PostgresServer,
                                                              loot: StorageConnection) -> None:
    with superuser(pg) as su:
        su.execute("CREATE EXTENSION IF NOT EXISTS amcheck SCHEMA public")
    loot.execute(_TRAP.format(args="i oid", ret="void", body="").replace("trap",
                                                                         "bt_index_check"), ())
    assert backend.integrity_check() == "ok"
    assert _looted(pg) == []


@pytest.mark.parametrize("sql", ["SELECT 1 FROM casemate.users", "INSERT INTO orders VALUES (1)",
                                 "SELECT 1/0", "SELECT * FROM no_such_table"])
def test_a_failed_statement_keeps_no_pooled_connection(backend: PostgreSQLBackend,
                                                       sql: str) -> None:
    """Outside a transaction, a statement PostgreSQL refused left its connection with the
    session: a few such idle sessions held the whole pool (53300 for every other session)."""
    a = session(backend, "readonly")  # one pooled connection in this module
    b = session(backend, "admin")
    try:
        with pytest.raises(StorageError):
            a.execute(sql, ())
        with pytest.raises(StorageError):
            a.executemany(sql.replace("VALUES (1)", "VALUES (?)"), [(1,)])
        assert rows(b, "SELECT 1") == [(1,)]
    finally:
        a.close()
        b.close()


def test_a_failed_commit_keeps_no_pooled_connection(backend: PostgreSQLBackend,
                                                    pg: PostgresServer) -> None:
    admin = session(backend, "admin")
    admin.execute("CREATE TABLE deferred_keys (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)", ())
    admin.close()
    a, b = session(backend, "readwrite"), session(backend, "admin")
    try:
        a.begin()
        a.executemany("INSERT INTO deferred_keys VALUES (?)", [(1,), (1,)])
        with pytest.raises(StorageError) as e:
            a.commit()  # the constraint is checked now
        assert e.value.code == "23505"
        assert rows(b, "SELECT count(*) FROM deferred_keys") == [(0,)]
    finally:
        a.close()
        b.close()
        with superuser(pg) as su:
            su.execute("DROP TABLE deferred_keys")


def test_an_interrupt_before_the_statement_reaches_postgresql_stops_it(
        backend: PostgreSQLBackend) -> None:
    """The statement timer may fire while the statement is parsed or waits for a connection:
    PostgreSQL ignores a cancel that comes before the statement, which then ran unbounded."""
    c = session(backend, "readonly")
    try:
        for in_transaction in (False, True):
            if in_transaction:
                c.begin()
                rows(c, "SELECT 1")  # holds its connection: the cancel goes to an idle one
            c.arm()
            c.interrupt()
            time.sleep(0.3)
            t0 = time.monotonic()
            with pytest.raises(StorageError) as e:
                c.execute("SELECT pg_sleep(3)", ())
            assert e.value.code == "57014" and time.monotonic() - t0 < 1.5
            c.arm()  # the next call runs again
            if in_transaction:
                c.rollback()
            assert rows(c, "SELECT 1") == [(1,)]
    finally:
        c.close()


def test_an_interrupt_stops_a_statement_on_its_way(backend: PostgreSQLBackend) -> None:
    c = session(backend, "readonly")
    try:
        c.begin()
        rows(c, "SELECT 1")
        c.arm()
        threading.Timer(0.2, c.interrupt).start()
        t0 = time.monotonic()
        with pytest.raises(StorageError) as e:
            c.execute("SELECT pg_sleep(5)", ())
        assert e.value.code == "57014" and time.monotonic() - t0 < 2
        c.arm()
        c.rollback()
    finally:
        c.close()
