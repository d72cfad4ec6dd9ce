"""Statement execution safety on the PostgreSQL backend (issue 14): statement_timeout,
cancel, and the statement stopped in PostgreSQL when its client goes away, is dropped,
or the Casemate server shuts down."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import casemate
from casemate.pgtest import PostgresServer
from casemate.testing import ServerProcess

from .conftest import init_folder

PW = "admin-pg-pw"
ENDLESS = "SELECT pg_sleep(1000)"


@pytest.fixture
def server(pg: PostgresServer, tmp_path: Path) -> Iterator[ServerProcess]:
    r = init_folder(pg, tmp_path / "db", PW)
    assert r.returncode == 0, r.stderr
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CASEMATE_PG_PASSWORD", pg.password)
        s = ServerProcess(tmp_path / "db", password=PW).start()
    yield s
    s.stop()


def sleeping(pg: PostgresServer) -> int:
    """PostgreSQL backends running the endless statement."""
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        return int(c.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                             "AND query LIKE '%pg_sleep(1000)%' AND pid <> pg_backend_pid()"
                             ).fetchone()[0])  # type: ignore[index]


def wait_sleeping(pg: PostgresServer, n: int, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while sleeping(pg) != n:
        assert time.monotonic() < deadline, f"expected {n} running statement(s)"
        time.sleep(0.1)


def expect_canceled(conn: casemate.Connection, why: str) -> float:
    t0 = time.monotonic()
    with pytest.raises(casemate.OperationalError) as e:
        conn.execute(ENDLESS).fetchall()
    assert e.value.code == "57014" and why in e.value.message, e.value
    return time.monotonic() - t0


def test_statement_timeout(server: ServerProcess, pg: PostgresServer) -> None:
    conn = server.connect()
    conn.execute("SET statement_timeout = 300")  # answered by Casemate, not sent to PostgreSQL
    assert expect_canceled(conn, "statement timeout (0.3 s)") < 3
    conn.rollback()
    assert conn.execute("SELECT 1").fetchall() == [(1,)]
    assert sleeping(pg) == 0


def test_cancel_from_another_thread(server: ServerProcess, pg: PostgresServer) -> None:
    conn = server.connect()
    conn.autocommit = True
    threading.Timer(0.5, conn.cancel).start()
    assert expect_canceled(conn, "user request") < 3
    assert conn.execute("SELECT 2").fetchall() == [(2,)]
    wait_sleeping(pg, 0)


def start_endless(url: str, program: str = "runaway") -> subprocess.Popen[str]:
    code = (f"import casemate; c = casemate.connect({url!r}, program={program!r}); "
            f"print('go', flush=True); c.execute({ENDLESS!r})")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "go"
    return p


def end(p: subprocess.Popen[str]) -> None:
    p.kill()
    p.wait()
    assert p.stdout is not None
    p.stdout.close()


def test_disconnect_and_drop_stop_the_statement(server: ServerProcess, pg: PostgresServer
                                                ) -> None:
    client = start_endless(server.url)
    wait_sleeping(pg, 1)
    end(client)
    wait_sleeping(pg, 0, within=3)
    client = start_endless(server.url)
    try:
        wait_sleeping(pg, 1)
        admin = server.connect()
        cols, rows = admin.admin_table("sessions")
        victim = [r[cols.index("id")] for r in rows if r[cols.index("program")] == "runaway"]
        admin.admin("drop", session=victim[0])
        wait_sleeping(pg, 0, within=3)
    finally:
        end(client)


def test_shutdown_stops_the_statement(server: ServerProcess, pg: PostgresServer) -> None:
    client = start_endless(server.url)
    try:
        wait_sleeping(pg, 1)
        t0 = time.monotonic()
        server.stop(signal.SIGINT, timeout=15)
        assert time.monotonic() - t0 < 5
        wait_sleeping(pg, 0, within=3)
    finally:
        end(client)
