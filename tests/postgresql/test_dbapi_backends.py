"""The same DB-API behaviour over both storage backends (SQL that both dialects accept)."""

from __future__ import annotations

import sys
import tracemalloc
from collections.abc import Iterator
from decimal import Decimal

import psutil
import pytest

import casemate
from casemate.database import create_database
from casemate.pgtest import PostgresServer
from casemate.testing import ServerProcess

from .conftest import init_folder

PW = "dbapi-pw"
ROWS = 200_000
PAD = "x" * 50


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp(request.param) / "db"
    if request.param == "sqlite":
        create_database(folder, None, PW)
        s = ServerProcess(folder, password=PW).start()
    else:
        pg: PostgresServer = request.getfixturevalue("pg")
        r = init_folder(pg, folder, PW)
        assert r.returncode == 0, r.stderr
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CASEMATE_PG_PASSWORD", pg.password)
            s = ServerProcess(folder, password=PW).start()
    yield s
    s.stop()


def test_backend_is_the_one_asked_for(server: ServerProcess) -> None:
    with server.connect() as conn:
        assert conn.backend in ("sqlite", "postgresql")
        assert conn.backend in str(server.db.parent)


def test_commit_and_rollback_isolation(server: ServerProcess) -> None:
    with server.connect() as one, server.connect() as two:
        one.execute("CREATE TABLE iso (k integer PRIMARY KEY, v text)")
        one.commit()
        one.execute("INSERT INTO iso VALUES (?, ?)", (1, "a"))
        assert two.execute("SELECT count(*) FROM iso").fetchone() == (0,)  # uncommitted
        two.rollback()
        one.commit()
        assert two.execute("SELECT v FROM iso").fetchall() == [("a",)]
        two.rollback()
        one.execute("UPDATE iso SET v = ? WHERE k = ?", ("b", 1))
        one.rollback()
        assert one.execute("SELECT v FROM iso").fetchall() == [("a",)]
        one.commit()


def test_rowcount_description_lastrowid(server: ServerProcess) -> None:
    with server.connect() as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE items (id integer PRIMARY KEY, name text)")
        cur.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"n{i}") for i in range(100)])
        assert cur.rowcount == 100
        cur.execute("UPDATE items SET name = name || '!' WHERE id < ?", (10,))
        assert cur.rowcount == 10
        cur.execute("DELETE FROM items WHERE id >= ?", (90,))
        assert cur.rowcount == 10
        cur.execute("INSERT INTO items VALUES (?, ?)", (500, "last"))
        # SQLite reports the rowid; PostgreSQL has none to report (use RETURNING)
        assert cur.lastrowid == (500 if conn.backend == "sqlite" else None)
        cur.execute("SELECT id, name AS label FROM items ORDER BY id")
        assert [d[0] for d in cur.description] == ["id", "label"]
        assert cur.rowcount == -1
        assert cur.fetchmany(3) == [(0, "n0!"), (1, "n1!"), (2, "n2!")]
        assert len(cur.fetchall()) == 88
        cur.execute("SELECT id FROM items WHERE id < 0")
        assert [d[0] for d in cur.description] == ["id"] and cur.fetchall() == []
        conn.commit()


def test_parameters_round_trip(server: ServerProcess) -> None:
    with server.connect() as conn:
        conn.execute("CREATE TABLE vals (i bigint, f double precision, t text, b bytea, "
                     "n integer)" if conn.backend == "postgresql" else
                     "CREATE TABLE vals (i integer, f real, t text, b blob, n integer)")
        row = (2**40, 1.5, "it's 100% ?", b"\x00\xff", None)
        conn.execute("INSERT INTO vals VALUES (?, ?, ?, ?, ?)", row)
        assert conn.execute("SELECT i, f, t, b, n FROM vals WHERE t = ? AND i = ?",
                            (row[2], row[0])).fetchall() == [row]
        assert conn.execute("SELECT '?', 7 % 4").fetchone() == ("?", 3)
        conn.rollback()


def test_large_result_streams_in_bounded_memory(server: ServerProcess) -> None:
    srv = psutil.Process(server.pid)
    with server.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < "
                    f"{ROWS}) SELECT x, '{PAD}' FROM c")
        base = srv.memory_info().rss
        tracemalloc.start()
        try:
            n = server_peak = 0
            while batch := cur.fetchmany(5000):
                n += len(batch)
                assert batch[-1] == (n, PAD)
                if n % 50_000 == 0:
                    server_peak = max(server_peak, srv.memory_info().rss - base)
            client_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert n == ROWS
        # The whole result is ~20 MB as Python objects: neither side ever holds it.
        assert client_peak < 8_000_000, client_peak
        assert server_peak < 12_000_000, server_peak
        conn.commit()


def test_error_classes_and_codes(server: ServerProcess) -> None:
    with server.connect() as conn:
        with pytest.raises(casemate.ProgrammingError) as e:
            conn.execute("SELEC 1")
        assert e.value.code == "42601"
        conn.rollback()
        with pytest.raises(casemate.ProgrammingError) as e:
            conn.execute("SELECT * FROM no_such_table")
        assert e.value.code == "42P01"
        conn.rollback()
        conn.execute("CREATE TABLE uniq (k integer PRIMARY KEY)")
        conn.execute("INSERT INTO uniq VALUES (1)")
        conn.commit()
        with pytest.raises(casemate.IntegrityError) as e:
            conn.execute("INSERT INTO uniq VALUES (1)")
        assert e.value.code in ("23000", "23505")  # SQLite's class code; PostgreSQL's own
        conn.rollback()


def test_autocommit_executemany_is_all_or_nothing(server: ServerProcess) -> None:
    with server.connect() as conn:
        conn.autocommit = True
        conn.execute("CREATE TABLE batch (k integer PRIMARY KEY)")
        with pytest.raises(casemate.IntegrityError):
            conn.cursor().executemany("INSERT INTO batch VALUES (?)", [(1,), (2,), (1,)])
        assert conn.execute("SELECT count(*) FROM batch").fetchone() == (0,)
        conn.execute("INSERT INTO batch VALUES (?)", (5,))
        with server.connect() as other:
            assert other.execute("SELECT k FROM batch").fetchall() == [(5,)]
            other.rollback()


def test_decimal_values(server: ServerProcess) -> None:
    with server.connect() as conn:
        conn.execute("CREATE TABLE money (amount NUMERIC(10, 2))")
        conn.execute("INSERT INTO money VALUES (?)", (Decimal("12.34"),))
        assert conn.execute("SELECT amount FROM money").fetchone() == (Decimal("12.34"),)
        conn.rollback()


def test_transaction_blocks_and_pools_on_both_backends(server: ServerProcess) -> None:
    """asyncio transaction() blocks are savepoints inside; a failed statement in a nested
    block (which aborts the transaction on PostgreSQL) is undone with its savepoint alone."""
    import asyncio

    import casemate.aio
    from casemate.pool import ConnectionPool

    with server.connect() as conn:
        conn.execute("CREATE TABLE txb (k integer PRIMARY KEY, v text NOT NULL)")

    async def main() -> None:
        conn = await casemate.aio.connect(server.url)
        async with conn.transaction():
            assert await conn.execute("INSERT INTO txb VALUES (?, ?)", (1, "a")) == "INSERT 0 1"
            with pytest.raises(casemate.IntegrityError):
                async with conn.transaction():
                    await conn.execute("INSERT INTO txb VALUES (?, ?)", (2, "b"))
                    await conn.execute("INSERT INTO txb VALUES (?, ?)", (1, "dup"))
            assert await conn.fetchval("SELECT count(*) FROM txb") == 1
        await conn.close()
        async with casemate.aio.create_pool(server.url, max_size=2) as pool:
            assert await pool.execute("UPDATE txb SET v = ?", ("z",)) == "UPDATE 1"
            assert await pool.fetchrow("SELECT k, v FROM txb") == (1, "z")
    asyncio.run(main())
    with ConnectionPool(server.url, max_size=2) as pool, pool.connection() as c:
        assert c.execute("SELECT v FROM txb").fetchall() == [("z",)]


def test_a_json_parameter_too_deep_to_decode_fails_its_statement_only(
        server: ServerProcess) -> None:
    # The server's JSON decoder stops at about 900 levels; a client with a higher recursion
    # limit can send deeper.  That used to be a malformed message: the session ended and
    # its transaction with it.  Now the statement fails (22000) and the transaction goes on.
    depth = 3000
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    deep = casemate.Json(value)
    limit = sys.getrecursionlimit()
    with server.connect() as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE deepj (id INTEGER, v " +
                    ("JSONB" if conn.backend == "postgresql" else "JSON") + ")")
        conn.commit()
        cur.execute("INSERT INTO deepj VALUES (1, ?)", (casemate.Json([1]),))
        sys.setrecursionlimit(depth + 1000)
        try:
            with pytest.raises(casemate.DataError) as e:
                cur.execute("INSERT INTO deepj VALUES (2, ?)", (deep,))
        finally:
            sys.setrecursionlimit(limit)
        assert e.value.code == "22000"
        assert "nested deeper than the server can decode" in e.value.message
        if conn.backend == "postgresql":
            conn.rollback()  # PostgreSQL's rule: a failed statement ends the transaction
            cur.execute("INSERT INTO deepj VALUES (1, ?)", (casemate.Json([1]),))
        conn.commit()
        cur.execute("SELECT id, v FROM deepj")
        assert cur.fetchall() == [(1, [1])]
    assert "internal error" not in server.log()


def test_stored_json_too_deep_to_decode_comes_back_as_text(server: ServerProcess) -> None:
    # PostgreSQL's jsonb takes thousands of levels; reading 999 of them raised
    # RecursionError in the server's loader: an internal error that ended the session.
    pg_json = "CAST(? AS jsonb)"
    with server.connect() as conn:
        cur = conn.cursor()
        pg = conn.backend == "postgresql"
        cur.execute(f"CREATE TABLE deepr (n INTEGER, v {'JSONB' if pg else 'JSON'})")
        for n in (50, 999):
            cur.execute(f"INSERT INTO deepr VALUES (?, {pg_json if pg else '?'})",
                        (n, "[" * n + "]" * n))
        cur.execute("SELECT v FROM deepr ORDER BY n")
        shallow, deep = (r[0] for r in cur.fetchall())
        assert isinstance(shallow, list)
        assert deep == "[" * 999 + "]" * 999
        assert conn.in_transaction  # the session and its transaction went on
        conn.rollback()
    assert "internal server error" not in server.log()


def _nested_dict(depth: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_json_values_deeper_than_the_server_encodes_fail_their_statement_only(
        server: ServerProcess) -> None:
    # Decoded by the protocol, refused later: a dict parameter 990 levels deep (msgpack takes
    # it; json.dumps of it, binding it, met the recursion limit: an internal error that ended
    # the session), and stored JSON too deep to decode typed by a parameter beside it.
    with server.connect() as conn:
        cur = conn.cursor()
        pg = conn.backend == "postgresql"
        cur.execute(f"CREATE TABLE deepw (id INTEGER, v {'JSONB' if pg else 'JSON'})")
        cur.execute("INSERT INTO deepw VALUES (1, ?)", ({"in": casemate.Json([1, {"b": 2}])},))
        conn.commit()
        cur.execute("SELECT v FROM deepw")
        assert cur.fetchall() == [({"in": [1, {"b": 2}]},)]  # a Json inside a dict: its value
        with pytest.raises(casemate.DataError) as e:
            cur.execute("INSERT INTO deepw VALUES (2, ?)", (_nested_dict(990),))
        assert "nested deeper than Python can encode" in e.value.message
        if pg:
            conn.rollback()
        text = "[" * 999 + "]" * 999
        cur.execute(f"INSERT INTO deepw VALUES (3, {'CAST(? AS jsonb)' if pg else '?'})", (text,))
        cur.execute("SELECT ? UNION ALL SELECT v FROM deepw WHERE id = 3",
                    ({"p": 1} if not pg else casemate.Json({"p": 1}),))
        assert cur.fetchall() == [({"p": 1},), (text,)]
        conn.rollback()
    assert "internal server error" not in server.log()


def test_admin_arguments_must_not_be_json(server: ServerProcess) -> None:
    with server.connect() as conn:
        for args in ({"name": casemate.Json(["x"])}, {"name": {"a": 1}},
                     {"name": "g", "privileges": [casemate.Json("SELECT")]}):
            with pytest.raises(casemate.ProgrammingError) as e:
                conn.admin("group_add", **args)
            assert "must be text, a number or a list, not JSON" in e.value.message
        assert all("Json" not in str(r) for r in conn.admin("group_list"))


def test_a_map_of_colliding_keys_is_refused_on_either_backend(server: ServerProcess) -> None:
    # The defence sits in the protocol decoder, before any backend: tried live on both.
    from tests.security.test_decoding_costs import colliding_keys_attack
    from tests.security.test_redteam_today import raw

    sock, proto = raw(server)
    try:
        colliding_keys_attack(server, sock, proto)
    finally:
        sock.close()
