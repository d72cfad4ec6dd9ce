"""A session that leaves a query's cursor unread holds one of the server's PostgreSQL
connections: idle, it must not keep it for ever, or a few such sessions of the least
privileged user leave every other session of the server waiting for a connection."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from casemate.pgtest import PostgresServer
from casemate.testing import ServerProcess
from tests.conftest import set_setting

from .conftest import init_folder

PW = "admin-pg-hold-pw"


def test_unread_cursors_do_not_hold_the_pool_for_ever(pg: PostgresServer, tmp_path: Path
                                                       ) -> None:
    r = init_folder(pg, tmp_path / "db", PW)
    assert r.returncode == 0, r.stderr
    set_setting(tmp_path / "db", "pool_size", "2")
    set_setting(tmp_path / "db", "idle_in_transaction_timeout_seconds", "1.5")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CASEMATE_PG_PASSWORD", pg.password)
        server = ServerProcess(tmp_path / "db", password=PW).start()
    try:
        hogs = [server.connect(reconnect_attempts=0) for _ in range(2)]
        for h in hogs:  # autocommit: no transaction, but a cursor not read to the end
            h.autocommit = True
            cur = h.cursor()
            cur.execute("SELECT g FROM generate_series(1, 100000) g")
            assert cur.fetchone() == (1,)
        time.sleep(3.0)  # idle for longer than the limit
        with server.connect() as other:
            assert other.execute("SELECT 1").fetchall() == [(1,)]  # not 53300
        for h in hogs:
            h.close()
    finally:
        server.stop()
