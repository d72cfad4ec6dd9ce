"""A result too large for the Casemate server's memory, on the PostgreSQL backend: every
round trip's rows are read one by one and counted against limits.max_statement_result_bytes,
so a readonly user's ``FETCH ALL``, ``EXECUTE`` or a query of huge values is cancelled with
54000 instead of filling the server (150 MB each before), and a large scan of big rows still
works through FETCHes sized by bytes."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

import casemate
from casemate.pgtest import PostgresServer
from casemate.storage import pg_roles
from casemate.storage.postgresql import PostgreSQLBackend
from casemate.testing import ServerProcess
from tests.access.test_live_rights import add_user, login

from .conftest import init_folder
from .test_pg_storage import ENV, settings

PW = "admin-pg-pw"
LIMIT = 8 * 1024 * 1024
GROWTH = 64 * 1024 * 1024   # what the server's RSS may grow by during one statement
BIG = "SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, 150000) g"  # ~150 MB


def start(pg: PostgresServer, db: Path, dbname: str = "postgres", **settings: int
          ) -> ServerProcess:
    """A server over ``pg`` with LIMIT and ``settings`` (keys of casemate.toml), and users
    reader (readonly) and writer (readwrite)."""
    if dbname != "postgres":
        with psycopg.connect(pg.dsn(), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {dbname}")
    r = init_folder(pg, db, PW, dbname=dbname)
    assert r.returncode == 0, r.stderr
    toml = db / "casemate.toml"
    text = toml.read_text()
    for key, value in {"max_statement_result_bytes": LIMIT, **settings}.items():
        text, n = re.subn(rf"(?m)^#?\s*{key}\s*=.*$", f"{key} = {value}", text)
        assert n == 1, key
    toml.write_text(text)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CASEMATE_PG_PASSWORD", pg.password)
        s = ServerProcess(db, password=PW).start()
    admin = s.connect(user="admin", password=PW)
    add_user(admin, "reader", "readonly")
    add_user(admin, "writer", "readwrite")
    admin.autocommit = True
    admin.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    admin.close()
    return s


@pytest.fixture(scope="module")
def server(pg: PostgresServer, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    s = start(pg, tmp_path_factory.mktemp("pgmem") / "db")
    yield s
    s.stop()


def peak_growth(server: ServerProcess, work: Callable[[], None]) -> int:
    """How much the server's RSS grew at most while ``work`` ran."""
    proc = psutil.Process(server.pid)
    base = peak = proc.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, proc.memory_info().rss)
    t = threading.Thread(target=sample)
    t.start()
    try:
        work()
    finally:
        done.set()
        t.join()
    return peak - base


def too_large(conn: casemate.Connection, *statements: str) -> None:
    cur = conn.cursor()
    for sql in statements[:-1]:
        cur.execute(sql)
    with pytest.raises(casemate.Error) as e:
        cur.execute(statements[-1])
        cur.fetchall()
    assert e.value.code == "54000", e.value
    assert "limits.max_statement_result_bytes" in (e.value.hint or "")


ATTACKS = {
    "fetch all": ("reader", (f"DECLARE c CURSOR FOR {BIG}", "FETCH ALL FROM c")),
    "fetch huge count": ("reader", (f"DECLARE c CURSOR FOR {BIG}",
                                    "FETCH FORWARD 2000000000 FROM c")),
    "execute": ("reader", (f"PREPARE p AS {BIG}", "EXECUTE p")),
    "huge values": ("reader", ("SELECT g, repeat('x', 8000000) FROM generate_series(1, 40) g",)),
    "modifying cte": ("writer", ("WITH d AS (DELETE FROM t WHERE id < 0 RETURNING id) "
                                 f"SELECT * FROM ({BIG}) b LEFT JOIN d ON false",)),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_large_result_is_cancelled_not_held(server: ServerProcess, name: str) -> None:
    user, statements = ATTACKS[name]
    attacker, other = login(server, user), login(server, "reader")
    try:
        assert other.execute("SELECT 1").fetchall() == [(1,)]  # warm: baseline memory
        grew = peak_growth(server, lambda: too_large(attacker, *statements))
        assert grew < GROWTH, f"{name}: the server grew by {grew >> 20} MB"
        attacker.rollback()
        assert attacker.execute("SELECT 2").fetchall() == [(2,)]
        assert other.execute("SELECT 3").fetchall() == [(3,)]
    finally:
        attacker.close()
        other.close()


def test_large_scan_of_big_rows_still_works(server: ServerProcess) -> None:
    """300 rows of 100 kB (30 MB, beyond the limit): FETCHes sized by bytes bring it all."""
    conn = login(server, "reader")
    try:
        def scan() -> None:
            cur = conn.execute("SELECT g, repeat('y', 100000) FROM generate_series(1, 300) g")
            n = 0
            while rows := cur.fetchmany(50):
                assert all(len(r[1]) == 100000 for r in rows)
                n += len(rows)
            assert n == 300
        assert peak_growth(server, scan) < GROWTH
    finally:
        conn.close()


@pytest.mark.parametrize("user,sql", [
    ("reader", f"{BIG} WHERE g > ?"),
    ("writer", "INSERT INTO t SELECT g, repeat('x', 1000) FROM generate_series(1, 150000) g "
               "WHERE g > ? RETURNING *"),
])
def test_executemany_results_are_counted(server: ServerProcess, user: str, sql: str) -> None:
    """executemany ignores rows, but psycopg's pipeline would take each result whole."""
    conn = login(server, user)
    try:
        def attack() -> None:
            with pytest.raises(casemate.Error) as e:
                conn.cursor().executemany(sql, [(0,)])
            assert e.value.code == "54000", e.value
        assert peak_growth(server, attack) < GROWTH
        conn.rollback()
        conn.cursor().executemany("SELECT ?", [(1,), (2,)])  # rows ignored, as before
        assert conn.execute("SELECT count(*) FROM t").fetchall() == [(0,)]
        conn.rollback()
    finally:
        conn.close()


def test_memory_of_a_huge_row_is_given_back(server: ServerProcess) -> None:
    """One row beyond the limit comes whole (PostgreSQL sends a row as one message): it is
    refused, and the connection whose libpq buffer grew for it is closed, not pooled."""
    conn = login(server, "reader")
    proc = psutil.Process(server.pid)
    try:
        assert conn.execute("SELECT 1").fetchall() == [(1,)]
        base = proc.memory_info().rss
        too_large(conn, "SELECT repeat('z', 150000000)")
        conn.rollback()
        assert conn.execute("SELECT 2").fetchall() == [(2,)]
        kept = proc.memory_info().rss - base
        assert kept < GROWTH, f"the server kept {kept >> 20} MB"
    finally:
        conn.close()


def test_rights_listener_detects_a_half_open_connection(pg: PostgresServer) -> None:
    """The LISTEN connection only reads: without keepalives, a user timeout and a periodic
    SELECT 1, a silently dead peer would leave it waiting forever (and rights stale)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV, pg.password)
        mp.setattr(pg_roles, "LISTEN_PING", 0.2)
        b = PostgreSQLBackend(settings(pg))
        b.initialize()
        try:
            b.watch_rights()
            listener = b._rights.listener
            assert listener is not None
            params = listener.info.get_parameters()
            for k, v in pg_roles.LISTEN_TCP.items():
                assert params.get(k) == str(v), (k, params.get(k))
            with psycopg.connect(pg.dsn(), autocommit=True) as c:
                for _ in range(50):
                    row = c.execute("SELECT query FROM pg_stat_activity WHERE pid = %s",
                                    (listener.info.backend_pid,)).fetchone()
                    if row and row[0] == "SELECT 1":
                        break
                    time.sleep(0.1)
                else:
                    pytest.fail(f"the listener never pinged: {row}")
        finally:
            b.close()


def test_unread_results_of_many_sessions_have_a_server_wide_budget(
        pg: PostgresServer, tmp_path: Path) -> None:
    """Rows read but not yet fetched by their clients wait in the server, also after the
    pooled connection went back: together at most storage.pool_size times the limit (here
    2 x 8 MiB), so many sessions that never read cannot pile up results."""
    server = start(pg, tmp_path / "db", dbname="pgmem_budget", pool_size=2)
    sessions = [login(server, "reader") for _ in range(4)]
    query = "SELECT g, repeat('r', 120000) FROM generate_series(1, 60) g"  # 7.2 MB
    try:
        for conn in sessions:
            conn.autocommit = True
        cursors = [sessions[i].execute(query) for i in range(2)]  # read, not fetched
        with pytest.raises(casemate.Error) as e:
            sessions[2].execute(query)
        assert e.value.code == "53200", e.value
        assert "limits.max_statement_result_bytes" in (e.value.hint or "")
        assert sessions[3].execute("SELECT 1").fetchall() == [(1,)]  # small ones still go
        assert len(cursors[0].fetchall()) == 60  # read: its bytes leave the budget
        assert len(sessions[2].execute(query).fetchall()) == 60
    finally:
        for conn in sessions:
            conn.close()
        server.stop()
