"""A read-only session against a real server: it cannot take the write lock, and the SQLite
limits (limits.max_value_bytes, limits.max_sqlite_memory_mb) keep one statement from
allocating without bound."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import casemate
from casemate.database import make_verifier
from tests.conftest import ServerProcess, set_setting

PW = "reader-pw"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
def server(make_db, server_factory) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    db = make_db()
    set_setting(db, "max_sqlite_memory_mb", "128")
    s = server_factory(db)
    with s.connect() as admin:
        admin.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        admin.commit()
        for name, group in (("reader", "readonly"), ("looker", "lookers")):
            if group == "lookers":
                admin.admin("group_add", name="lookers")
                admin.admin("grant", group="lookers", table="t", privileges=["SELECT"])
            rec = make_verifier(name, PW, group)
            admin.admin("user_add", name=name, group=group,
                        verifier=[rec.salt, rec.stored_key, rec.server_key, rec.iterations])
    yield s


def login(server: ServerProcess, user: str) -> casemate.Connection:
    return casemate.connect(host="127.0.0.1", port=server.port, user=user, password=PW)


@pytest.mark.parametrize("user", ["reader", "looker"])
@pytest.mark.parametrize("sql", ["BEGIN IMMEDIATE", "BEGIN EXCLUSIVE TRANSACTION",
                                 "begin /* x */ immediate"])
def test_read_only_session_cannot_take_the_write_lock(server: ServerProcess, user: str,
                                                      sql: str) -> None:
    with login(server, user) as ro, server.connect() as rw:
        ro.autocommit = True
        with pytest.raises(casemate.DatabaseError) as ei:
            ro.execute(sql)
        assert ei.value.code == "42501", ei.value
        assert ro.execute("SELECT count(*) FROM t").fetchone() == (0,)  # the session goes on
        t0 = time.monotonic()
        rw.execute("INSERT INTO t (v) VALUES ('w')")  # no lock is held against writers
        rw.commit()
        assert time.monotonic() - t0 < 2


def test_huge_values_are_refused_not_allocated(server: ServerProcess) -> None:
    assert server.proc is not None
    with login(server, "reader") as ro:
        for sql in ("SELECT zeroblob(200000000)", "SELECT length(zeroblob(200000000))",
                    "SELECT randomblob(200000000)", "SELECT hex(zeroblob(10000000))"):
            with pytest.raises(casemate.DatabaseError) as ei:
                ro.execute(sql).fetchall()
            assert "too big" in str(ei.value), (sql, ei.value)
            ro.rollback()
        # printf() gives NULL rather than go beyond the limit.
        assert ro.execute("SELECT printf('%.*c', 200000000, 'x')").fetchone() == (None,)
        # A row of many values each under the limit: the memory bound stops it.
        cols = ", ".join(["zeroblob(10000000)"] * 100)
        with pytest.raises(casemate.DatabaseError) as ei:
            ro.execute(f"SELECT {cols}").fetchall()
        assert "memory" in str(ei.value).lower(), ei.value
        ro.rollback()
        assert ro.execute("SELECT length(zeroblob(1000000))").fetchone() == (1000000,)
    assert peak_rss_mb(server.proc.pid) < 600


def test_max_value_bytes_is_a_setting(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    set_setting(db, "max_value_bytes", str(64 * 1024 * 1024))
    s = server_factory(db)
    with s.connect() as a:
        assert a.execute("SELECT length(zeroblob(40000000))").fetchone() == (40000000,)
