"""A connection lost between sending a commit and reading its reply (issue 14, item 9).

A relay between client and server keeps back the server's reply; once the server has
answered (so it has committed), the server is killed with SIGKILL and the client's
connection closed.  The client must report ``08007`` (outcome unknown), never "rolled
back", for every request that commits: COMMIT, an autocommit statement, executemany in
autocommit, a server method call in autocommit, a COMMIT statement; with both clients.
After the restart the row is there.  A statement inside a transaction that is cut the
same way is still reported as rolled back (``08006``), and its row is absent.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import casemate
import casemate.aio
from casemate.errors import Codes
from casemate.testing import ADMIN_PASSWORD, ServerProcess
from tests.security.relay import Relay

METHODS = '''\
from casemate.methods import method


@method
def add(db, v: int) -> None:
    db.execute("INSERT INTO t (v) VALUES (?)", (v,))
'''

# name -> (autocommit, statements before the cut, the request that is cut)
Op = tuple[bool, list[str], Callable[[Any], Any]]
OPS: dict[str, Op] = {
    "commit": (False, ["INSERT INTO t (v) VALUES (1)"], lambda c: c.commit()),
    "autocommit": (True, [], lambda c: c.execute("INSERT INTO t (v) VALUES (1)")),
    "executemany": (True, [],
                    lambda c: c.cursor().executemany("INSERT INTO t (v) VALUES (?)", [(1,)])),
    "method": (True, [], lambda c: c.call("add", 1)),
    "sql_commit": (False, ["INSERT INTO t (v) VALUES (1)"],
                   lambda c: c.execute("/* done */ COMMIT")),
}


class Crash:
    """A server behind a relay, killed after it answered the held request."""

    def __init__(self, make_db: Any, server_factory: Any) -> None:
        self.db: Path = make_db()
        (self.db / "Methods").mkdir(exist_ok=True)
        (self.db / "Methods" / "crash.py").write_text(METHODS)
        self.start = server_factory
        self.server: ServerProcess = server_factory(self.db)
        with self.server.connect() as setup:
            setup.execute("CREATE TABLE t (v INTEGER)")
        self.relay = Relay(self.server.port)
        self.url = self.relay.url(ADMIN_PASSWORD)

    def arm(self) -> threading.Thread:
        """From now on the server's replies are held; once one arrives, kill -9 the server
        and close the client's connection."""
        self.relay.hold_replies = True

        def killer() -> None:
            deadline = time.monotonic() + 20
            while not any(f.held for f in self.relay.flows) and time.monotonic() < deadline:
                time.sleep(0.01)
            self.server.kill()
            for f in self.relay.flows:
                f.cut.set()
        t = threading.Thread(target=killer, daemon=True)
        t.start()
        return t

    def rows_after_restart(self) -> list[tuple[Any, ...]]:
        self.server = self.start(self.db, port=self.server.port)
        with self.server.connect() as conn:
            return conn.execute("SELECT v FROM t").fetchall()


@pytest.fixture
def crash(make_db, server_factory) -> Iterator[Crash]:  # type: ignore[no-untyped-def]
    c = Crash(make_db, server_factory)
    yield c
    c.relay.close()


def _check_unknown(err: casemate.OperationalError) -> None:
    assert err.code == Codes.TRANSACTION_RESOLUTION_UNKNOWN, err
    assert "cannot know whether it was committed" in err.message
    assert "rolled back" not in err.message


@pytest.mark.parametrize("name", list(OPS))
def test_blocking_commit_cut_by_a_crash_is_unknown(crash: Crash, name: str) -> None:
    autocommit, before, cut = OPS[name]
    conn = casemate.connect(crash.url, reconnect_attempts=0)
    try:
        conn.autocommit = autocommit
        for sql in before:
            conn.execute(sql)
        killer = crash.arm()
        with pytest.raises(casemate.OperationalError) as info:
            cut(conn)
        killer.join(30)
        _check_unknown(info.value)
        with pytest.raises(casemate.OperationalError):  # no silent reconnect, no replay
            conn.commit()
            conn.execute("SELECT 1")
    finally:
        conn.close()
    assert crash.rows_after_restart() == [(1,)]  # it had been committed after all


@pytest.mark.parametrize("name", list(OPS))
def test_asyncio_commit_cut_by_a_crash_is_unknown(crash: Crash, name: str) -> None:
    autocommit, before, cut = OPS[name]

    async def main() -> casemate.OperationalError:
        conn = await casemate.aio.connect(crash.url)
        try:
            conn.autocommit = autocommit
            for sql in before:
                await conn.execute(sql)
            killer = crash.arm()
            with pytest.raises(casemate.OperationalError) as info:
                await cut(conn)
            await asyncio.to_thread(killer.join, 30)
            return info.value
        finally:
            await conn.close()
    _check_unknown(asyncio.run(main()))
    assert crash.rows_after_restart() == [(1,)]


def test_statement_cut_inside_a_transaction_is_rolled_back(crash: Crash) -> None:
    """No commit in flight: the rollback is certain, and said (08006)."""
    conn = casemate.connect(crash.url, reconnect_attempts=0)
    try:
        conn.execute("INSERT INTO t (v) VALUES (1)")
        killer = crash.arm()
        with pytest.raises(casemate.OperationalError) as info:
            conn.execute("INSERT INTO t (v) VALUES (2)")
        killer.join(30)
        assert info.value.code == Codes.CONNECTION_FAILURE
        assert "nothing of it was committed" in info.value.message
    finally:
        conn.close()
    assert crash.rows_after_restart() == []


def test_asyncio_pipelined_requests_behind_a_commit_all_get_unknown(crash: Crash) -> None:
    """Two tasks share a connection: a COMMIT and a SELECT in flight together.  Neither may
    hear "rolled back"."""

    async def main() -> list[BaseException]:
        conn = await casemate.aio.connect(crash.url)
        try:
            await conn.execute("INSERT INTO t (v) VALUES (1)")
            killer = crash.arm()
            results = await asyncio.gather(conn.commit(), conn.fetch("SELECT count(*) FROM t"),
                                           return_exceptions=True)
            await asyncio.to_thread(killer.join, 30)
            return [r for r in results if isinstance(r, BaseException)]
        finally:
            await conn.close()
    errors = asyncio.run(main())
    assert len(errors) == 2
    for err in errors:
        assert isinstance(err, casemate.OperationalError)
        _check_unknown(err)
    assert crash.rows_after_restart() == [(1,)]


def test_sqlalchemy_treats_unknown_outcome_as_a_disconnect() -> None:
    pytest.importorskip("sqlalchemy")
    from casemate.sqlalchemy import CasemateDialect
    err = casemate.OperationalError("lost", Codes.TRANSACTION_RESOLUTION_UNKNOWN)
    assert CasemateDialect().is_disconnect(err, None, None)


@pytest.mark.parametrize(("begin", "code"), [
    (False, Codes.TRANSACTION_RESOLUTION_UNKNOWN),  # the autocommit statement ends with it
    (True, Codes.CONNECTION_FAILURE),  # inside a transaction: a fetch commits nothing
])
def test_fetch_of_a_suspended_result_is_judged_by_its_statement(begin: bool, code: str) -> None:
    """Sans I/O: the client core remembers which suspended results run in autocommit."""
    from casemate.client.core import ClientCore, ExecRequest
    from casemate.protocol import Message, Msg
    core = ClientCore.new()

    def sent(msg: Msg, body: Any) -> ExecRequest:  # as ClientCore.request queues it
        req = ExecRequest(lambda rows: None)
        req.sent = (msg, body)
        core.pending.append(req)
        return req
    first = sent(Msg.QUERY, (7, "INSERT INTO t SELECT ... RETURNING v", (), begin, 10))
    core.dispatch(Message(Msg.DESCRIPTION, [("v", "integer")]))
    core.dispatch(Message(Msg.SUSPENDED, None))
    assert first.done and first.suspended
    assert core.lost_error("idle").code == Codes.CONNECTION_FAILURE  # nothing in flight
    sent(Msg.FETCH, (7, 10))
    assert core.lost_error("cut").code == code


BIG_SELECT = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<50000) "
              "SELECT x FROM c")


def _server_in_transaction(conn: casemate.Connection) -> bool:
    columns, rows = conn.admin_table("sessions")
    return bool(rows[0][columns.index("in_transaction")])


def test_streamed_read_opens_a_transaction_the_client_knows_of(plain_server: ServerProcess
                                                               ) -> None:
    """SUSPENDED does not carry the transaction state: the client must not conclude 'no
    transaction' (then commit() did nothing, and a loss was not reported as a rollback)."""
    with plain_server.connect() as conn:
        cur = conn.cursor()
        cur.execute(BIG_SELECT)  # suspended after the first batch, inside a transaction
        assert cur.fetchone() == (1,)
        assert conn.in_transaction
        conn.commit()
        assert not conn.in_transaction and not _server_in_transaction(conn)
        conn.autocommit = True
        cur.execute(BIG_SELECT)  # autocommit: no transaction
        assert not conn.in_transaction
        cur.close()


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("use_aio", [False, True], ids=["blocking", "asyncio"])
def test_commit_after_the_server_went_away_while_idle_is_a_known_rollback(
        make_db, server_factory, use_aio: bool, encrypted: bool) -> None:  # type: ignore[no-untyped-def]
    """The server stopped while the transaction sat idle: commit() is never sent, so the
    client knows the transaction was rolled back (08006), with the server's reason."""
    db = make_db(encrypted=encrypted)
    server = server_factory(db)
    with server.connect() as setup:
        setup.execute("CREATE TABLE t (v INTEGER)")

    async def aio_commit() -> None:
        conn = await casemate.aio.connect(server.url)
        try:
            await conn.execute("INSERT INTO t (v) VALUES (1)")
            server.stop()
            await asyncio.sleep(0.2)  # the transaction sits idle: the loop sees the close
            await conn.commit()
        finally:
            await conn.close()

    def blocking_commit() -> None:
        with casemate.connect(server.url, reconnect_attempts=0) as conn:
            conn.execute("INSERT INTO t (v) VALUES (1)")
            server.stop()
            conn.commit()

    with pytest.raises(casemate.OperationalError) as info:
        asyncio.run(aio_commit()) if use_aio else blocking_commit()
    assert info.value.code == Codes.CONNECTION_FAILURE, info.value
    assert "nothing of it was committed" in info.value.message
    assert "server is shutting down" in info.value.message
