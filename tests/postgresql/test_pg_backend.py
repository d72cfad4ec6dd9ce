"""Two Casemate servers over one real PostgreSQL (Debian's, started on loopback by the test)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import casemate
from casemate.pgtest import PostgresServer, PostgresUnavailable, postgres_bin
from casemate.storage.postgresql import translate_qmarks
from casemate.testing import ServerProcess
from tests.conftest import set_setting

PW = "admin-pg-pw"


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    try:
        postgres_bin()
    except PostgresUnavailable as e:
        pytest.skip(str(e))
    server = PostgresServer(ssl=True).start()
    yield server
    server.stop()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "casemate", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def pair(pg: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[
        ServerProcess, ServerProcess]]:
    base = tmp_path_factory.mktemp("pg")
    os.environ["CASEMATE_PG_PASSWORD"] = pg.password
    dsn = pg.dsn("require").replace(f" password={pg.password}", "")
    for name in ("a", "b"):
        r = cli("init", str(base / name), "--storage", "postgresql", "--dsn", dsn,
                "--admin-password", PW)
        assert r.returncode == 0, r.stderr
    assert "password" not in (base / "a" / "casemate.toml").read_text().split("dsn = ")[1
                                                                              ].split("\n")[0]
    set_setting(base / "b", "encrypt_client_server_connections", "true")
    a = ServerProcess(base / "a", password=PW).start()
    b = ServerProcess(base / "b", password=PW).start()
    yield a, b
    a.stop()
    b.stop()


def test_qmark_translation() -> None:
    assert translate_qmarks("SELECT ? , '?' , \"a?\" -- ?\n, $$?$$, $t$?$t$, 10 % 3 /* ? */") == (
        "SELECT %s , '?' , \"a?\" -- ?\n, $$?$$, $t$?$t$, 10 %% 3 /* ? */")


def test_row_committed_through_one_is_read_through_the_other(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    with a.connect() as ca, b.connect() as cb:
        assert not ca.security.encrypted and cb.security.encrypted  # same data, both modes
        ca.execute("CREATE TABLE shared (id serial PRIMARY KEY, note text)")
        ca.commit()
        ca.execute("INSERT INTO shared (note) VALUES (?)", ("from a",))
        assert cb.execute("SELECT count(*) FROM shared").fetchone() == (0,)  # not committed
        cb.commit()
        ca.commit()
        assert cb.execute("SELECT note FROM shared").fetchall() == [("from a",)]
        cb.commit()


def test_user_added_through_one_logs_in_through_the_other(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    r = cli("user", "add", str(a.db), "carol", "--group", "readwrite", "--password", "carol-pw")
    assert r.returncode == 0, r.stderr
    with casemate.connect(b.url.replace(f"admin:{PW}", "carol:carol-pw")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(casemate.OperationalError) as e:
        casemate.connect(b.url.replace(f"admin:{PW}", "carol:wrong"))
    assert e.value.code == "28P01"


def test_grants_hold_on_both_servers(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    with a.connect() as ca:
        ca.execute("CREATE TABLE ledger (id serial PRIMARY KEY, amount integer)")
        ca.execute("CREATE TABLE payroll (id serial PRIMARY KEY, salary integer)")
        ca.execute("INSERT INTO ledger (amount) VALUES (10)")
        ca.commit()
        assert cli("group", "add", str(a.db), "auditors").returncode == 0
        ca.admin("grant", group="auditors", table="ledger", privileges=["SELECT"])
    assert cli("user", "add", str(b.db), "dave", "--group", "auditors", "--password",
               "dave-pw").returncode == 0
    for server in (a, b):
        with casemate.connect(server.url.replace(f"admin:{PW}", "dave:dave-pw")) as conn:
            assert conn.execute("SELECT sum(amount) FROM ledger").fetchone() == (10,)
            conn.commit()
            for sql in ("DELETE FROM ledger", "SELECT * FROM payroll",
                        "SELECT * FROM casemate.users"):
                with pytest.raises(casemate.ProgrammingError) as e:
                    conn.execute(sql)
                assert e.value.code == "42501", sql
                conn.rollback()


def test_dbapi_behaviour_on_postgresql(pair) -> None:  # type: ignore[no-untyped-def]
    a, _ = pair
    with a.connect() as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE items (id integer PRIMARY KEY, name text)")
        cur.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"n{i}") for i in range(100)])
        assert cur.rowcount == 100
        cur.execute("UPDATE items SET name = name || '!' WHERE id < ?", (10,))
        assert cur.rowcount == 10
        cur.execute("SELECT id, name FROM items ORDER BY id")
        assert [d[0] for d in cur.description] == ["id", "name"]
        assert cur.fetchmany(3) == [(0, "n0!"), (1, "n1!"), (2, "n2!")]
        conn.rollback()
        with pytest.raises(casemate.ProgrammingError) as e:
            cur.execute("SELEC 1")
        assert e.value.code == "42601"
        conn.rollback()
        cur.execute("CREATE TABLE u (k integer PRIMARY KEY)")
        cur.execute("INSERT INTO u VALUES (1)")
        with pytest.raises(casemate.IntegrityError) as e2:
            cur.execute("INSERT INTO u VALUES (1)")
        assert e2.value.code == "23505"
        conn.rollback()


def test_large_result_streams_in_bounded_memory(pair) -> None:  # type: ignore[no-untyped-def]
    a, _ = pair
    srv = psutil.Process(a.pid)
    with a.connect() as conn:
        cur = conn.cursor()
        cur.execute("SELECT g, repeat('x', 50) FROM generate_series(1, 200000) g")
        base = srv.memory_info().rss
        n = peak = 0
        for _row in cur:
            n += 1
            if n % 20000 == 0:
                peak = max(peak, srv.memory_info().rss - base)
        assert n == 200_000
        assert peak < 10_000_000, peak  # the result is ~15 MB: the server never holds it whole
        conn.commit()


def test_init_errors_are_clear(pg: PostgresServer, tmp_path: Path) -> None:
    bad_port = pg.dsn("disable").replace(f"port={pg.port}", "port=1").replace(
        f" password={pg.password}", "")
    r = cli("init", str(tmp_path / "x"), "--storage", "postgresql", "--dsn", bad_port)
    assert r.returncode != 0 and "cannot connect to PostgreSQL" in r.stderr
    good = pg.dsn("disable").replace(f" password={pg.password}", "")
    r = cli("init", str(tmp_path / "y"), "--storage", "postgresql", "--dsn", good,
            env={"CASEMATE_PG_PASSWORD": "wrong"})
    assert r.returncode != 0 and "password authentication failed" in r.stderr
    import psycopg
    with psycopg.connect(pg.dsn("disable"), autocommit=True) as conn:
        conn.execute("CREATE ROLE weak LOGIN PASSWORD 'weak-pw'")
        conn.execute("CREATE DATABASE weakdb")
    weak = good.replace("user=postgres", "user=weak").replace("dbname=postgres",
                                                              "dbname=weakdb")
    r = cli("init", str(tmp_path / "z"), "--storage", "postgresql", "--dsn", weak,
            env={"CASEMATE_PG_PASSWORD": "weak-pw"})
    assert r.returncode != 0 and "lacks rights" in r.stderr, r.stderr


def test_scaleout_bench_quick(pg: PostgresServer) -> None:  # the module fixture checks PostgreSQL
    from bench.pg_scaleout import main
    out = main(["--quick"])
    assert out["one"] > 0 and out["two"] > 0
