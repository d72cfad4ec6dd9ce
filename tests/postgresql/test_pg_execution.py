"""Statement execution safety on the PostgreSQL backend (issue 14): statement_timeout,
cancel, and the statement stopped in PostgreSQL when its client goes away, is dropped,
or the Casemate server shuts down."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import psycopg
import pytest

import casemate
from casemate.pgtest import PostgresServer
from casemate.testing import ServerProcess
from tests.conftest import client_running, end_process

from .conftest import ADMIN_PW

PW = ADMIN_PW
ENDLESS = "SELECT pg_sleep(1000)"


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
    return client_running(url, ENDLESS, program=program)



def test_disconnect_and_drop_stop_the_statement(server: ServerProcess, pg: PostgresServer
                                                ) -> None:
    client = start_endless(server.url)
    wait_sleeping(pg, 1)
    end_process(client)
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
        end_process(client)


def test_shutdown_stops_the_statement(server: ServerProcess, pg: PostgresServer) -> None:
    client = start_endless(server.url)
    try:
        wait_sleeping(pg, 1)
        t0 = time.monotonic()
        server.stop(signal.SIGINT, timeout=15)
        assert time.monotonic() - t0 < 5
        wait_sleeping(pg, 0, within=3)
    finally:
        end_process(client)
