"""asyncpg's conveniences in casemate.aio, the two pools, and the uncommitted-work warning,
against real servers (issue 17, item 2)."""

from __future__ import annotations

import asyncio
import threading
import warnings
from typing import Any

import pytest

import casemate
import casemate.aio
from casemate.errors import UncommittedWorkWarning
from casemate.pool import ConnectionPool


def _run(coro: Any) -> Any:
    return asyncio.run(coro, debug=True)


def _count(server: Any) -> int:
    with server.connect() as c:
        return int(c.execute("SELECT count(*) FROM t").fetchone()[0])


def _table(server: Any) -> None:
    with server.connect() as c:
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")


def test_fetchrow_fetchval_and_execute_status(plain_server: Any) -> None:
    _table(plain_server)

    async def main() -> None:
        conn = await casemate.aio.connect(plain_server.url)
        conn.autocommit = True
        assert await conn.execute("INSERT INTO t (v) VALUES (?)", ("a",)) == "INSERT 0 1"
        await conn.executemany("INSERT INTO t (v) VALUES (?)", [("b",), ("c",)])
        assert await conn.execute("UPDATE t SET v = upper(v) WHERE id > 1") == "UPDATE 2"
        assert await conn.execute("SELECT * FROM t") == "SELECT 3"
        assert await conn.execute("CREATE TABLE IF NOT EXISTS u (x)") == "CREATE TABLE"
        assert await conn.execute("DELETE FROM t WHERE id = 99") == "DELETE 0"
        assert await conn.fetchrow("SELECT id, v FROM t WHERE id = ?", (2,)) == (2, "B")
        assert await conn.fetchrow("SELECT id FROM t WHERE id = 99") is None
        assert await conn.fetchval("SELECT count(*) FROM t") == 3
        assert await conn.fetchval("SELECT id, v FROM t WHERE id = 3", column=1) == "C"
        assert await conn.fetchval("SELECT id FROM t WHERE id = 99") is None
        await conn.close()
    _run(main())


def test_transaction_blocks_nest_with_savepoints(plain_server: Any) -> None:
    _table(plain_server)

    async def main() -> None:
        conn = await casemate.aio.connect(plain_server.url)
        async with conn.transaction():
            await conn.execute("INSERT INTO t (v) VALUES ('outer')")
            with pytest.raises(LookupError):
                async with conn.transaction() as inner:
                    assert inner.savepoint is not None
                    await conn.execute("INSERT INTO t (v) VALUES ('undone')")
                    raise LookupError
            async with conn.transaction():
                await conn.execute("INSERT INTO t (v) VALUES ('kept')")
        assert not conn.in_transaction  # the outermost block committed
        assert _count(plain_server) == 2
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await conn.execute("INSERT INTO t (v) VALUES ('gone')")
                raise RuntimeError
        assert not conn.in_transaction and _count(plain_server) == 2
        # autocommit on: a block still groups its statements into one transaction
        conn.autocommit = True
        tx = conn.transaction()
        await tx.start()
        await conn.execute("INSERT INTO t (v) VALUES ('x')")
        assert conn.in_transaction
        await tx.rollback()
        assert _count(plain_server) == 2
        # after reads outside any block, the block owns the transaction and commits it
        conn.autocommit = False
        assert await conn.fetchval("SELECT count(*) FROM t") == 2
        assert conn.in_transaction
        async with conn.transaction() as tx1:
            assert tx1.savepoint is None
            await conn.execute("INSERT INTO t (v) VALUES ('after reads')")
        assert not conn.in_transaction and _count(plain_server) == 3
        await conn.execute("DELETE FROM t WHERE v = 'after reads'")
        await conn.commit()
        # with changes outside any block still uncommitted, a block is a savepoint in them
        await conn.execute("INSERT INTO t (v) VALUES ('mine')")
        async with conn.transaction() as tx2:
            assert tx2.savepoint is not None
            await conn.execute("INSERT INTO t (v) VALUES ('sp')")
        assert conn.in_transaction  # the caller's transaction: still the caller's to end
        await conn.commit()
        assert _count(plain_server) == 4
        await conn.close()
    _run(main())


def test_close_with_uncommitted_changes_warns(plain_server: Any) -> None:
    _table(plain_server)
    conn = plain_server.connect()
    conn.execute("SELECT * FROM t").fetchall()
    conn.close()  # a read-only transaction: nothing lost, nothing said
    conn = plain_server.connect()
    conn.execute("INSERT INTO t (v) VALUES ('lost')")
    with pytest.warns(UncommittedWorkWarning, match="uncommitted changes"):
        conn.close()
    assert _count(plain_server) == 0
    conn = plain_server.connect()
    conn.execute("INSERT INTO t (v) VALUES ('x')")
    conn.commit()
    conn.close()  # committed: no warning

    async def main() -> None:
        aconn = await casemate.aio.connect(plain_server.url)
        await aconn.execute("UPDATE t SET v = 'y'")
        with pytest.warns(UncommittedWorkWarning):
            await aconn.close()
        aconn = await casemate.aio.connect(plain_server.url)
        await aconn.execute("UPDATE t SET v = 'y'")
        await aconn.rollback()
        await aconn.close()
    _run(main())


def test_async_pool(plain_server: Any) -> None:
    _table(plain_server)

    async def main() -> None:
        async with casemate.aio.create_pool(plain_server.url, min_size=1, max_size=3) as pool:
            assert await pool.execute("INSERT INTO t (v) VALUES (?)", ("p",)) == "INSERT 0 1"
            assert await pool.executemany("INSERT INTO t (v) VALUES (?)", [("q",), ("r",)]) == 2
            assert await pool.fetchval("SELECT count(*) FROM t") == 3
            assert await pool.fetchrow("SELECT v FROM t WHERE id = 1") == ("p",)
            # 20 tasks share at most 3 connections
            seen: set[int] = set()

            async def task(i: int) -> Any:
                async with pool.acquire() as conn:
                    seen.add(id(conn))
                    await asyncio.sleep(0.01)
                    return await conn.fetchval("SELECT ?", (i,))
            assert await asyncio.gather(*(task(i) for i in range(20))) == list(range(20))
            assert len(seen) <= 3
            # a connection given back with changes: rolled back, and said so
            conn = await pool.acquire()
            await conn.execute("DELETE FROM t")
            with pytest.warns(UncommittedWorkWarning):
                await pool.release(conn)
            assert await pool.fetchval("SELECT count(*) FROM t") == 3
            # exhausted: a coded error after the timeout
            held = [await pool.acquire() for _ in range(3)]
            with pytest.raises(casemate.OperationalError) as e:
                await pool.acquire(timeout=0.2)
            assert e.value.code == "53P05"
            for c in held:
                await pool.release(c)
        pool2 = await casemate.aio.create_pool(plain_server.url, min_size=0, max_size=1)
        assert await pool2.fetch("SELECT 1") == [(1,)]
        await pool2.close()
    _run(main())


def test_blocking_pool_threads(plain_server: Any) -> None:
    _table(plain_server)
    with ConnectionPool(plain_server.url, min_size=1, max_size=2, timeout=20) as pool:
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                with pool.connection() as conn:
                    conn.execute("INSERT INTO t (v) VALUES (?)", (str(i),))
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert _count(plain_server) == 10  # each block committed
        with pytest.raises(ValueError), pool.connection() as conn:
            conn.execute("INSERT INTO t (v) VALUES ('rolled back')")
            raise ValueError
        assert _count(plain_server) == 10
        conn = pool.getconn()
        conn.execute("DELETE FROM t")
        with pytest.warns(UncommittedWorkWarning):
            pool.putconn(conn)
        assert _count(plain_server) == 10
        a, b = pool.getconn(), pool.getconn()
        with pytest.raises(casemate.OperationalError) as e:
            pool.getconn(timeout=0.2)
        assert e.value.code == "53P05"
        pool.putconn(a)
        pool.putconn(b)
    assert pool.closed
    with pytest.raises(casemate.InterfaceError):
        pool.getconn()


def test_pool_replaces_a_broken_connection(make_db: Any, server_factory: Any) -> None:
    db = make_db()
    server = server_factory(db)
    pool = ConnectionPool(server.url, min_size=1, max_size=1,
                          kwargs={"reconnect_attempts": 0})
    conn = pool.getconn()
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    port = server.port
    server.stop()
    server_factory(db, port=port)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pool.putconn(conn)  # the link died idle: discarded, no warning
    with pool.connection() as c2:
        assert c2.execute("SELECT count(*) FROM t").fetchone() == (0,)
    pool.close()


def test_failed_statement_in_a_nested_block(plain_server: Any) -> None:
    with plain_server.connect() as c:
        c.execute("CREATE TABLE u (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")

    async def main() -> None:
        conn = await casemate.aio.connect(plain_server.url)
        async with conn.transaction():
            await conn.execute("INSERT INTO u (v) VALUES ('a')")
            with pytest.raises(casemate.IntegrityError):
                async with conn.transaction():
                    await conn.execute("INSERT INTO u (v) VALUES ('b')")
                    await conn.execute("INSERT INTO u (v) VALUES (NULL)")
            assert await conn.fetch("SELECT v FROM u") == [("a",)]
        assert not conn.in_transaction
        with plain_server.connect() as c:  # committed: seen from another session
            assert c.execute("SELECT v FROM u").fetchall() == [("a",)]
        with pytest.raises(casemate.InterfaceError, match="reverse order"):
            outer, inner = conn.transaction(), conn.transaction()
            await outer.start()
            await inner.start()
            await outer.commit()
        await inner.rollback()
        await outer.rollback()
        await conn.close()
    _run(main())


@pytest.mark.parametrize(("sql", "writes"), [
    ("SELECT 1", False), ("  /* c */ -- d\n select 1", False), ("VALUES (1)", False),
    ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c", False),
    ("WITH a AS (SELECT replace(v, 'x', 'y') AS v FROM t) SELECT * FROM a", False),
    ("WITH a AS (SELECT 'DELETE') SELECT * FROM a", False),
    ("WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a", True),
    ("with x as (delete from t returning *) select * from x", True),
    ("INSERT INTO t VALUES (1)", True), ("CREATE TABLE u (a)", True), ("PRAGMA user_version = 3", True),
])
def test_which_statements_count_as_changes(sql: str, writes: bool) -> None:
    from casemate.client.risk import may_write
    from casemate.protocol import Msg
    assert may_write((Msg.QUERY, (1, sql, (), True, 100))) is writes


def test_verdicts_are_remembered_within_bounds() -> None:
    from casemate.client import risk
    from casemate.protocol import Msg
    from casemate.protocol.messages import Query
    risk._VERDICTS.clear()
    for i in range(risk._VERDICT_MAX + 10):
        sql = f"SELECT {i}" if i % 2 else f"UPDATE t SET a = {i}"
        assert risk.may_write((Msg.QUERY, Query(1, sql, (), True, 100))) is (i % 2 == 0)
        assert risk.may_write((Msg.QUERY, Query(1, sql, (), True, 100))) is (i % 2 == 0)
    assert 0 < len(risk._VERDICTS) <= risk._VERDICT_MAX
    long = "SELECT 1 -- " + "x" * risk._VERDICT_MAX_TEXT
    assert risk.may_write((Msg.QUERY, Query(1, long, (), True, 100))) is False
    assert long not in risk._VERDICTS
