"""Sessions against real server processes: isolation, durability, streaming in bounded
memory, lost servers, concurrency, lock waits, shutdown, and protocol-level pipelining."""

from __future__ import annotations

import gc
import select
import signal
import socket
import sys
import threading
import time
from typing import Any

import psutil
import pytest
from scramp import ScramClient

import casemate
from casemate.errors import UncommittedWorkWarning
from casemate.protocol import NEED_DATA, PROTOCOL_VERSION, Message, Msg, ProtocolConnection, Role
from tests.conftest import ADMIN_PASSWORD, set_setting

BIG_ROWS = 1_000_000
BIG_QUERY = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<1000000) "
             "SELECT x, 'row'||x FROM c")
MiB = 1024 * 1024


def _count(conn: casemate.Connection, table: str = "t") -> int:
    """Rows visible to ``conn`` in a fresh snapshot."""
    conn.rollback()
    n = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
    conn.rollback()
    return int(n)


# -- transactions between two sessions ---------------------------------------------


def test_two_sessions_see_committed_data_only(plain_server) -> None:  # type: ignore[no-untyped-def]
    a, b = plain_server.connect(), plain_server.connect()
    try:
        assert a.session_id != b.session_id
        a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        a.commit()
        assert _count(b) == 0

        a.execute("INSERT INTO t (v) VALUES ('uncommitted')")
        assert a.in_transaction
        assert a.execute("SELECT count(*) FROM t").fetchone() == (1,)  # A sees its own row
        assert _count(b) == 0  # B never sees A's uncommitted row
        a.commit()
        assert not a.in_transaction
        assert _count(b) == 1

        # B's own transaction keeps its snapshot until B ends it.
        assert b.execute("SELECT count(*) FROM t").fetchone() == (1,)
        assert b.in_transaction
        a.execute("INSERT INTO t (v) VALUES ('second')")
        a.commit()
        assert b.execute("SELECT count(*) FROM t").fetchone() == (1,)
        b.commit()
        assert b.execute("SELECT count(*) FROM t").fetchone() == (2,)
        b.rollback()

        # Rollback discards.
        a.execute("INSERT INTO t (v) VALUES ('rolled back')")
        a.execute("UPDATE t SET v = 'changed'")
        a.rollback()
        assert not a.in_transaction
        assert a.execute("SELECT v FROM t ORDER BY id").fetchall() == [("uncommitted",),
                                                                        ("second",)]
        a.rollback()
        assert _count(b) == 2

        # B writes, A sees it after B's commit.
        b.execute("INSERT INTO t (v) VALUES ('from b')")
        assert _count(a) == 2
        b.commit()
        assert _count(a) == 3
    finally:
        a.close()
        b.close()


def test_autocommit_attribute(plain_server) -> None:  # type: ignore[no-untyped-def]
    a, b = plain_server.connect(), plain_server.connect()
    try:
        assert a.autocommit is False  # PEP 249 default
        a.autocommit = True
        a.execute("CREATE TABLE t (v INTEGER)")
        a.execute("INSERT INTO t VALUES (1)")
        assert not a.in_transaction
        assert _count(b) == 1  # visible at once, no commit
        a.cursor().executemany("INSERT INTO t VALUES (?)", [(2,), (3,)])
        assert not a.in_transaction
        assert _count(b) == 3
        a.rollback()  # nothing to roll back
        assert _count(b) == 3
        a.autocommit = False
        a.execute("INSERT INTO t VALUES (4)")
        assert a.in_transaction
        assert _count(b) == 3
        a.commit()
        assert _count(b) == 4
    finally:
        a.close()
        b.close()


def test_context_manager_commits_or_rolls_back(plain_server) -> None:  # type: ignore[no-untyped-def]
    with plain_server.connect() as conn:
        conn.execute("CREATE TABLE t (v TEXT)")
        conn.execute("INSERT INTO t VALUES ('kept')")
    assert conn.closed
    with pytest.raises(RuntimeError, match="boom"), plain_server.connect() as conn:
        conn.execute("INSERT INTO t VALUES ('dropped')")
        raise RuntimeError("boom")
    assert conn.closed
    # Closing without commit rolls back too.
    conn = plain_server.connect()
    conn.execute("INSERT INTO t VALUES ('closed without commit')")
    with pytest.warns(UncommittedWorkWarning):  # said, not lost in silence
        conn.close()
    with plain_server.connect() as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [("kept",)]


# -- durability --------------------------------------------------------------------


def test_kill_9_after_acknowledged_commit_loses_nothing(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    server = server_factory(db)
    conn = server.connect(reconnect_attempts=0)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    for i in range(20):  # many small transactions, each acknowledged
        conn.execute("INSERT INTO t (v) VALUES (?)", (f"small{i}",))
        conn.commit()
    conn.cursor().executemany("INSERT INTO t (v) VALUES (?)", [(f"bulk{i}",) for i in range(5000)])
    conn.commit()
    conn.execute("INSERT INTO t (v) VALUES ('never committed')")
    server.kill()  # SIGKILL: no shutdown code runs
    with pytest.warns(UncommittedWorkWarning):  # the uncommitted INSERT: lost, and said so
        conn.close()

    server2 = server_factory(db)
    with server2.connect() as c2:
        rows = c2.execute("SELECT v FROM t ORDER BY id").fetchall()
    assert len(rows) == 20 + 5000
    assert rows[0] == ("small0",) and rows[19] == ("small19",) and rows[-1] == ("bulk4999",)
    assert ("never committed",) not in rows


# -- streaming a large result --------------------------------------------------------


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def test_million_rows_stream_in_bounded_memory(plain_server) -> None:  # type: ignore[no-untyped-def]
    # RSS, not tracemalloc: tracing 2 million allocations would quadruple the run time.
    client, server = psutil.Process(), psutil.Process(plain_server.proc.pid)
    with plain_server.connect() as conn:
        cur = conn.cursor()
        # Warm up both sides (buffers, code paths) with a result of a few batches.
        cur.execute(BIG_QUERY.replace("1000000", "20000"))
        assert len(cur.fetchall()) == 20_000
        gc.collect()
        client_before, server_before = client.memory_info().rss, server.memory_info().rss
        client_peak, server_peak = client_before, server_before
        t0 = time.monotonic()
        cur.execute(BIG_QUERY)
        n = 0
        last: Any = None
        for row in cur:
            n += 1
            last = row
            if n % 50_000 == 0:
                client_peak = max(client_peak, client.memory_info().rss)
                server_peak = max(server_peak, server.memory_info().rss)
        elapsed = time.monotonic() - t0
        client_peak = max(client_peak, client.memory_info().rss)
        server_peak = max(server_peak, server.memory_info().rss)
        assert n == BIG_ROWS
        assert last == (BIG_ROWS, f"row{BIG_ROWS}")
        assert cur.fetchone() is None
        assert conn.execute("SELECT 7").fetchall() == [(7,)]  # the session is fine afterwards

    # Lower bound on what holding the whole result would take in the client.
    sample = (500_000, "row500000")
    full_result = BIG_ROWS * (sys.getsizeof(sample) + sys.getsizeof(sample[1])
                              + sys.getsizeof(sample[0]))
    client_growth, server_growth = client_peak - client_before, server_peak - server_before
    print(f"\n1,000,000 rows in {elapsed:.1f} s; the full result held in memory would be "
          f">= {full_result / MiB:.0f} MiB; client RSS {client_before / MiB:.0f} -> peak "
          f"{client_peak / MiB:.0f} MiB (growth {client_growth / MiB:.1f} MiB); server RSS "
          f"{server_before / MiB:.0f} -> peak {server_peak / MiB:.0f} MiB "
          f"(growth {server_growth / MiB:.1f} MiB)")
    assert client_growth < 32 * MiB
    assert client_growth < full_result / 4
    assert server_growth < 32 * MiB
    assert server_growth < full_result / 4


def test_server_killed_while_streaming(plain_server) -> None:  # type: ignore[no-untyped-def]
    conn = plain_server.connect()
    try:
        cur = conn.cursor()
        cur.execute(BIG_QUERY)
        for _ in range(10_000):
            assert cur.fetchone() is not None
        plain_server.kill()
        with pytest.raises(casemate.OperationalError) as e:
            for _ in cur:
                pass
        assert e.value.code == "08006"
        assert "connection to the server lost" in e.value.message
        # Every later call reports the same lost connection (no hang, no other error type).
        with pytest.raises(casemate.OperationalError):
            cur.fetchone()
    finally:
        conn.close()


# -- many sessions, lock waits ----------------------------------------------------


@pytest.mark.parametrize(("worker_threads", "busy_timeout"), [
    # More storage threads than sessions.
    (64, 30),
    # Fewer storage threads than writing sessions: waiting writers must not hold threads
    # (they wait in the event loop), or the lock holder could never commit.
    (16, 5),
    (4, 5),
])
def test_fifty_concurrent_sessions(make_db, server_factory, worker_threads: int,  # type: ignore[no-untyped-def]
                                   busy_timeout: int) -> None:
    db = make_db()
    set_setting(db, "worker_threads", str(worker_threads))
    set_setting(db, "busy_timeout_seconds", str(busy_timeout))
    server = server_factory(db)
    with server.connect() as setup:
        setup.execute("CREATE TABLE t (worker INTEGER, txn INTEGER, i INTEGER)")
    workers, txns, per_txn = 50, 4, 5
    errors: list[BaseException] = []
    start = threading.Barrier(workers)

    def work(w: int) -> None:
        try:
            with server.connect() as conn:
                start.wait(30)
                cur = conn.cursor()
                for t in range(txns):
                    for i in range(per_txn):
                        cur.execute("INSERT INTO t VALUES (?, ?, ?)", (w, t, i))
                    conn.commit()
                assert cur.execute("SELECT count(*) FROM t WHERE worker = ?", (w,)
                                   ).fetchone() == (txns * per_txn,)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    t0 = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    elapsed = time.monotonic() - t0
    print(f"\n{workers} sessions x {txns} transactions x {per_txn} inserts, {worker_threads} "
          f"storage threads: {elapsed:.1f} s, {len(errors)} failed")
    assert not errors, errors[:3]
    with server.connect() as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT worker) FROM t").fetchone() == (
            workers * txns * per_txn, workers)


def test_writer_waiting_too_long_gets_busy(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    set_setting(db, "busy_timeout_seconds", "0.5")
    server = server_factory(db)
    a, b = server.connect(), server.connect()
    try:
        a.execute("CREATE TABLE t (v TEXT)")
        a.commit()
        a.execute("INSERT INTO t VALUES ('a holds the write lock')")
        t0 = time.monotonic()
        with pytest.raises(casemate.OperationalError) as e:
            b.execute("INSERT INTO t VALUES ('b waits')")
        waited = time.monotonic() - t0
        assert e.value.code == "55P03"
        assert "database is busy" in e.value.message
        assert "0.5 s" in e.value.message
        assert 0.4 <= waited < 5, waited
        b.rollback()
        a.commit()
        # Once the lock is free, B's retry succeeds.
        b.execute("INSERT INTO t VALUES ('b retried')")
        b.commit()
        assert a.execute("SELECT v FROM t ORDER BY rowid").fetchall() == [
            ("a holds the write lock",), ("b retried",)]
        a.rollback()
    finally:
        a.close()
        b.close()


# -- shutdown --------------------------------------------------------------------


def test_sigterm_with_open_transaction(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    server = server_factory(db)
    conn = server.connect()
    notices: list[tuple[str, str]] = []
    conn.on_notice = lambda code, text: notices.append((code, text))
    try:
        conn.execute("CREATE TABLE t (v TEXT)")
        conn.execute("INSERT INTO t VALUES ('committed')")
        conn.commit()
        conn.execute("INSERT INTO t VALUES ('in flight')")
        assert conn.in_transaction
        rc = server.stop(signal.SIGTERM)
        assert rc == 0, server.log()
        assert "Shutting down" in server.log()
        with pytest.raises(casemate.OperationalError) as e:
            conn.execute("SELECT 1")
        assert e.value.code == "08006"
        assert "server is shutting down" in e.value.message
        assert "rolled back" in e.value.message
        assert ("57P01", "server is shutting down") in conn.notices
        assert notices and notices[0][0] == "57P01"
    finally:
        conn.close()

    server2 = server_factory(db)
    with server2.connect() as c2:
        assert c2.execute("SELECT v FROM t").fetchall() == [("committed",)]


# -- pipelining at the protocol level -----------------------------------------------


class RawClient:
    """A bare protocol client over a plain socket: no casemate.client code."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.proto = ProtocolConnection(Role.CLIENT)

    def recv(self) -> Message:
        while True:
            ev = self.proto.next_event()
            if ev is not NEED_DATA:
                assert isinstance(ev, Message)
                return ev
            data = self.sock.recv(65536)
            assert data, "server closed the connection"
            self.proto.receive_data(data)

    def login(self, user: str, password: str, **hello: Any) -> dict[str, Any]:
        scram = ScramClient(["SCRAM-SHA-256"], user, password)
        # Hello and client-first in one write.
        self.sock.sendall(
            self.proto.send(Msg.HELLO, {"protocol": PROTOCOL_VERSION, "program": "raw-test",
                                        "host": "test", **hello})
            + self.proto.send(Msg.SASL_INITIAL, ("SCRAM-SHA-256", scram.get_client_first())))
        hello = self.recv()
        assert hello.type is Msg.HELLO_OK, hello
        assert hello.body["encrypted"] is False
        assert "SCRAM-SHA-256" in hello.body["mechanisms"]
        challenge = self.recv()
        assert challenge.type is Msg.SASL_CHALLENGE, challenge
        scram.set_server_first(challenge.body)
        self.sock.sendall(self.proto.send(Msg.SASL_RESPONSE, scram.get_client_final()))
        ok = self.recv()
        assert ok.type is Msg.AUTH_OK, ok
        scram.set_server_final(ok.body["server_final"])  # the server proved itself too
        return dict(ok.body)

    def result(self) -> tuple[str, Any]:
        """Read one QUERY reply: ("rows", (description, rows, complete)) or ("error", body)."""
        m = self.recv()
        if m.type is Msg.ERROR:
            return "error", m.body
        assert m.type is Msg.DESCRIPTION, m
        desc = m.body
        rows: list[Any] = []
        while (m := self.recv()).type is Msg.ROWS:
            for chunk in m.body:
                rows.extend(chunk)
        assert m.type is Msg.COMPLETE, m
        return "rows", (desc, rows, m.body)

    def close(self) -> None:
        self.sock.close()


def test_pipelined_queries_on_a_raw_socket(plain_server) -> None:  # type: ignore[no-untyped-def]
    raw = RawClient(plain_server.port)
    try:
        ok = raw.login("admin", ADMIN_PASSWORD)
        assert ok["user"] == "admin" and ok["session"] > 0
        # Three queries in one write, before any reply.
        raw.sock.sendall(
            raw.proto.send(Msg.QUERY, (1, "SELECT 1 AS one", (), False, 100))
            + raw.proto.send(Msg.QUERY, (2, "SELECT ? || 'wo' AS two", ("t",), False, 100))
            + raw.proto.send(Msg.QUERY, (3, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
                                            "SELECT x+1 FROM c WHERE x<3) SELECT x FROM c",
                                         (), False, 100)))
        kind, (desc, rows, complete) = raw.result()
        assert kind == "rows" and desc == (("one", "integer"),) and rows == [(1,)]
        assert complete[2] is False  # not in a transaction
        kind, (desc, rows, _) = raw.result()
        assert kind == "rows" and desc == (("two", "text"),) and rows == [("two",)]
        kind, (desc, rows, _) = raw.result()
        assert kind == "rows" and desc == (("x", "integer"),) and rows == [(1,), (2,), (3,)]

        # An error in the middle of a pipeline does not disturb the requests after it.
        raw.sock.sendall(
            raw.proto.send(Msg.QUERY, (4, "SELECT 'before'", (), False, 100))
            + raw.proto.send(Msg.QUERY, (5, "SELEC oops", (), False, 100))
            + raw.proto.send(Msg.QUERY, (6, "SELECT 'after'", (), False, 100))
            + raw.proto.send(Msg.SYNC))
        assert raw.result()[1][1] == [("before",)]
        kind, body = raw.result()
        assert kind == "error" and body["code"] == "42601"
        assert raw.result()[1][1] == [("after",)]
        sync = raw.recv()
        assert sync.type is Msg.COMPLETE
        raw.sock.sendall(raw.proto.send(Msg.TERMINATE))
        assert raw.sock.recv(1) == b""  # the server closes after TERMINATE
    finally:
        raw.close()


def test_pipelining_client_that_does_not_read_meets_the_buffer_limit(plain_server) -> None:  # type: ignore[no-untyped-def]
    """Short queries are served at once as they arrive; a client that sends many and reads
    none of the replies still stalls at the write buffer limit, with the server's memory
    bounded, and then gets every reply in order."""
    raw = RawClient(plain_server.port)
    server = psutil.Process(plain_server.pid)
    n, blob = 5000, 16 * 1024  # 80 MiB of requests, and as much of replies
    sql = "SELECT ?, ?"  # the server echoes the blob it is sent: next to no work
    try:
        raw.login("admin", ADMIN_PASSWORD)
        for i in range(5):  # known to be short: served in data_received from now on
            raw.sock.sendall(raw.proto.send(Msg.QUERY, (1, sql, (i, bytes(blob)), False, 100)))
            assert raw.result()[0] == "rows"
        gc.collect()
        base = server.memory_info().rss
        sent = 0
        pending = b""
        raw.sock.setblocking(False)
        deadline = time.monotonic() + 30
        while sent < n and time.monotonic() < deadline:
            if not pending:
                pending = raw.proto.send(Msg.QUERY, (1, sql, (sent, bytes(blob)), False, 100))
                sent += 1
            if not select.select([], [raw.sock], [], 1.0)[1]:
                break  # not writable for a second: the server stopped reading
            try:
                pending = pending[raw.sock.send(pending):]
            except BlockingIOError:
                pass
        rest = pending  # the unsent end of the last frame
        time.sleep(0.5)
        grown = server.memory_info().rss - base
        assert sent < n, "the server kept reading without the client reading any reply"
        assert grown < 40 * MiB, f"server grew {grown / MiB:.0f} MiB"
        raw.sock.settimeout(30)
        got: list[int] = []

        def read_all() -> None:
            for _ in range(sent):
                kind, (_, rows, _) = raw.result()
                assert kind == "rows" and len(rows[0][1]) == blob
                got.append(rows[0][0])
        reader = threading.Thread(target=read_all)
        reader.start()
        raw.sock.sendall(rest)
        reader.join(60)
        assert got == list(range(sent))  # every reply, in order
    finally:
        raw.close()


def test_result_frames_only_for_clients_that_ask(plain_server) -> None:  # type: ignore[no-untyped-def]
    """A client announcing the "result" feature gets a small complete result as one RESULT
    frame; a larger one still comes as DESCRIPTION, ROWS, SUSPENDED; other clients (and
    unknown features) get the three-frame replies."""
    big = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<50) "
           "SELECT x FROM c")
    raw = RawClient(plain_server.port)
    try:
        raw.login("admin", ADMIN_PASSWORD, features=["result", "something-newer"])
        for _ in range(3):  # the first run goes through a worker thread, later ones do not
            raw.sock.sendall(raw.proto.send(Msg.QUERY, (1, "SELECT ? AS v, 2", ("a",), True, 100)))
            m = raw.recv()
            assert m.type is Msg.RESULT, m
            desc, chunks, complete = m.body
            assert desc == (("v", "text"), ("2", "integer"))
            assert [row for chunk in chunks for row in chunk] == [("a", 2)]
            assert complete[0] == -1 and complete[2] is True  # begin=True: a transaction is open
        raw.sock.sendall(raw.proto.send(Msg.QUERY, (2, big, (), False, 20)))
        assert [raw.recv().type for _ in range(3)] == [Msg.DESCRIPTION, Msg.ROWS, Msg.SUSPENDED]
        raw.sock.sendall(raw.proto.send(Msg.QUERY, (3, "SELEC oops", (), False, 20)))
        assert raw.recv().type is Msg.ERROR
    finally:
        raw.close()
    raw = RawClient(plain_server.port)
    try:
        raw.login("admin", ADMIN_PASSWORD, features=["something-newer"])
        raw.sock.sendall(raw.proto.send(Msg.QUERY, (1, "SELECT 1", (), False, 100)))
        kind, (desc, rows, complete) = raw.result()  # three frames
        assert kind == "rows" and rows == [(1,)] and complete[2] is False
    finally:
        raw.close()
