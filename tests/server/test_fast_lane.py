"""The runner's side of the server's fast lane (``Runner.read_now``, issue 16): everything
the lane does for a request runs under the event loop's cut-off, as the general inline
call's does (the storage side is tests/storage/test_read_now.py)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from casemate.server.inline import CostModel
from casemate.server.results import BATCH_BYTES
from casemate.server.runner import Runner
from casemate.storage import sqlite_rows
from casemate.storage.access import Policy
from casemate.storage.base import TooLong
from casemate.storage.sqlite import SQLiteBackend


@pytest.mark.skipif(not sqlite_rows.COMPILED, reason="the pure row path is forced (CASEMATE_PURE)")
def test_the_column_types_of_an_empty_result_are_read_under_the_cut_off(tmp_path: Path) -> None:
    """A result whose first row cannot tell its column types (no row, a NULL) asks the
    schema (EXPLAIN and table lookups): that too is stopped at the cut-off and left to a
    thread.  helper-37 found the lane doing it after the cut-off was lifted: a short
    statement with new parameter types held the event loop for seconds."""
    conn = SQLiteBackend.create(tmp_path).connect()
    conn.set_policy(Policy("admin"))
    conn.execute("CREATE TABLE w (" + ", ".join(f"c{i} TEXT" for i in range(60)) + ")", ())
    ctes = ["a0 AS NOT MATERIALIZED (SELECT c0 FROM w)"] + [
        f"a{i} AS NOT MATERIALIZED (SELECT * FROM a{i - 1} UNION ALL SELECT * FROM a{i - 1})"
        for i in range(1, 8)]
    sql = "WITH " + ", ".join(ctes) + " SELECT * FROM a7 WHERE ?1 AND ?2 AND 0"
    conn.arm(60.0)  # the statement itself is short: no row, once prepared
    read = conn.read_now(sql, (1, 1), 1000, BATCH_BYTES)
    conn.disarm()
    assert read is not None and read[1].rows == 0
    read[0].close()
    session: Any = SimpleNamespace(server=SimpleNamespace(cost=CostModel(0.0001)), seq=1,
                                   closed=False)
    runner = Runner(session)
    t0 = time.monotonic()
    with pytest.raises(TooLong):  # new parameter types: the schema is asked again
        runner.read_now(conn, (sql, False), sql, (1, "a"), 1000)
    assert time.monotonic() - t0 < 2.0
    assert session.server.cost.cut_calls == 1  # a thread next time, as inline() decides
    assert not session.server.cost.inline((sql, False))
    conn.close()
