"""The DB-API cursor's lane (issue 16): ``Cursor.execute`` on a cursor whose last result is
complete sends its QUERY and reads the reply in one call (``Channel.exchange``), without
the general path's layers.  It must do exactly what the general path does: every script
below runs twice against the same real server, once as it is and once with the lane
declining every request (``exchange`` answering False, as it does for a channel that is
not idle and up), and what a program can see (rows, description, rowcount, lastrowid,
the transaction state, errors with their codes and messages) must be the same; a spy
shows that the lane did serve the first run."""

from __future__ import annotations

import datetime as dt
import select
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

import casemate
from casemate.client import core
from casemate.client.blocking import Channel
from casemate.protocol import Msg, encode_frame
from casemate.testing import ServerProcess

Step = tuple[Any, ...]


@pytest.fixture(params=["plain", "encrypted"])
def server(request: pytest.FixtureRequest, make_db: Any, server_factory: Any) -> ServerProcess:
    return server_factory(make_db(encrypted=request.param == "encrypted"))  # type: ignore[no-any-return]


def _error(e: BaseException) -> tuple[Any, ...]:
    return ("raised", type(e).__name__, getattr(e, "code", None), str(e))


def _seen(cur: Any, conn: Any) -> tuple[Any, ...]:
    return (cur.description, cur.rowcount, cur.lastrowid, conn.in_transaction)


def run(conn: Any, steps: list[Step]) -> list[Any]:
    """What the program sees at each step (a step's error included)."""
    cur = conn.cursor()
    out: list[Any] = []
    for step in steps:
        op, *args = step
        try:
            if op == "execute":
                cur.execute(*args)
                out.append(("ok", *_seen(cur, conn)))
            elif op == "fetchone":
                out.append(("row", cur.fetchone()))
            elif op == "fetchmany":
                out.append(("rows", cur.fetchmany(*args)))
            elif op == "fetchall":
                rows = cur.fetchall()
                out.append(("rows", len(rows), rows[:3], rows[-3:]))
            elif op == "arraysize":
                cur.arraysize = args[0]
            elif op == "close":
                cur.close()
                out.append(("closed", cur.rowcount, cur.lastrowid))
            elif op == "cursor":
                cur = conn.cursor()
            elif op == "commit":
                conn.commit()
            elif op == "rollback":
                conn.rollback()
            elif op == "autocommit":
                conn.autocommit = args[0]
            else:
                raise AssertionError(op)
        except casemate.Error as e:
            out.append(_error(e))
        out.append(("state", conn.in_transaction))
    return out


@pytest.fixture
def twins(server: ServerProcess, monkeypatch: pytest.MonkeyPatch
          ) -> Callable[[list[Step]], tuple[list[Any], int, int]]:
    """Run a script with the lane and without it (each on a new table of its own);
    return the first transcript and how many requests each run's lane served."""
    real = Channel.exchange
    served = [0]
    lane_on = [True]

    def spy(self: Channel, req: Any, msg: Any, body: Any) -> bool:
        if not lane_on[0]:
            return False
        done = None
        try:
            done = real(self, req, msg, body)
        finally:  # served: answered, or its error raised (False: declined, nothing sent)
            served[0] += done is not False
        return done
    monkeypatch.setattr(Channel, "exchange", spy)

    def both(steps: list[Step]) -> tuple[list[Any], int, int]:
        transcripts, counts = [], []
        for on in (True, False):
            lane_on[0] = on
            served[0] = 0
            with server.connect() as conn:
                for s in ("DROP TABLE IF EXISTS t", "CREATE TABLE t (id INTEGER PRIMARY KEY, "
                          "name TEXT UNIQUE, price REAL, paid DECIMAL(10, 2), day DATE)"):
                    conn.execute(s)
                conn.commit()
                served[0] = 0
                transcripts.append(run(conn, steps))
            counts.append(served[0])
        assert transcripts[0] == transcripts[1]
        return transcripts[0], counts[0], counts[1]
    return both


def test_reads_and_writes_are_the_same_on_the_lane(twins: Any) -> None:
    steps: list[Step] = [
        ("execute", "INSERT INTO t (name, price) VALUES (?, ?)", ("apple", 1.5)),
        ("execute", "INSERT INTO t (name, price, paid, day) VALUES (?, ?, ?, ?)",
         ["pear", None, Decimal("2.25"), dt.date(2026, 12, 2)]),
        ("execute", "SELECT id, name, price FROM t WHERE id = ?", (1,)),
        ("fetchone",), ("fetchone",),
        ("execute", "SELECT * FROM t ORDER BY id"), ("fetchall",),
        ("execute", "SELECT price, paid, day FROM t WHERE id = ?", (2,)),  # NULL first
        ("fetchmany", 5),
        ("execute", "SELECT * FROM t WHERE id < 0"), ("fetchone",), ("fetchall",),
        ("execute", "UPDATE t SET price = price + 1 WHERE price IS NOT NULL"),
        ("execute", "DELETE FROM t WHERE id = ?", (99,)),
        ("fetchone",),  # no result set
        ("execute", "SELECT count(*) FROM t", None), ("fetchone",),
        ("execute", "SELECT name FROM t ORDER BY id"), ("fetchone",),  # one left unread:
        ("execute", "SELECT 'new'"), ("fetchall",),  # forgotten
        ("commit",),
        ("autocommit", True),
        ("execute", "INSERT INTO t (name) VALUES ('plum')"),
        ("execute", "SELECT name FROM t ORDER BY id DESC"), ("fetchone",),
        ("execute", "CREATE INDEX t_price ON t (price)"),
        ("close",), ("execute", "SELECT 1"),  # a closed cursor
    ]
    seen, lane, general = twins(steps)
    assert ("row", (1, "apple", 1.5)) in seen
    assert ("rows", 1, [("new",)], [("new",)]) in seen
    assert ("raised", "InterfaceError", None, "cursor is closed") in seen
    assert lane == 14 and general == 0  # every statement sent (not the closed cursor's)


def test_errors_and_transactions_are_the_same_on_the_lane(twins: Any) -> None:
    steps: list[Step] = [
        ("execute", "INSERT INTO t (name) VALUES (?)", ("a",)),
        ("execute", "INSERT INTO t (name) VALUES (?)", ("a",)),  # unique: IntegrityError
        ("execute", "SELEC 1"),  # syntax
        ("execute", "SELECT * FROM nowhere"),
        ("execute", "SELECT ?", {"a": 1}),  # a dict: qmark parameters only
        ("execute", "SELECT ?", ({1: "x"},)),  # a dict with a key the server refuses
        ("execute", "SELECT ?", (object(),)),  # cannot be sent
        ("execute", "SELECT ?, ?", (1,)),  # too few parameters
        ("execute", "SELECT name FROM t"), ("fetchall",),
        ("rollback",),
        ("execute", "SELECT count(*) FROM t"), ("fetchone",),
        ("execute", "BEGIN"), ("execute", "BEGIN"),
        ("autocommit", True),
        ("execute", "INSERT INTO t (name) VALUES (?)", ("b",)),
        ("execute", "SELECT 1/0, 'x' || ?", (2,)), ("fetchone",),
    ]
    seen, lane, general = twins(steps)
    codes = [s[2] for s in seen if s[0] == "raised"]
    assert "23000" in codes and "42601" in codes and "42P01" in codes
    assert lane == 12 and general == 0  # all but the two refused before sending


def test_results_left_open_take_the_general_path_the_same(twins: Any) -> None:
    """A result over one batch stays open on the server (a portal, its next batch
    prefetched): the next execute on that cursor closes it first, on the general path."""
    steps: list[Step] = [
        ("execute", "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r "
         "WHERE i < 5000) INSERT INTO t (id, name) SELECT i, 'n' || i FROM r"),
        ("execute", "SELECT id, name FROM t ORDER BY id"),
        ("fetchmany", 3), ("fetchone",),
        ("execute", "SELECT count(*) FROM t"),  # the open result is closed first
        ("fetchone",),
        ("execute", "SELECT id FROM t ORDER BY id"), ("fetchall",),
        ("arraysize", 6000),
        ("execute", "SELECT id FROM t ORDER BY id DESC"), ("fetchmany",),
        ("cursor",),
        ("execute", "SELECT name FROM t WHERE id = ?", (4321,)), ("fetchone",),
        ("commit",),
    ]
    seen, lane, _ = twins(steps)
    assert ("rows", 5000, [(1,), (2,), (3,)], [(4998,), (4999,), (5000,)]) in seen
    assert lane == 5  # all but the one after a result left open


def test_a_dropped_idle_session_is_handled_as_the_general_path_does(
        server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server ended the idle session (here: an administrator's drop): the lane sends
    nothing (the poll saw the end) and the general path reconnects (autocommit) or
    reports the lost transaction, as before the lane."""
    served: list[bool] = []
    real = Channel.exchange

    def spy(self: Channel, req: Any, msg: Any, body: Any) -> bool:
        served.append(real(self, req, msg, body))
        return served[-1]
    monkeypatch.setattr(Channel, "exchange", spy)
    admin = server.connect()
    admin.autocommit = True

    def drop(conn: Any) -> None:
        admin.admin("drop", session=conn.session_id)
        # until the server's end of the session has reached the client (read nothing)
        assert select.select([conn._chan.sock.fileno()], [], [], 10)[0]
    with server.connect() as conn:
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("SELECT 1")
        drop(conn)
        served.clear()
        cur.execute("SELECT 2")  # reconnected
        assert cur.fetchone() == (2,) and conn.generation == 1
        assert served[0] is False
    with server.connect() as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1")  # a transaction is open
        drop(conn)
        with pytest.raises(casemate.OperationalError, match="rolled back"):
            cur.execute("SELECT 2")


def test_rows_arrive_in_batches_as_they_did(server: ServerProcess) -> None:
    """The lane's sink is the cursor's row buffer itself: iteration and fetchmany over
    several batches and over a result that ends exactly at a batch's end."""
    with server.connect() as conn:
        cur = conn.cursor()
        for n in (1999, 2000, 2001, 4000):
            cur.execute("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r "
                        "WHERE i < ?) SELECT i FROM r", (n,))
            got = [r[0] for r in cur]
            assert got == list(range(1, n + 1))


def test_fetchone_of_buffered_rows_checks_what_the_general_path_checks(
        server: ServerProcess) -> None:
    """fetchone() takes a buffered row without the general checks only while the cursor
    and its connection are open."""
    conn = server.connect()
    cur = conn.cursor()
    cur.execute("SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3")
    assert cur.fetchone() == (1,)
    cur2 = conn.cursor()
    cur2.execute("SELECT 'a' UNION ALL SELECT 'b'")
    cur2.close()
    with pytest.raises(casemate.InterfaceError, match="cursor is closed"):
        cur2.fetchone()
    conn.close()
    with pytest.raises(casemate.InterfaceError, match="connection is closed"):
        cur.fetchone()


def test_a_shutdown_notice_read_with_a_reply_sends_the_next_request_nowhere(
        server: ServerProcess) -> None:
    """A notice that the server is ending the session (a drop, a shutdown, an idle
    timeout), read in the same read as a reply while its end of file is still on the way:
    the next request is not sent to that session; the general path reconnects (helper-40:
    the lane sent it, and an autocommit statement that never ran was reported as perhaps
    committed, 08007, and the connection stayed broken).  The notice is put where the
    client reads it, as if it had come with the last reply."""
    with server.connect() as conn:
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("SELECT 1")
        proto = conn._chan.core.proto
        proto.receive_data(encode_frame(Msg.NOTICE, {"code": "57P02", "message": "dropped"}))
        conn._chan.core.dispatch(proto.next_event())
        assert conn._chan.core.shutdown_notice == "dropped"
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,) and conn.generation == 1  # a new session


def test_parameters_given_as_an_iterator_reach_the_general_path_whole(
        server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lane takes the parameters' values before it knows whether it serves the
    request: when it declines, the general path gets those values, not the used-up
    iterator (helper-40: 'Incorrect number of bindings ... 0 supplied')."""
    monkeypatch.setattr(Channel, "exchange", lambda self, req, msg, body: False)
    with server.connect() as conn:
        cur = conn.cursor()
        cur.execute("SELECT ? + ?", (x for x in (1, 2)))
        assert cur.fetchone() == (3,)


def test_a_connection_lost_with_a_request_in_flight_queues_no_more(
        server: ServerProcess) -> None:
    """Every call after such a loss reports it, and no request is queued for a reply that
    cannot come (helper-40: one more per call)."""
    conn = server.connect(reconnect_attempts=0)
    cur = conn.cursor()
    cur.execute("SELECT 1")
    admin = server.connect()
    admin.autocommit = True
    slow = ("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 3e7) "
            "SELECT count(*) FROM r")
    threading.Timer(0.3, lambda: admin.admin("drop", session=conn.session_id)).start()
    with pytest.raises(casemate.OperationalError):
        cur.execute(slow)
    for _ in range(3):
        with pytest.raises(casemate.OperationalError):
            cur.execute("SELECT 2")
    assert len(conn._chan.core.pending) <= 1
    admin.close()


def test_descriptions_are_kept_only_when_small_and_of_text() -> None:
    """The cache of PEP 249 descriptions keeps no long column names (SQLite names a column
    by its expression) and no body that is not text (1, 1.0 and True are one key)."""
    core._DESCRIPTIONS.clear()
    small = (("id", "INTEGER"), ("name", None))
    assert core.pep249_description(small) == (("id", "INTEGER", None, None, None, None, None),
                                              ("name", None, None, None, None, None, None))
    assert small in core._DESCRIPTIONS
    long_name = (("x" * 100_000, "TEXT"),)
    assert core.pep249_description(long_name)[0][0] == "x" * 100_000
    assert long_name not in core._DESCRIPTIONS
    assert core.pep249_description(((True, "integer"),)) == (
        ("True", "integer", None, None, None, None, None),)
    assert core.pep249_description(((1, "integer"),)) == (
        ("1", "integer", None, None, None, None, None),)
    assert len(core._DESCRIPTIONS) == 1
