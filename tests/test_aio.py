"""casemate.aio against real servers: same behaviour as the DB-API client."""

import asyncio

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
