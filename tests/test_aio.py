"""casemate.aio against real servers: same behaviour as the DB-API client."""

import asyncio
import contextlib

import pytest

import casemate
import casemate.aio


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro, debug=True)


@pytest.mark.parametrize("fixture", ["plain_server", "tls_server"])
def test_aio_query_stream_and_transactions(request: pytest.FixtureRequest, fixture: str) -> None:
    server = request.getfixturevalue(fixture)

    async def main() -> None:
        conn = await casemate.aio.connect(server.url)
        assert conn.security.encrypted == (fixture == "tls_server")
        await conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        assert await conn.executemany("INSERT INTO t (v) VALUES (?)",
                                      [(f"v{i}",) for i in range(5000)]) == 5000
        await conn.commit()
        cur = conn.cursor()
        await cur.execute("SELECT id, v FROM t ORDER BY id")
        n = 0
        async for row in cur:
            n += 1
            assert row == (n, f"v{n - 1}")
        assert n == 5000
        await conn.execute("DELETE FROM t")
        await conn.rollback()
        assert await conn.fetch("SELECT count(*) FROM t") == [(5000,)]
        # Pipelining: many tasks share one connection; replies come back in order.
        results = await asyncio.gather(*(conn.fetch("SELECT ?", (i,)) for i in range(50)))
        assert results == [[(i,)] for i in range(50)]
        await conn.close()
    _run(main())


def test_aio_errors(plain_server) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        conn = await casemate.aio.connect(plain_server.url)
        with pytest.raises(casemate.ProgrammingError) as e:
            await conn.execute("SELEC 1")
        assert e.value.code == "42601"
        assert await conn.fetch("SELECT 1") == [(1,)]  # the session carries on
        await conn.close()
        with pytest.raises(casemate.OperationalError) as e2:
            await casemate.aio.connect(plain_server.url.replace("admin-secret-pw", "wrong"))
        assert e2.value.code == "28P01"
    _run(main())


def test_aio_description_and_lastrowid(plain_server) -> None:  # type: ignore[no-untyped-def]
    """Declared types describe an empty result; executemany leaves no stale lastrowid."""
    async def main() -> None:
        conn = await casemate.aio.connect(plain_server.url)
        await conn.execute("CREATE TABLE d (id INTEGER PRIMARY KEY, day DATE, note TEXT)")
        cur = conn.cursor()
        await cur.execute("INSERT INTO d (note) VALUES ('x')")
        assert cur.lastrowid == 1
        await cur.executemany("INSERT INTO d (note) VALUES (?)", [("y",), ("z",)])
        assert cur.lastrowid is None and cur.rowcount == 2
        await cur.execute("SELECT id, day, note FROM d WHERE id < 0")
        assert [d[1] for d in cur.description] == ["integer", "date", "text"]
        await cur.execute("SELECT id, day, note FROM d ORDER BY id")  # day is NULL
        assert [d[1] for d in cur.description] == ["integer", "date", "text"]
        await conn.rollback()
        await conn.close()
    _run(main())


def test_aio_connection_lost_with_a_request_in_flight_queues_no_more(plain_server) -> None:  # type: ignore[no-untyped-def]
    """Every call after such a loss reports it, and no request is queued for a reply that
    cannot come (the blocking client queued one more per call: helper-40;
    tests/test_dbapi_lane.py)."""
    admin = plain_server.connect()
    admin.autocommit = True

    async def main() -> None:
        conn = await casemate.aio.connect(plain_server.url, reconnect_attempts=0,
                                          program="victim")
        cur = conn.cursor()
        await cur.execute("SELECT 1")
        cols, rows = admin.admin_table("sessions")
        sid = next(r[cols.index("id")] for r in rows if r[cols.index("program")] == "victim")
        asyncio.get_running_loop().call_later(
            0.3, lambda: admin.admin("drop", session=sid))
        with pytest.raises(casemate.OperationalError):
            await cur.execute("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 "
                              "FROM r WHERE i < 3e7) SELECT count(*) FROM r")
        for _ in range(3):
            with pytest.raises(casemate.OperationalError):
                await cur.execute("SELECT 2")
        assert len(conn._core.pending) <= 1
        with contextlib.suppress(casemate.Error):
            await conn.close()
    _run(main())
    admin.close()
