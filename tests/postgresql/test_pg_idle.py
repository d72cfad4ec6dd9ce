"""The in-transaction idle limit and the sessions' lock columns on the PostgreSQL storage:
a session left idle inside its transaction is rolled back, and its row locks released."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import casemate
from casemate.pgtest import PostgresServer
from casemate.testing import ServerProcess
from tests.conftest import set_setting

from .conftest import init_folder

PW = "admin-pg-idle-pw"


def test_idle_transaction_on_postgresql(pg: PostgresServer, tmp_path: Path) -> None:
    r = init_folder(pg, tmp_path / "db", PW)
    assert r.returncode == 0, r.stderr
    set_setting(tmp_path / "db", "idle_in_transaction_timeout_seconds", "1.5")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CASEMATE_PG_PASSWORD", pg.password)
        server = ServerProcess(tmp_path / "db", password=PW).start()
    try:
        with server.connect() as setup:
            setup.execute("DROP TABLE IF EXISTS idle_rows")
            setup.execute("CREATE TABLE idle_rows (id INTEGER PRIMARY KEY, v INTEGER)")
            setup.execute("INSERT INTO idle_rows VALUES (1, 0)")
            setup.commit()
        holder = server.connect(reconnect_attempts=0)
        other, admin = server.connect(), server.connect()
        try:
            holder.execute("UPDATE idle_rows SET v = 1 WHERE id = 1")  # locks the row
            cols, rows = admin.admin_table("sessions")
            mine = dict(zip(cols, next(r for r in rows if r[0] == holder.session_id),
                            strict=True))
            assert mine["write_lock_seconds"] is not None and mine["transaction_since"]
            t0 = time.monotonic()
            other.execute("UPDATE idle_rows SET v = 2 WHERE id = 1")  # waits for the row
            other.commit()
            assert time.monotonic() - t0 < 4.5
            with pytest.raises(casemate.OperationalError, match="rolled back"):
                holder.execute("SELECT 1")
            assert any(code == "25P03" for code, _ in holder.notices)
            assert other.execute("SELECT v FROM idle_rows").fetchall() == [(2,)]
        finally:
            for c in (holder, other, admin):
                c.close()
    finally:
        server.stop()
