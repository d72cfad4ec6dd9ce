"""Server methods against a real server process (issue 9).

One module-scoped server (plain, ``methods.time_limit_seconds = 1``) whose
``Methods/shop.py`` is written before it starts.  Covers: the caller's
transaction (rollback/commit/autocommit), EXECUTE grants per group, the
caller's table rights inside a method, argument checking, raising methods,
the time limit while another session works, streaming in bounded memory,
the loader (syntax/import errors stop the start with file:line), ``casemate
methods DIR`` and the asyncio client.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import casemate
import casemate.aio
from casemate.database import make_verifier
from tests.conftest import ADMIN_PASSWORD, ServerProcess, set_setting

SHOP = '''\
"""Methods of the test shop."""

import time
from decimal import Decimal

from casemate.methods import Rows, RowStream, method


class OutOfStock(Exception):
    pass


@method
def add_item(db, name: str, qty: int = 1) -> int:
    """Insert an item; returns its id."""
    return db.execute("INSERT INTO items (name, qty) VALUES (?, ?)", (name, qty)).lastrowid


@method
def restock(db, name: str, qty: int) -> list:
    """Read and write in one call: returns [rows seen before, total qty after]."""
    before = db.execute("SELECT count(*) FROM items").fetchone()[0]
    db.execute("INSERT INTO items (name, qty) VALUES (?, ?)", (name, qty))
    return [before, db.execute("SELECT sum(qty) FROM items").fetchone()[0]]


@method
def count_items(db) -> int:
    return db.execute("SELECT count(*) FROM items").fetchone()[0]


@method
def whoami(db) -> str:
    return f"{db.user}/{db.group}"


@method
def read_secret(db) -> list:
    return db.execute("SELECT code FROM secret").fetchall()


@method
def price(db, amount: Decimal, ratio: float, note: str | None = None) -> Decimal:
    return amount * Decimal(str(ratio))


@method
def sell(db, name: str) -> None:
    db.execute("INSERT INTO items (name, qty) VALUES (?, -1)", (name,))
    raise OutOfStock(f"no more {name}")


@method
def spin(db, tag: str) -> None:
    db.execute("INSERT INTO items (name, qty) VALUES (?, 0)", (tag,))
    while True:
        pass


@method
def nap(db, tag: str) -> None:
    db.execute("INSERT INTO items (name, qty) VALUES (?, 0)", (tag,))
    while True:
        time.sleep(0.05)


@method
def heavy(db, tag: str) -> int:
    db.execute("INSERT INTO items (name, qty) VALUES (?, 0)", (tag,))
    return db.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                      "SELECT count(*) FROM c").fetchone()[0]


@method
def numbers(db, n: int) -> Rows:
    """Stream n rows of about 110 bytes from a recursive CTE."""
    return db.rows("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
                   "SELECT x AS n, printf('%0100d', x) AS pad FROM c", (n,))


@method
def generated(db, n: int) -> Rows:
    def gen():
        for i in range(1, n + 1):
            yield (i, "g" * 100)
    return RowStream(gen(), ["n", "pad"])


@method
def commit_inside(db, tag: str) -> int:
    db.execute("INSERT INTO items (name, qty) VALUES (?, 0)", (tag,))
    db.execute("COMMIT")
    return 1


@method
def fails_mid_stream(db) -> Rows:
    def gen():
        for i in range(10_000):
            yield (i,)
        raise OutOfStock("ran dry at 10000")
    return RowStream(gen(), ["i"])
'''

USERS = {"clerk": "readwrite", "viewer": "readonly", "agent": "agents"}


def _pw(user: str) -> str:
    return f"{user}-pw-123"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from casemate.database import create_database
    db = tmp_path_factory.mktemp("methods") / "db"
    create_database(db, "methods", ADMIN_PASSWORD)
    (db / "Methods" / "shop.py").write_text(SHOP)
    set_setting(db, "time_limit_seconds", "1")
    s = ServerProcess(db).start()
    mp = pytest.MonkeyPatch()  # the per-test casemate_home is not set up yet: use our own
    mp.setenv("CASEMATE_HOME", str(db.parent / "setup-home"))
    try:
        with s.connect() as admin:
            admin.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)")
            admin.execute("CREATE TABLE secret (code TEXT)")
            admin.execute("INSERT INTO secret VALUES ('hidden')")
            admin.admin("group_add", name="agents")
            admin.admin("grant", group="agents", table="items", privileges=["SELECT"])
            for name, group in USERS.items():
                r = make_verifier(name, _pw(name), group)
                admin.admin("user_add", name=name, group=group,
                            verifier=[r.salt, r.stored_key, r.server_key, r.iterations])
        mp.undo()
        yield s
    finally:
        mp.undo()
        s.stop()


def connect(server: ServerProcess, user: str = "admin") -> casemate.Connection:
    if user == "admin":
        return server.connect()
    return casemate.connect(f"casemate://{user}:{_pw(user)}@127.0.0.1:{server.port}")


def items(server: ServerProcess, name: str) -> int:
    """Committed rows named ``name``, seen from a fresh admin session."""
    with server.connect() as c:
        return int(c.execute("SELECT count(*) FROM items WHERE name = ?",
                             (name,)).fetchone()[0])


# -- transactions ------------------------------------------------------------

def test_method_reads_and_writes_in_the_callers_transaction(server: ServerProcess) -> None:
    with connect(server) as a:
        a.execute("INSERT INTO items (name, qty) VALUES ('txn-own', 5)")
        before = a.execute("SELECT count(*) FROM items").fetchone()[0]
        seen, _total = a.call("restock", "txn-m", 2)
        assert seen == before                          # it saw the caller's uncommitted row
        assert a.in_transaction
        assert a.execute("SELECT qty FROM items WHERE name = 'txn-m'").fetchall() == [(2,)]
        assert items(server, "txn-m") == 0              # not visible to others yet
        a.rollback()                                    # undone with the caller's rollback
        assert a.execute("SELECT count(*) FROM items WHERE name LIKE 'txn-%'").fetchone()[0] == 0
        assert items(server, "txn-m") == 0 and items(server, "txn-own") == 0

        a.execute("INSERT INTO items (name, qty) VALUES ('txn-own', 5)")
        a.call("restock", "txn-m", 2)
        assert items(server, "txn-m") == 0
        a.commit()                                      # kept with the caller's commit
    assert items(server, "txn-m") == 1 and items(server, "txn-own") == 1


def test_autocommit_caller(server: ServerProcess) -> None:
    with connect(server) as a:
        a.autocommit = True
        item = a.call("add_item", "auto-1", qty=4)
        assert isinstance(item, int) and not a.in_transaction
        assert items(server, "auto-1") == 1              # committed at once
        with pytest.raises(casemate.DatabaseError) as e:
            a.call("sell", "auto-2")                     # inserts, then raises
        assert e.value.code == "P0001"
        assert not a.in_transaction
    assert items(server, "auto-2") == 0                  # the failed call left nothing


def test_method_runs_as_the_caller(server: ServerProcess) -> None:
    with server.connect() as admin:
        admin.admin("grant", group="readwrite", table="method:whoami", privileges=["EXECUTE"])
    with connect(server, "clerk") as c:
        assert c.call("whoami") == "clerk/readwrite"


# -- rights ------------------------------------------------------------------

def _grant(server: ServerProcess, group: str, method: str, verb: str = "grant") -> None:
    r = subprocess.run([sys.executable, "-m", "casemate", "group", verb, server.url, group,
                        f"method:{method}", "EXECUTE"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("user,group", [("agent", "agents"), ("clerk", "readwrite")])
def test_execute_grant_refuses_then_allows(server: ServerProcess, user: str,
                                           group: str) -> None:
    with connect(server, user) as c:
        with pytest.raises(casemate.ProgrammingError) as e:
            c.call("count_items")
        assert e.value.code == "42501"
        assert "EXECUTE on method count_items" in str(e.value)
        assert f"{group} method:count_items EXECUTE" in str(e.value)  # the hint says how
        _grant(server, group, "count_items")
        assert c.call("count_items") >= 0                     # same session, next call
        with pytest.raises(casemate.ProgrammingError) as e:   # only that method
            c.call("add_item", "x")
        assert e.value.code == "42501"
        _grant(server, group, "count_items", "revoke")
        c.rollback()                       # grants are read when a transaction starts
        with pytest.raises(casemate.ProgrammingError) as e:
            c.call("count_items")
        assert e.value.code == "42501"


def test_table_rights_apply_inside_methods(server: ServerProcess) -> None:
    with server.connect() as admin:
        for m in ("read_secret", "count_items", "add_item"):
            admin.admin("grant", group="agents", table=f"method:{m}", privileges=["EXECUTE"])
        admin.admin("grant", group="readonly", table="method:add_item", privileges=["EXECUTE"])
        assert list(admin.call("read_secret")) == [("hidden",)]  # admin may read it
    with connect(server, "agent") as agent:
        with pytest.raises(casemate.ProgrammingError) as e:
            agent.call("read_secret")                          # agents: no SELECT on secret
        assert e.value.code == "42501" and "SELECT on table secret" in str(e.value)
        assert "hidden" not in str(e.value)
        assert agent.call("count_items") >= 0                   # SELECT on items granted
        with pytest.raises(casemate.ProgrammingError) as e:
            agent.call("add_item", "agent-row")                 # but not INSERT
        assert e.value.code == "42501" and "INSERT on table items" in str(e.value)
        with pytest.raises(casemate.ProgrammingError):
            agent.execute("SELECT code FROM secret")            # same as outside a method
    with connect(server, "viewer") as viewer:
        with pytest.raises(casemate.ProgrammingError) as e:
            viewer.call("add_item", "viewer-row")
        assert e.value.code == "42501" and "INSERT on table items" in str(e.value)
    assert items(server, "agent-row") == 0 and items(server, "viewer-row") == 0


# -- arguments and errors ----------------------------------------------------

@pytest.mark.parametrize("name,args,kwargs,text", [
    ("add_item", ("x", "3"), {}, "argument 'qty' of add_item() is str, expected int"),
    ("add_item", (7,), {}, "argument 'name' of add_item() is int, expected str"),
    ("add_item", ("x", True), {}, "is bool, expected int"),
    ("price", (1.5, 2.0), {}, "argument 'amount' of price() is float, expected Decimal"),
    ("price", ("1", 2.0), {"note": 3}, "argument 'amount'"),
    ("add_item", (), {}, "missing a required argument: 'name'"),
    ("add_item", ("x", 1, 2), {}, "too many positional arguments"),
    ("add_item", ("x",), {"colour": "red"}, "unexpected keyword argument 'colour'"),
    ("count_items", (1,), {}, "too many positional arguments"),
])
def test_wrong_arguments(server: ServerProcess, name: str, args: tuple[Any, ...],
                         kwargs: dict[str, Any],
                         text: str) -> None:
    with connect(server) as c:
        with pytest.raises(casemate.ProgrammingError) as e:
            c.call(name, *args, **kwargs)
        assert e.value.code == "42804", str(e.value)
        assert text in str(e.value), str(e.value)
        assert c.call("count_items") >= 0                     # the session carries on


def test_right_arguments_convert_as_declared(server: ServerProcess) -> None:
    from decimal import Decimal
    with connect(server) as c:
        assert c.call("price", Decimal("10.00"), 2) == Decimal("20.00")   # int for float
        assert c.call("price", Decimal("1.5"), ratio=0.5, note=None) == Decimal("0.75")
        with pytest.raises(casemate.ProgrammingError) as e:
            c.call("no_such_method", 1)
        assert e.value.code == "42883" and "no_such_method" in str(e.value)


def test_raising_method_sends_type_and_message_only(server: ServerProcess) -> None:
    log_start = len(server.log())
    with connect(server) as c:
        c.execute("INSERT INTO items (name, qty) VALUES ('raise-own', 1)")
        with pytest.raises(casemate.DatabaseError) as e:
            c.call("sell", "raise-m")
        text = str(e.value)
        assert e.value.code == "P0001"
        assert "method sell() raised OutOfStock: no more raise-m" in text
        for leak in ("Traceback", "File ", "shop.py", "Methods", "line ", "/"):
            assert leak not in text, text
        # The method's insert was undone; the caller's transaction goes on.
        assert c.in_transaction
        rows = c.execute("SELECT name FROM items WHERE name LIKE 'raise-%'").fetchall()
        assert rows == [("raise-own",)]
        c.commit()
    assert items(server, "raise-own") == 1 and items(server, "raise-m") == 0
    assert "Traceback" not in server.log()[log_start:]  # not even in the server's log


# -- time limit --------------------------------------------------------------

class Prober:
    """Another session running short queries in a thread; records each one's latency."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.latencies: list[float] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        try:
            with self.server.connect() as c:
                c.autocommit = True
                while not self._stop.is_set():
                    t0 = time.perf_counter()
                    c.execute("SELECT count(*), max(id) FROM items").fetchall()
                    self.latencies.append(time.perf_counter() - t0)
                    time.sleep(0.01)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.errors.append(e)

    def __enter__(self) -> Prober:
        self._thread.start()
        while not self.latencies and not self.errors:
            time.sleep(0.01)
        self.latencies.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.parametrize("name", ["spin", "nap", "heavy"])
def test_time_limit_stops_method_while_others_work(server: ServerProcess, name: str) -> None:
    tag = f"limit-{name}"
    with connect(server) as c, Prober(server) as other:
        c.execute("INSERT INTO items (name, qty) VALUES (?, 1)", (f"{tag}-own",))
        t0 = time.perf_counter()
        with pytest.raises(casemate.OperationalError) as e:
            c.call(name, tag)
        took = time.perf_counter() - t0
        assert e.value.code == "57014", str(e.value)
        assert f"method {name}() ran over its time limit of 1 s" in str(e.value)
        assert 0.9 < took < 3, took
        # The caller's session is usable, its own write kept, the method's undone.
        assert c.in_transaction
        got = c.execute("SELECT name FROM items WHERE name LIKE ?", (f"{tag}%",)).fetchall()
        assert got == [(f"{tag}-own",)]
        assert c.call("count_items") > 0
        c.commit()
    assert not other.errors, other.errors
    # The other session kept working all along: many queries, each prompt.
    # (A spinning method competes for the GIL: a query may take ~5-60 ms meanwhile.)
    assert len(other.latencies) >= 8, len(other.latencies)
    assert max(other.latencies) < 0.3, max(other.latencies)
    assert items(server, tag) == 0 and items(server, f"{tag}-own") == 1


# -- streaming ---------------------------------------------------------------

def _rss(p: psutil.Process) -> int:
    return int(p.memory_info().rss)


@pytest.mark.parametrize("name,n", [("numbers", 500_000), ("generated", 200_000)])
def test_streaming_a_large_result_in_bounded_memory(server: ServerProcess, name: str,
                                                    n: int) -> None:
    srv, me = psutil.Process(server.pid), psutil.Process()
    with connect(server) as c:
        c.call(name, 10)                       # warm up: code paths and buffers
        base_srv, base_me = _rss(srv), _rss(me)
        cur = c.cursor()
        assert cur.callproc(name, [n]) == [n]
        assert [d[0] for d in cur.description] == ["n", "pad"]
        grow_srv = grow_me = 0
        count = 0
        for count, row in enumerate(cur, 1):
            assert row[0] == count
            if count % 25_000 == 0:
                assert len(row[1]) == 100
                grow_srv = max(grow_srv, _rss(srv) - base_srv)
                grow_me = max(grow_me, _rss(me) - base_me)
        cur.close()
        assert count == n
        assert c.call("count_items") >= 0
    payload = n * 110                          # bytes on the wire, before Python objects
    assert grow_srv < min(payload / 3, 24 << 20), (grow_srv, payload)
    assert grow_me < min(payload / 3, 24 << 20), (grow_me, payload)


def test_abandoned_stream_is_closed(server: ServerProcess) -> None:
    with connect(server) as c:
        cur = c.cursor()
        cur.callproc("numbers", [1_000_000])
        assert cur.fetchmany(3) == [(i, f"{i:0100d}") for i in (1, 2, 3)]
        cur.close()                                       # long before the end
        assert c.call("numbers", 2) == [(i, f"{i:0100d}") for i in (1, 2)]
        assert c.call("count_items") >= 0


# -- asyncio client ----------------------------------------------------------

def test_aio_call(server: ServerProcess) -> None:
    async def main() -> None:
        conn = await casemate.aio.connect(server.url)
        try:
            assert await conn.call("whoami") == "admin/admin"
            rows = await conn.call("generated", 3)
            assert [r[0] for r in rows] == [1, 2, 3]
            item = await conn.call("add_item", "aio-row", qty=2)
            assert isinstance(item, int)
            with pytest.raises(casemate.ProgrammingError) as e:
                await conn.call("add_item", 3)
            assert e.value.code == "42804"
            with pytest.raises(casemate.DatabaseError) as e2:
                await conn.call("sell", "aio-sold")
            assert e2.value.code == "P0001" and "OutOfStock" in str(e2.value)
            await conn.rollback()
        finally:
            await conn.close()
    asyncio.run(main())
    assert items(server, "aio-row") == 0


# -- once-known bugs, now fixed -------------------------------------------------

def test_method_cannot_end_the_callers_transaction(server: ServerProcess) -> None:
    with connect(server) as c:
        c.execute("INSERT INTO items (name, qty) VALUES ('commit-own', 1)")
        with pytest.raises(casemate.Error):
            c.call("commit_inside", "commit-m")
        c.rollback()
    assert items(server, "commit-own") == 0 and items(server, "commit-m") == 0


def test_method_raising_mid_stream_reports_p0001(server: ServerProcess) -> None:
    with connect(server) as c:
        cur = c.cursor()
        cur.callproc("fails_mid_stream")
        with pytest.raises(casemate.DatabaseError) as e:
            cur.fetchall()
        assert e.value.code == "P0001" and "OutOfStock: ran dry at 10000" in str(e.value)
        assert c.call("count_items") >= 0


def test_keyword_argument_called_name(server: ServerProcess) -> None:
    with connect(server) as c:
        assert isinstance(c.call("add_item", name="kw-name", qty=2), int)
        c.rollback()


# -- loading and listing -----------------------------------------------------

def _serve(db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "casemate", "serve", str(db), "--port", "0"],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("source,where,error", [
    ("import os\n\n\ndef oops(:\n    pass\n", "bad.py:4", "SyntaxError"),
    ("from casemate.methods import method\n\nX = 1\nY = X / 0\n", "bad.py:4",
     "ZeroDivisionError: division by zero"),
    ("from casemate.methods import method\n\n\n@method\ndef nodb() -> int:\n    return 1\n",
     "bad.py:4", "must take the db context"),
])
def test_a_broken_module_stops_the_start(make_db, source: str, where: str,  # type: ignore[no-untyped-def]
                                         error: str) -> None:
    db = make_db()
    (db / "Methods" / "good.py").write_text(SHOP)
    (db / "Methods" / "bad.py").write_text(source)
    r = _serve(db)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert where in out and error in out, out
    assert "listening" not in out
    assert "Traceback" not in out, out


def test_methods_listing(make_db) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    r = subprocess.run([sys.executable, "-m", "casemate", "methods", str(db)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "No server methods" in r.stdout, r.stdout + r.stderr
    (db / "Methods" / "shop.py").write_text(SHOP)
    r = subprocess.run([sys.executable, "-m", "casemate", "methods", str(db)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    lines = out.splitlines()
    assert "add_item(name: str, qty: int = 1) -> int    [shop.py:13]" in lines
    assert "    Insert an item; returns its id." in lines
    assert "numbers(n: int) -> Rows    [shop.py:74]" in lines
    assert "    Stream n rows of about 110 bytes from a recursive CTE." in lines
    assert "price(amount: decimal.Decimal, ratio: float, note: str | None = None)" in out
    assert "count_items() -> int" in out and "(no docstring)" in out
    names = [ln.split("(")[0] for ln in lines if ln and not ln.startswith(" ")]
    assert names == sorted(names) and len(names) == SHOP.count("@method")
