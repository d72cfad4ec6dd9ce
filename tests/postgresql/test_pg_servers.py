"""Two Casemate servers on different ports over one PostgreSQL database.

Server ``a`` is plain and reads the PostgreSQL password from the environment;
server ``b`` is encrypted and reads it from a file.  Both folders were made
with ``casemate init --storage postgresql`` over the same database.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import casemate
from casemate.database import make_verifier
from casemate.pgtest import PostgresServer
from casemate.testing import ServerProcess
from tests.conftest import set_setting

from .conftest import cli, dsn_of, init_folder

PW = "admin-pg-pw"
OTHER_PW = "ignored-second-pw"
METHODS = '''
from casemate.methods import Rows, method


@method
def add_note(db, body: str, fail: bool) -> int:
    n = db.execute("INSERT INTO method_notes (body) VALUES (?)", (body,)).rowcount
    if fail:
        raise ValueError("refused")
    return n


@method
def notes(db) -> Rows:
    return db.rows("SELECT body FROM method_notes ORDER BY id")
'''


@pytest.fixture(scope="module")
def pair(pg: PostgresServer, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    base = tmp_path_factory.mktemp("pg")
    r = init_folder(pg, base / "a", PW)
    assert r.returncode == 0, r.stderr
    r = init_folder(pg, base / "b", OTHER_PW)  # finds the schema: keeps the users
    assert r.returncode == 0, r.stderr
    secret = base / "pg-password"
    secret.write_text(pg.password + "\n")
    secret.chmod(0o600)
    set_setting(base / "b", "password_env", '"CASEMATE_PG_UNSET"')
    set_setting(base / "b", "password_file", f'"{secret}"')
    set_setting(base / "b", "encrypt_client_server_connections", "true")
    for name in ("a", "b"):
        (base / name / "Methods" / "notes.py").write_text(METHODS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CASEMATE_PG_PASSWORD", pg.password)
        a = ServerProcess(base / "a", password=PW).start()
    try:
        b = ServerProcess(base / "b", password=PW).start()
    except BaseException:
        a.stop()
        raise
    yield a, b
    a.stop()
    b.stop()


def url(server: ServerProcess, user: str, password: str) -> str:
    return f"casemate://{user}:{password}@127.0.0.1:{server.port}"


def refused(conn: casemate.Connection, sql: str) -> str:
    with pytest.raises(casemate.DatabaseError) as e:
        conn.execute(sql)
    conn.rollback()
    return str(e.value.code)


def test_folders_hold_no_password_and_name_the_backend(pair, pg: PostgresServer) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    for server in (a, b):
        toml = (server.db / "casemate.toml").read_text()
        assert pg.password not in toml and 'backend = "postgresql"' in toml
        assert not any((server.db / "Data").iterdir())  # no SQLite files
    with a.connect() as conn:
        assert conn.backend == "postgresql"


def test_second_init_kept_the_first_users(pair) -> None:  # type: ignore[no-untyped-def]
    _, b = pair
    with casemate.connect(url(b, "admin", PW)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(casemate.OperationalError) as e:
        casemate.connect(url(b, "admin", OTHER_PW))
    assert e.value.code == "28P01"


def test_row_committed_through_one_is_read_through_the_other(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    with a.connect() as ca, b.connect() as cb:
        assert not ca.security.encrypted and cb.security.encrypted
        ca.execute("CREATE TABLE shared (id serial PRIMARY KEY, note text)")
        ca.commit()
        ca.execute("INSERT INTO shared (note) VALUES (?)", ("from a",))
        assert cb.execute("SELECT count(*) FROM shared").fetchone() == (0,)  # not yet
        cb.rollback()
        ca.commit()
        assert cb.execute("SELECT note FROM shared").fetchall() == [("from a",)]
        cb.commit()


def test_user_added_through_one_logs_in_through_the_other(pair, pg: PostgresServer) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    r = cli("user", "add", str(a.db), "carol", "--group", "readwrite", "--password", "carol-pw",
            env={"CASEMATE_PG_PASSWORD": pg.password})
    assert r.returncode == 0, r.stderr
    with casemate.connect(url(b, "carol", "carol-pw")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("casemate_postgres_readwrite",)
    # and over the encrypted server's admin command, the other way round
    rec = make_verifier("erin", "erin-pw", "readonly")
    with b.connect() as admin:
        assert admin.security.encrypted
        admin.admin("user_add", name="erin", group="readonly",
                    verifier=[rec.salt, rec.stored_key, rec.server_key, rec.iterations])
    with casemate.connect(url(a, "erin", "erin-pw")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("casemate_postgres_readonly",)
    with pytest.raises(casemate.OperationalError) as e:
        casemate.connect(url(a, "carol", "wrong"))
    assert e.value.code == "28P01"


def test_grants_hold_on_both_servers(pair, pg: PostgresServer) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    with a.connect() as ca:
        ca.execute("CREATE TABLE ledger (id serial PRIMARY KEY, amount integer)")
        ca.execute("CREATE TABLE payroll (id serial PRIMARY KEY, salary integer)")
        ca.execute("INSERT INTO ledger (amount) VALUES (10)")
        ca.commit()
        ca.admin("group_add", name="auditors")
        ca.admin("grant", group="auditors", table="ledger", privileges=["SELECT"])
    r = cli("user", "add", str(b.db), "dave", "--group", "auditors", "--password", "dave-pw",
            env={"CASEMATE_PG_PASSWORD": pg.password})
    assert r.returncode == 0, r.stderr
    for server in (a, b):
        with casemate.connect(url(server, "dave", "dave-pw")) as conn:
            assert conn.execute("SELECT sum(amount) FROM ledger").fetchone() == (10,)
            conn.commit()
            for sql in ("DELETE FROM ledger", "SELECT * FROM payroll",
                        "SELECT * FROM casemate.users", "SET ROLE postgres",
                        "SELECT set_config('role', 'casemate_postgres_admin', false)",
                        "CREATE TABLE mine (a int)"):
                assert refused(conn, sql) == "42501", (server.port, sql)
    with b.connect() as cb:  # a grant made through b applies through a at once
        cb.admin("grant", group="auditors", table="payroll", privileges=["SELECT"])
    with casemate.connect(url(a, "dave", "dave-pw")) as conn:
        assert conn.execute("SELECT count(*) FROM payroll").fetchone() == (0,)


def test_insert_only_group_cannot_overwrite_rows_on_postgresql(pair) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL's own grants refuse an upsert's DO UPDATE (and MERGE's UPDATE/DELETE) to a
    role with INSERT alone: ON CONFLICT cannot overwrite rows as REPLACE could on SQLite."""
    a, _ = pair
    with a.connect() as ca:
        ca.execute("CREATE TABLE inbox (id integer PRIMARY KEY, body text UNIQUE)")
        ca.execute("INSERT INTO inbox VALUES (1, 'orig')")
        ca.commit()
        ca.admin("group_add", name="posters")
        ca.admin("grant", group="posters", table="inbox", privileges=["SELECT", "INSERT"])
        rec = make_verifier("poster", "poster-pw", "posters")
        ca.admin("user_add", name="poster", group="posters",
                 verifier=[rec.salt, rec.stored_key, rec.server_key, rec.iterations])
    with casemate.connect(url(a, "poster", "poster-pw")) as conn:
        for sql in ("INSERT INTO inbox VALUES (1, 'x') ON CONFLICT (id) DO UPDATE "
                    "SET body = excluded.body",
                    "INSERT INTO inbox VALUES (2, 'orig') ON CONFLICT (body) DO UPDATE "
                    "SET id = 2",
                    "WITH x AS (INSERT INTO inbox VALUES (3, 'y') RETURNING id) "
                    "UPDATE inbox SET body = 'x' WHERE id = 1",
                    "MERGE INTO inbox USING (SELECT 1 AS id) s ON inbox.id = s.id "
                    "WHEN MATCHED THEN UPDATE SET body = 'x'",
                    "MERGE INTO inbox USING (SELECT 1 AS id) s ON inbox.id = s.id "
                    "WHEN MATCHED THEN DELETE"):
            assert refused(conn, sql) == "42501", sql
        conn.execute("INSERT INTO inbox VALUES (1, 'x') ON CONFLICT DO NOTHING")
        conn.execute("INSERT INTO inbox VALUES (4, 'new')")
        conn.commit()
        assert conn.execute("SELECT id, body FROM inbox ORDER BY id").fetchall() == [
            (1, "orig"), (4, "new")]
        conn.commit()


def test_builtin_groups_rights(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    with a.connect() as admin:
        admin.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
        admin.commit()
        admin.admin("user_add", name="rita", group="readonly",
                    verifier=_verifier("rita", "rita-pw"))
    with casemate.connect(url(b, "carol", "carol-pw")) as rw:  # readwrite, from the test above
        rw.execute("INSERT INTO notes (body) VALUES (?)", ("hello",))  # serial: sequence rights
        rw.commit()
        assert refused(rw, "CREATE TABLE own (a int)") == "42501"
        assert refused(rw, "DROP TABLE notes") == "42501"
    with casemate.connect(url(a, "rita", "rita-pw")) as ro:
        assert ro.execute("SELECT body FROM notes").fetchall() == [("hello",)]
        ro.commit()
        assert refused(ro, "UPDATE notes SET body = 'x'") == "42501"


def _verifier(name: str, password: str) -> list[object]:
    rec = make_verifier(name, password, "-")
    return [rec.salt, rec.stored_key, rec.server_key, rec.iterations]


def test_sessions_reach_postgresql_over_tls(pair) -> None:  # type: ignore[no-untyped-def]
    for server in pair:
        with server.connect() as conn:
            assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                                ).fetchone() == (True,)


def test_failed_statement_rolls_back_the_transaction(pair) -> None:  # type: ignore[no-untyped-def]
    a, _ = pair
    with a.connect() as conn:
        conn.execute("CREATE TABLE once (k integer PRIMARY KEY)")
        conn.commit()
        conn.execute("INSERT INTO once VALUES (1)")
        with pytest.raises(casemate.IntegrityError):
            conn.execute("INSERT INTO once VALUES (1)")
        with pytest.raises(casemate.ProgrammingError) as e:
            conn.execute("SELECT 1")
        assert e.value.code == "25P02"
        with pytest.raises(casemate.ProgrammingError) as e:
            conn.commit()  # PostgreSQL rolled it back: commit must not pretend otherwise
        assert e.value.code == "25P02"
        assert conn.execute("SELECT count(*) FROM once").fetchone() == (0,)
        conn.rollback()


def test_server_start_checks_the_schema(pair, pg: PostgresServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, _ = pair
    other = tmp_path / "other"  # a third folder over the same database
    shutil.copytree(a.db, other, ignore=shutil.ignore_patterns("Logs"))
    secret = tmp_path / "pw"
    secret.write_text(pg.password)
    secret.chmod(0o600)
    set_setting(other, "password_env", '"CASEMATE_PG_UNSET"')
    set_setting(other, "password_file", f'"{secret}"')
    with psycopg.connect(pg.dsn(), autocommit=True) as su:
        su.execute("UPDATE casemate.meta SET schema_version = 42")
        try:
            with pytest.raises(RuntimeError, match="version 42"):
                ServerProcess(other, password=PW).start()
        finally:
            su.execute("UPDATE casemate.meta SET schema_version = 1")
        su.execute("CREATE DATABASE empty_db")
    set_setting(other, "dsn", f'"{dsn_of(pg, dbname="empty_db")}"')
    with pytest.raises(RuntimeError, match="no Casemate schema.*casemate init"):
        ServerProcess(other, password=PW).start()


def test_init_errors_are_clear(pg: PostgresServer, tmp_path: Path) -> None:
    r = init_folder(pg, tmp_path / "x", PW, port=1)
    assert r.returncode != 0 and "cannot connect to PostgreSQL" in r.stderr, r.stderr
    r = cli("init", str(tmp_path / "y"), "--storage", "postgresql", "--dsn", dsn_of(pg),
            "--admin-password", PW, env={"CASEMATE_PG_PASSWORD": "wrong"})
    assert r.returncode != 0 and "password authentication failed" in r.stderr, r.stderr
    assert "CASEMATE_PG_PASSWORD" in r.stderr  # says where the password comes from
    with psycopg.connect(pg.dsn(), autocommit=True) as su:
        su.execute("CREATE ROLE weak LOGIN PASSWORD 'weak-pw'")
        su.execute("CREATE DATABASE weakdb")
    r = cli("init", str(tmp_path / "z"), "--storage", "postgresql", "--dsn",
            dsn_of(pg, dbname="weakdb", user="weak"), "--admin-password", PW,
            env={"CASEMATE_PG_PASSWORD": "weak-pw"})
    assert r.returncode != 0 and "lacks rights" in r.stderr and "CREATEROLE" in r.stderr, (
        r.stderr)


def test_server_methods_run_in_the_session_transaction(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    with a.connect() as conn:
        conn.execute("CREATE TABLE method_notes (id serial PRIMARY KEY, body text)")
        conn.commit()
        assert conn.call("add_note", "kept", False) == 1
        with pytest.raises(casemate.DatabaseError, match="refused"):
            conn.call("add_note", "undone", True)  # its savepoint is rolled back...
        conn.commit()  # ...and the transaction around it goes on
    with b.connect() as conn:
        assert conn.call("notes") == [("kept",)]
        conn.commit()
    with casemate.connect(url(b, "dave", "dave-pw")) as conn:  # auditors: no EXECUTE yet
        with pytest.raises(casemate.ProgrammingError) as e:
            conn.call("notes")
        assert e.value.code == "42501"
    with a.connect() as conn:
        conn.admin("grant", group="auditors", table="method:notes", privileges=["EXECUTE"])
        conn.admin("grant", group="auditors", table="method_notes", privileges=["SELECT"])
    deadline = time.monotonic() + 5  # another server sees a method grant within a second
    while True:
        with casemate.connect(url(b, "dave", "dave-pw")) as conn:
            try:
                assert conn.call("notes") == [("kept",)]
                break
            except casemate.ProgrammingError:
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.2)


def _wait_for(check, timeout: float = 8.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_admins_see_and_drop_the_sessions_of_every_server(pair) -> None:  # type: ignore[no-untyped-def]
    """Issue 20: `casemate sessions` on one server listed only its own."""
    a, b = pair
    victim = b.connect(reconnect_attempts=0, program="far-away clerk")
    with a.connect() as admin:
        def remote() -> list[dict[str, object]]:
            columns, rows = admin.admin_table("sessions")
            return [r for r in (dict(zip(columns, row, strict=True)) for row in rows)
                    if r["program"] == "far-away clerk"]
        found = _wait_for(remote)
        assert found and found[0]["id"] == victim.session_id, found
        server = str(found[0]["server"])
        assert server.endswith(f":{b.port}")
        r = cli("drop", f"casemate://admin:{PW}@127.0.0.1:{a.port}", str(victim.session_id),
                "--server", server, "--reason", "elsewhere")
        assert r.returncode == 0 and "drop requested" in r.stdout, r.stderr
        assert _wait_for(lambda: not remote())

    def dropped() -> bool:
        try:
            victim.execute("SELECT 1")
        except casemate.OperationalError as e:
            return "dropped by administrator" in str(e)
        return False
    assert _wait_for(dropped)
    victim.close()


def test_injection_and_copy_through_a_server(pair) -> None:  # type: ignore[no-untyped-def]
    """Issue 20 over the wire: a value next to a non-BMP dollar quote stays a value; COPY is
    refused and the session goes on."""
    a, _ = pair
    with a.connect() as c:
        evil = "$😀$, current_user, $😀$"
        # The ? inside the quote is text: one parameter for none is an error, never SQL.
        with pytest.raises(casemate.DatabaseError) as e:
            c.execute("SELECT $😀$ ? $😀$", (evil,))
        assert "parameter" in e.value.message, e.value.message
        c.rollback()
        assert c.execute("SELECT $😀$ ? $😀$").fetchall() == [(" ? ",)]
        assert c.execute("SELECT 1 AS 😀$a$, ?", (evil,)).fetchall() == [(1, evil)]
        assert refused(c, "SELECT 1 AS 😀$a$; SELECT current_user; SELECT 1 AS 😀$a$") == "42601"
        assert refused(c, "COPY (SELECT 1) TO STDOUT") == "42501"
        assert c.execute("SELECT ?::text", ("still here",)).fetchone() == ("still here",)
