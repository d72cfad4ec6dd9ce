"""One behavioural suite, run on the blocking (DB-API) and the asyncio client.

Both clients share their logic (casemate.client.core); each test here runs on both
through a thin adapter that awaits the asyncio client's coroutines, so a difference
between the two clients is a test failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import casemate
import casemate.aio
from casemate.testing import ServerProcess

ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


class Synced:
    """An asyncio connection or cursor, used as if blocking: coroutines run to the end."""

    def __init__(self, obj: Any, runner: asyncio.Runner) -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_runner", runner)

    def _wrap(self, value: Any) -> Any:
        if inspect.iscoroutine(value):
            value = self._runner.run(value)
        if isinstance(value, (casemate.aio.AsyncConnection, casemate.aio.AsyncCursor)):
            return Synced(value, self._runner)
        return value

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._obj, name)
        if not callable(value):
            return value
        return lambda *a, **k: self._wrap(value(*a, **k))

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "autocommit":  # the DB-API setter's rule: switching on commits first
            self._runner.run(self._obj.set_autocommit(value))
        else:
            setattr(self._obj, name, value)

    def __iter__(self) -> Iterator[Any]:
        it = self._obj.__aiter__()

        async def step() -> Any:
            return await it.__anext__()
        while True:
            try:
                yield self._runner.run(step())
            except StopAsyncIteration:
                return

    def execute(self, sql: str, params: Any = None) -> Any:
        """The DB-API's Connection.execute: a new cursor, executed (aio's returns a status)."""
        if isinstance(self._obj, casemate.aio.AsyncConnection):
            cur = self.cursor()
            cur.execute(sql, params)
            return cur
        return self._wrap(self._obj.execute(sql, params))


class Client:
    """Opens connections of one kind and says how to cancel from elsewhere."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.runner = asyncio.Runner(debug=True) if kind == "aio" else None

    def connect(self, url: str, **kw: Any) -> Any:
        if self.runner is None:
            return casemate.connect(url, **kw)
        return Synced(self.runner.run(casemate.aio.connect(url, **kw)), self.runner)

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` after ``delay`` while this client waits (another thread, or task)."""
        if self.runner is None:
            import threading
            threading.Timer(delay, fn).start()
        else:
            self.runner.get_loop().call_later(delay, fn)

    def resumed(self, conn: Any) -> bool:
        """Whether the connection's TLS handshake resumed an earlier session."""
        if self.runner is None:
            return bool(conn._chan.sock.session_reused)
        return bool(conn._obj._writer.get_extra_info("ssl_object").session_reused)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()


@pytest.fixture(params=["blocking", "aio"])
def client(request: pytest.FixtureRequest) -> Iterator[Client]:
    c = Client(request.param)
    yield c
    c.close()


def _table(conn: Any, n: int) -> None:
    cur = conn.cursor()
    cur.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    cur.executemany("INSERT INTO t (v) VALUES (?)", [(f"v{i}",) for i in range(n)])
    assert cur.rowcount == n
    assert cur.lastrowid is None  # not the previous statement's
    conn.commit()


@pytest.mark.parametrize("fixture", ["plain_server", "tls_server"])
def test_connect_and_security(client: Client, request: pytest.FixtureRequest,
                              fixture: str) -> None:
    server: ServerProcess = request.getfixturevalue(fixture)
    conn = client.connect(server.url)
    assert conn.security.encrypted == (fixture == "tls_server")
    assert conn.security.level == ("encrypted-unverified" if fixture == "tls_server"
                                   else "plain")
    assert not conn.closed
    conn.close()
    assert conn.closed
    if client.runner is None:  # PEP 249: using a closed connection, closing too, raises
        with pytest.raises(casemate.InterfaceError, match="already closed"):
            conn.close()
    else:
        conn.close()  # asyncpg's close() may be called twice


def test_tls_session_resumed(client: Client, tls_server: ServerProcess) -> None:
    """The second connect to a server resumes the first's TLS session (a cheaper
    handshake), and still checks the key and binds the login to the channel."""
    first = client.connect(tls_server.url)
    assert not client.resumed(first)
    second = client.connect(tls_server.url)
    assert client.resumed(second)
    assert second.security.level == "encrypted-verified"  # pinned by the first login
    assert second.execute("SELECT 1").fetchall() == [(1,)]
    first.close()
    second.close()


def test_tls_fallback_note(client: Client, plain_server: ServerProcess) -> None:
    """A plaintext server: TLS is tried first, and why it failed is kept."""
    conn = client.connect(plain_server.url)
    assert conn.security.tls_failure
    assert "TLS failed" in conn.security.fallback_note
    conn.close()


def test_fetch_methods_across_batches(client: Client, plain_server: ServerProcess) -> None:
    conn = client.connect(plain_server.url)
    _table(conn, 5000)
    cur = conn.cursor()
    cur.execute("SELECT id, v FROM t ORDER BY id")
    assert cur.fetchone() == (1, "v0")
    assert cur.fetchmany() == [(2, "v1")]  # arraysize 1
    assert cur.fetchmany(3) == [(3, "v2"), (4, "v3"), (5, "v4")]
    rest = cur.fetchall()
    assert len(rest) == 4995 and rest[-1] == (5000, "v4999")
    assert cur.fetchone() is None and cur.fetchall() == [] and cur.fetchmany(5) == []
    cur.execute("SELECT id FROM t ORDER BY id")
    assert [r[0] for r in cur] == list(range(1, 5001))
    cur.arraysize = 3000  # a larger batch than the default
    cur.execute("SELECT id FROM t ORDER BY id")
    assert len(cur.fetchmany()) == 3000
    cur.execute("SELECT 1")  # a result left open is dropped
    assert cur.fetchall() == [(1,)]
    cur.close()
    conn.close()


def test_description_rowcount_lastrowid(client: Client, plain_server: ServerProcess) -> None:
    conn = client.connect(plain_server.url)
    _table(conn, 3)
    cur = conn.cursor()
    cur.execute("SELECT id, v FROM t WHERE id < 0")
    assert [d[:2] for d in cur.description] == [("id", "integer"), ("v", "text")]
    assert cur.fetchall() == []
    cur.execute("UPDATE t SET v = 'x' WHERE id >= ?", (2,))
    assert cur.description is None and cur.rowcount == 2
    cur.execute("INSERT INTO t (v) VALUES (?)", ("new",))
    assert cur.rowcount == 1 and cur.lastrowid == 4
    cur.close()
    assert cur.rowcount == 1 and cur.lastrowid == 4  # still readable, as in sqlite3
    conn.rollback()
    conn.close()


def test_fetch_without_result_set_raises(client: Client, plain_server: ServerProcess) -> None:
    conn = client.connect(plain_server.url)
    cur = conn.cursor()
    cur.execute("CREATE TABLE t (a)")
    with pytest.raises(casemate.ProgrammingError):
        cur.fetchone()
    with pytest.raises(casemate.ProgrammingError):
        cur.fetchall()
    conn.rollback()
    conn.close()


def test_closed_cursor_and_connection(client: Client, plain_server: ServerProcess) -> None:
    conn = client.connect(plain_server.url)
    cur = conn.cursor()
    cur.close()
    with pytest.raises(casemate.InterfaceError):
        cur.execute("SELECT 1")
    conn.close()
    with pytest.raises(casemate.InterfaceError):
        conn.cursor().execute("SELECT 1")


def test_errors_and_codes(client: Client, plain_server: ServerProcess) -> None:
    conn = client.connect(plain_server.url)
    cur = conn.cursor()
    with pytest.raises(casemate.ProgrammingError) as e:
        cur.execute("SELEC 1")
    assert e.value.code == "42601"
    with pytest.raises(casemate.ProgrammingError):
        cur.execute("SELECT ?", {"a": 1})
    cur.execute("SELECT 1")  # the session carries on
    assert cur.fetchall() == [(1,)]
    conn.close()
    with pytest.raises(casemate.OperationalError) as e2:
        client.connect(plain_server.url.replace("admin-secret-pw", "wrong"))
    assert e2.value.code == "28P01"


def test_commit_rollback(client: Client, plain_server: ServerProcess) -> None:
    conn = client.connect(plain_server.url)
    other = client.connect(plain_server.url)
    _table(conn, 2)
    assert not conn.in_transaction
    conn.execute("DELETE FROM t")
    assert conn.in_transaction
    conn.rollback()
    assert not conn.in_transaction
    conn.execute("INSERT INTO t (v) VALUES ('c')")
    assert other.execute("SELECT count(*) FROM t").fetchall() == [(2,)]
    other.rollback()  # (its snapshot ends)
    conn.commit()
    assert other.execute("SELECT count(*) FROM t").fetchall() == [(3,)]
    other.rollback()
    conn.close()
    other.close()


def test_autocommit(client: Client, plain_server: ServerProcess) -> None:
    conn = client.connect(plain_server.url)
    other = client.connect(plain_server.url)
    _table(conn, 0)
    conn.execute("INSERT INTO t (v) VALUES ('a')")
    conn.autocommit = True  # commits the open transaction first
    assert conn.autocommit and not conn.in_transaction
    conn.execute("INSERT INTO t (v) VALUES ('b')")
    assert not conn.in_transaction
    assert other.execute("SELECT count(*) FROM t").fetchall() == [(2,)]
    other.rollback()
    conn.close()
    other.close()


def test_cancel(client: Client, plain_server: ServerProcess) -> None:
    conn = client.connect(plain_server.url)
    conn.cancel()  # nothing running: nothing happens
    client.later(0.3, conn.cancel)
    with pytest.raises(casemate.OperationalError) as e:
        conn.execute(ENDLESS).fetchall()
    assert e.value.code == "57014"
    assert conn.execute("SELECT 2").fetchall() == [(2,)]  # the session carries on
    conn.close()


def test_cannot_connect_says_why(client: Client, plain_server: ServerProcess) -> None:
    """The same words and hint from both clients (the asyncio client had its own)."""
    url = plain_server.url.replace(f":{plain_server.port}", ":1")
    with pytest.raises(casemate.OperationalError) as e:
        client.connect(url, connect_timeout=5)
    assert e.value.code == "08001"
    assert "casemate serve" in (e.value.hint or "")


def test_encryption_required_refuses_plaintext(client: Client,
                                               plain_server: ServerProcess) -> None:
    with pytest.raises(casemate.SecurityError) as e:
        client.connect(plain_server.url, encryption="required")
    assert e.value.code == "08P03"
    assert "did not complete a TLS handshake" in e.value.message


def test_resumable_session_does_not_pass_a_mitm(client: Client, tls_server: ServerProcess,
                                                tmp_path: Path) -> None:
    """With a session to resume from the honest path, an interceptor still cannot take the
    connection: the session is offered, the attacker cannot resume it, its key is refused."""
    from tests.security.relay import Relay, mitm_server_context
    with Relay(tls_server.port) as relay:
        url = relay.url(tls_server.password)
        client.connect(url).close()  # the key is pinned, a session kept for the relay's port
        conn = client.connect(url)
        assert client.resumed(conn)
        conn.close()
        relay.wait_idle()
        relay.mitm_context = mitm_server_context(tmp_path / "mitm")
        relay.mode = "mitm"
        n = len(relay.flows)
        with pytest.raises(casemate.SecurityError) as e:
            client.connect(url)
        assert e.value.code == "08P03" and "different key" in e.value.message
        relay.wait_idle()
        attacked = relay.flows[n:]
        assert attacked and all(bytes(f.c2s) == b"" for f in attacked)  # nothing was sent


def _kill_after_prefetch(client: Client, server: ServerProcess, autocommit: bool) -> tuple[Any, Any]:
    """A connection reading a long result when its server dies just after the next batch
    arrived (so it is sending the FETCH after that which fails)."""
    conn = client.connect(server.url)
    conn.autocommit = autocommit
    cur = conn.cursor()
    cur.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                "WHERE x < 1000000) SELECT x FROM c")
    assert [cur.fetchone()[0] for _ in range(10_000)] == list(range(1, 10_001))
    time.sleep(0.3)  # the prefetched batch is here
    server.kill()
    return conn, cur


def test_rows_that_arrived_before_the_server_died_come_before_the_error(
        client: Client, plain_server: ServerProcess) -> None:
    # Sending the FETCH after the last batch that arrived failed: the error was raised
    # with those rows still buffered, and the next fetchone() returned them as if nothing
    # had happened (found by a flaky test).  In autocommit (no transaction to lose) the
    # rows come first, in order, then the lost connection at every call.
    conn, cur = _kill_after_prefetch(client, plain_server, autocommit=True)
    seen: list[int] = []
    with pytest.raises(casemate.OperationalError) as e:
        for row in cur:
            seen.append(row[0])
    # 08007 when the FETCH had gone out before the loss was seen (an autocommit
    # statement's FETCH may commit): the asyncio client's write does not fail at once.
    assert e.value.code in ("08006", "08007"), e.value
    assert seen and seen == list(range(10_001, 10_001 + len(seen)))  # no gap, no repeat
    assert len(seen) < 1_000_000 - 10_000  # (not the whole result)
    for _ in range(2):  # every later call reports the same loss (both clients)
        with pytest.raises(casemate.OperationalError) as again:
            cur.fetchone()
        assert again.value.code == e.value.code
    with contextlib.suppress(casemate.Error):
        conn.close()


def test_a_lost_transaction_is_reported_before_any_row_after_it(
        client: Client, make_db: Any, server_factory: Any) -> None:
    # Found by attack: with the rows read first, the "transaction rolled back" report
    # waited behind them, and a commit() in between went to a new session (the server
    # restarted, reconnect on) and returned OK with the INSERT gone.
    db = make_db()
    server = server_factory(db)
    setup = client.connect(server.url)
    setup.autocommit = True
    setup.cursor().execute("CREATE TABLE t (x INTEGER)")
    setup.close()
    conn = client.connect(server.url, reconnect_attempts=3)
    conn.autocommit = False
    conn.cursor().execute("INSERT INTO t VALUES (1)")
    cur = conn.cursor()
    cur.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                "WHERE x < 1000000) SELECT x FROM c")
    assert [cur.fetchone()[0] for _ in range(10_000)] == list(range(1, 10_001))
    time.sleep(0.3)
    port = server.port
    server.kill()
    again = ServerProcess(db, port=port).start()
    try:
        seen: list[int] = []
        with pytest.raises(casemate.OperationalError) as e:
            for _ in range(1_000_000):  # the rows that arrived before the loss was known
                seen.append(cur.fetchone()[0])
        assert seen == list(range(10_001, 10_001 + len(seen)))
        assert e.value.code == "08006" and "rolled back" in e.value.message
        with pytest.raises(casemate.OperationalError):
            cur.fetchone()  # no row of the lost transaction's result after that
        with pytest.raises(casemate.OperationalError):
            conn.commit()  # never "committed" on a new session
        check = client.connect(again.url)
        rows = check.execute("SELECT count(*) FROM t").fetchall()
        assert rows == [(0,)]  # the INSERT went with the transaction, as reported
        check.close()
    finally:
        with contextlib.suppress(casemate.Error):
            conn.close()
        again.stop()
