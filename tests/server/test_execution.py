"""Statement execution safety against real servers: no session holds up the event loop,
statement_timeout, cancel (blocking, asyncio, casemate shell), and a statement's work
stops when its client goes away, is dropped, or the server shuts down (issue 14)."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import psutil
import pytest

import casemate
import casemate.aio
from casemate.database import make_verifier
from casemate.protocol import Msg, encode_frame
from casemate.testing import ADMIN_PASSWORD, ServerProcess
from tests.conftest import client_running, end_process, set_setting, worst_wait_during

# Bounded by ?: trained with a small bound, then run with a huge one (same SQL text).
BOUNDED = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
           "SELECT count(*) FROM c")
ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
CANCELED = "57014"


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def assert_cpu_settles(pid: int, within: float = 5.0) -> None:
    """The server process stops burning CPU (a runaway statement would keep a core busy)."""
    deadline = time.monotonic() + within
    while True:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        used = cpu_seconds(pid) - before
        if used < 0.1:
            return
        assert time.monotonic() < deadline, f"server still busy: {used:.2f} s CPU in 1 s"


def start_endless(url: str, **kw: Any) -> subprocess.Popen[str]:
    """A client process running an endless statement (ended by the test)."""
    return client_running(url, ENDLESS, **kw)


def wait_busy(pid: int) -> None:
    """Until the server process is seen burning CPU (the endless statement runs)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(0.3)
        if cpu_seconds(pid) - before > 0.1:
            return
    raise AssertionError("the endless statement never started")


# -- item 1: the event loop ------------------------------------------------------------------

def test_trained_statement_cannot_stall_other_sessions(plain_server: ServerProcess) -> None:
    attacker = plain_server.connect()
    attacker.autocommit = True
    victim = plain_server.connect()
    for _ in range(30):  # teach the cost model that this SQL text is short
        attacker.execute(BOUNDED, (10,)).fetchall()
    for _ in range(20):
        victim.execute("SELECT 1").fetchall()
    worst, took, n = worst_wait_during(
        lambda: attacker.execute(BOUNDED, (3_000_000,)).fetchall(), victim)
    assert took > 0.3, "the attack must be long for the test to mean anything"
    assert n > 20
    assert worst < 0.1, f"another session waited {worst * 1000:.0f} ms behind the attack"
    # And the statement that was cut off in the event loop ran to its end in a thread.
    assert attacker.execute(BOUNDED, (3,)).fetchall() == [(3,)]


def test_one_long_step_cannot_stall_other_sessions(plain_server: ServerProcess) -> None:
    # One SQLite step the progress handler cannot split: a function building a huge value.
    attacker = plain_server.connect()
    attacker.autocommit = True
    victim = plain_server.connect()
    sql = "SELECT length(randomblob(?))"
    for _ in range(30):
        attacker.execute(sql, (10,)).fetchall()
    result: list[Any] = []
    worst, _, _ = worst_wait_during(
        lambda: result.extend(attacker.execute(sql, (15_000_000,)).fetchall()), victim)
    assert result == [(15_000_000,)]
    assert worst < 0.1, f"another session waited {worst * 1000:.0f} ms behind the attack"


def test_cut_off_read_in_a_transaction_keeps_the_transaction(plain_server: ServerProcess
                                                             ) -> None:
    conn = plain_server.connect()
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.commit()
    conn.execute("INSERT INTO t VALUES (1)")
    for _ in range(30):
        conn.execute(BOUNDED, (10,)).fetchall()
    assert conn.execute(BOUNDED, (1_000_000,)).fetchall() == [(1_000_000,)]  # cut, run again
    conn.commit()
    other = plain_server.connect()
    assert other.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_cut_off_write_leaves_open_cursors_alone(plain_server: ServerProcess) -> None:
    # A guard: SQLite lets reads go on after it stops a write, but the session keeps
    # writes out of the event loop while cursors are open (one may be an INSERT RETURNING).
    conn = plain_server.connect()
    conn.autocommit = True  # an open cursor outside a transaction
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.execute("CREATE TABLE big (x INTEGER)")
    conn.execute("INSERT INTO big " + BOUNDED.replace("count(*)", "x"), (5000,))
    insert = "INSERT INTO t " + BOUNDED.replace("count(*)", "x")
    for _ in range(30):  # a short write, learnt as such
        conn.execute(insert, (2,))
    reader = conn.cursor()
    reader.arraysize = 10
    reader.execute("SELECT x FROM big ORDER BY x")
    first = reader.fetchmany(10)
    conn.execute(insert, (300_000,))  # now long: must not run (and be cut) in the event loop
    rest = reader.fetchall()
    assert len(first) + len(rest) == 5000
    assert conn.execute("SELECT count(*) FROM t").fetchall() == [(60 + 300_000,)]


def test_commit_of_a_large_transaction_is_not_run_in_the_event_loop(
        make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    set_setting(db, "inline_limit_ms", "20")  # so that a small COMMIT (an fsync) is inlined
    plain_server = server_factory(db)
    conn = plain_server.connect()
    conn.execute("CREATE TABLE t (x INTEGER, pad TEXT)")
    conn.commit()
    victim = plain_server.connect()
    for _ in range(30):  # COMMIT learnt as short
        conn.execute("INSERT INTO t VALUES (1, 'a')")
        conn.commit()
    conn.execute("INSERT INTO t SELECT x, zeroblob(4000) FROM ("
                 + BOUNDED.replace("count(*)", "x") + ")", (50_000,))
    done = threading.Event()

    def commit() -> None:
        conn.commit()
        done.set()
    threading.Thread(target=commit, daemon=True).start()
    worst = 0.0
    while not done.is_set():
        t0 = time.perf_counter()
        victim.execute("SELECT 1").fetchall()
        worst = max(worst, time.perf_counter() - t0)
    assert worst < 0.1, f"another session waited {worst * 1000:.0f} ms behind a COMMIT"
    assert victim.execute("SELECT count(*) FROM t").fetchall() == [(30 + 50_000,)]


# -- item 2: statement_timeout -------------------------------------------------------------

def expect_canceled(conn: casemate.Connection, why: str, sql: str = ENDLESS) -> float:
    t0 = time.monotonic()
    with pytest.raises(casemate.OperationalError) as e:
        conn.execute(sql).fetchall()
    assert e.value.code == CANCELED and why in e.value.message, e.value
    return time.monotonic() - t0


def test_statement_timeout_setting_and_per_session(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    set_setting(db, "statement_timeout_seconds", "0.5")
    server = server_factory(db)
    conn = server.connect()
    assert expect_canceled(conn, "statement timeout") < 3
    assert conn.execute("SELECT 1").fetchall() == [(1,)]  # the session goes on
    conn.execute("SET statement_timeout = 200")  # PostgreSQL's syntax: milliseconds
    assert conn.execute("SHOW statement_timeout").fetchall() == [("0.2s",)]
    assert expect_canceled(conn, "statement timeout (0.2 s)") < 2
    conn.execute("SET statement_timeout TO '2min'")  # admins may go above the setting
    assert conn.execute("SHOW statement_timeout").fetchall() == [("120s",)]
    conn.execute("SET statement_timeout = DEFAULT")
    assert conn.execute("SHOW statement_timeout").fetchall() == [("0.5s",)]
    with pytest.raises(casemate.DataError):
        conn.execute("SET statement_timeout = 'soon'")
    short = server.connect(statement_timeout=0.3)  # a connect option, in seconds
    assert short.execute("SHOW statement_timeout").fetchall() == [("0.3s",)]
    assert expect_canceled(short, "statement timeout") < 2
    url = server.url + "?statement_timeout=0.25"
    assert casemate.connect(url).execute("SHOW statement_timeout").fetchall() == [("0.25s",)]


def test_users_cannot_raise_the_statement_timeout(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    set_setting(db, "statement_timeout_seconds", "0.5")
    server = server_factory(db)
    rec = make_verifier("bob", "bob-pass-123", "readonly")
    server.connect().admin("user_add", name="bob", group="readonly",
                           verifier=[rec.salt, rec.stored_key, rec.server_key, rec.iterations])
    bob = casemate.connect(f"casemate://bob:bob-pass-123@127.0.0.1:{server.port}")
    with pytest.raises(casemate.ProgrammingError) as e:
        bob.execute("SET statement_timeout = 0")
    assert e.value.code == "42501"
    bob.execute("SET statement_timeout = 100")  # lowering it is fine
    assert expect_canceled(bob, "statement timeout") < 2
    capped = casemate.connect(f"casemate://bob:bob-pass-123@127.0.0.1:{server.port}",
                              statement_timeout=0)
    assert capped.execute("SHOW statement_timeout").fetchall() == [("0.5s",)]
    assert any(code == "01000" for code, _ in capped.notices)


def test_a_write_stopped_in_a_transaction_is_not_committed(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(make_db())
    conn = server.connect()
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.commit()
    conn.execute("INSERT INTO t VALUES (1)")
    conn.execute("SET statement_timeout = 300")
    with pytest.raises(casemate.OperationalError) as e:
        conn.execute("INSERT INTO t SELECT x FROM (" + ENDLESS.replace("count(*)", "x") + ")")
    assert e.value.code == CANCELED
    with pytest.raises(casemate.DatabaseError) as e2:  # never "committed" when it was not
        conn.commit()
    assert e2.value.code == "25P02"
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM t").fetchall() == [(0,)]


# -- cancel ---------------------------------------------------------------------------------

def test_cancel_from_another_thread(plain_server: ServerProcess) -> None:
    conn = plain_server.connect()
    conn.cancel()  # nothing running: nothing happens
    assert conn.execute("SELECT 1").fetchall() == [(1,)]
    threading.Timer(0.3, conn.cancel).start()
    assert expect_canceled(conn, "user request") < 3
    assert conn.execute("SELECT 2").fetchall() == [(2,)]
    cur = conn.cursor()
    threading.Timer(0.3, cur.cancel).start()
    with pytest.raises(casemate.OperationalError) as e:
        cur.execute(ENDLESS)
    assert e.value.code == CANCELED


def test_cancel_stops_a_statement_cut_off_in_the_event_loop(plain_server: ServerProcess
                                                            ) -> None:
    """A statement the cost model has learned to run in the event loop, given a huge bound:
    cut off there, it runs again in a thread, and a cancel still reaches it (the request
    keeps its number across the two attempts: handlers.query_now gives it back)."""
    conn = plain_server.connect()
    conn.execute("SET statement_timeout = '10s'")  # a cancel that missed: failed, not hung
    counting = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
                "SELECT count(*) FROM c")
    for _ in range(5):  # short: learned as an event-loop call
        assert conn.execute(counting, (10,)).fetchall() == [(10,)]
    threading.Timer(0.5, conn.cancel).start()
    assert expect_canceled_args(conn, counting, (10**12,)) < 5
    assert conn.execute("SELECT 1").fetchall() == [(1,)]


def expect_canceled_args(conn: casemate.Connection, sql: str, args: tuple[int, ...]) -> float:
    t0 = time.monotonic()
    with pytest.raises(casemate.OperationalError) as e:
        conn.execute(sql, args).fetchall()
    assert e.value.code == CANCELED and "user request" in e.value.message, e.value
    return time.monotonic() - t0


def test_cancel_over_tls(tls_server: ServerProcess) -> None:
    conn = tls_server.connect()
    threading.Timer(0.3, conn.cancel).start()
    assert expect_canceled(conn, "user request") < 3
    assert conn.execute("SELECT 1").fetchall() == [(1,)]


def test_a_late_cancel_never_stops_the_next_statement(plain_server: ServerProcess) -> None:
    conn = plain_server.connect()
    assert conn.execute("SELECT 1").fetchall() == [(1,)]
    chan = conn._chan
    assert chan is not None
    # A CANCEL naming a request that has finished (the race a cancel can lose).
    chan.send(encode_frame(Msg.CANCEL, chan.core.proto.requests))
    assert conn.execute(BOUNDED, (200_000,)).fetchall() == [(200_000,)]


async def _all_cancelled(*requests: asyncio.Future[object]) -> None:
    for t in requests:
        with pytest.raises(casemate.OperationalError) as e:
            await t
        assert e.value.code == CANCELED


def test_cancel_stops_pipelined_requests_but_not_later_ones(plain_server: ServerProcess
                                                             ) -> None:
    async def main() -> None:
        conn = await casemate.aio.connect(plain_server.url)
        first = asyncio.ensure_future(conn.fetch(ENDLESS))
        second = asyncio.ensure_future(conn.fetch(ENDLESS))  # queued behind the first
        await asyncio.sleep(0.3)
        conn.cancel()
        await _all_cancelled(first, second)
        assert await conn.fetch(BOUNDED, (100_000,)) == [(100_000,)]  # sent after: runs
        await conn.close()
    asyncio.run(main())


def test_cancel_stops_a_queued_request_that_would_run_in_the_event_loop(
        plain_server: ServerProcess) -> None:
    # A short statement the cost model runs in the event loop, queued behind a long one
    # and covered by the CANCEL, ran anyway (only the worker-thread path checked).
    async def main() -> None:
        conn = await casemate.aio.connect(plain_server.url)
        for _ in range(20):  # now known to be short: it runs in the event loop
            assert await conn.fetch("SELECT 41 + 1") == [(42,)]
        first = asyncio.ensure_future(conn.fetch(ENDLESS))
        second = asyncio.ensure_future(conn.fetch("SELECT 41 + 1"))  # queued behind it
        await asyncio.sleep(0.3)
        conn.cancel()
        await _all_cancelled(first, second)
        assert await conn.fetch("SELECT 41 + 1") == [(42,)]  # sent after: runs
        await conn.close()
    asyncio.run(main())
    with plain_server.connect() as c:
        columns, rows = c.admin_table("status")
    assert dict(zip(columns, rows[0], strict=True))["storage_calls_in_event_loop"] > 0


def test_cancel_from_asyncio(plain_server: ServerProcess) -> None:
    async def main() -> None:
        conn = await casemate.aio.connect(plain_server.url)
        conn.cancel()  # nothing running
        asyncio.get_running_loop().call_later(0.3, conn.cancel)
        with pytest.raises(casemate.OperationalError) as e:
            await conn.fetch(ENDLESS)
        assert e.value.code == CANCELED and "user request" in e.value.message
        assert await conn.fetch("SELECT 1") == [(1,)]
        await conn.close()
    asyncio.run(main())


def test_ctrl_c_in_shell_cancels_the_statement(plain_server: ServerProcess) -> None:
    env = {**os.environ, "CASEMATE_PASSWORD": ADMIN_PASSWORD}
    pid, fd = pty.fork()
    if pid == 0:  # the child: casemate shell on a terminal
        os.execvpe(sys.executable, [sys.executable, "-m", "casemate", "shell",
                                    f"casemate://admin@127.0.0.1:{plain_server.port}"], env)
    out = b""

    def read_until(marker: bytes, timeout: float = 15) -> None:
        nonlocal out
        deadline = time.monotonic() + timeout
        while marker not in out:
            assert time.monotonic() < deadline, out.decode(errors="replace")
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    break
        assert marker in out, out.decode(errors="replace")

    try:
        read_until(b"casemate=>")  # the prompt (line editing adds escape sequences after it)
        os.write(fd, ENDLESS.encode() + b";\n")
        wait_busy(plain_server.pid)
        out = b""
        os.kill(pid, signal.SIGINT)  # what Ctrl-C sends to the foreground process
        read_until(b"57014")
        assert_cpu_settles(plain_server.pid)
        out = b""
        os.write(fd, b"SELECT 40 + 2;\n")
        read_until(b"42")  # the shell is still there, and so is its session
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)


# -- the work stops when nobody waits for it -----------------------------------------------

def test_disconnect_stops_the_statement(plain_server: ServerProcess) -> None:
    client = start_endless(plain_server.url)
    wait_busy(plain_server.pid)
    end_process(client)
    assert_cpu_settles(plain_server.pid)


def test_drop_stops_the_statement(plain_server: ServerProcess) -> None:
    client = start_endless(plain_server.url, program="runaway")
    try:
        wait_busy(plain_server.pid)
        admin = plain_server.connect()
        cols, rows = admin.admin_table("sessions")
        victim = [r[cols.index("id")] for r in rows if r[cols.index("program")] == "runaway"]
        admin.admin("drop", session=victim[0])
        assert_cpu_settles(plain_server.pid)
    finally:
        end_process(client)


def test_shutdown_does_not_wait_for_a_runaway_statement(plain_server: ServerProcess) -> None:
    client = start_endless(plain_server.url)
    try:
        wait_busy(plain_server.pid)
        t0 = time.monotonic()
        plain_server.stop(signal.SIGINT, timeout=15)
        assert time.monotonic() - t0 < 5
    finally:
        end_process(client)


def test_server_method_obeys_timeout_and_cancel(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    (db / "Methods").mkdir(exist_ok=True)
    (db / "Methods" / "slow.py").write_text(
        "from casemate.methods import method\n\n"
        "@method\n"
        "def spin(db) -> int:\n"
        "    while True:\n"
        "        pass\n\n"
        "@method\n"
        f"def query(db) -> int:\n"
        f"    return db.execute({ENDLESS!r}).fetchone()[0]\n")
    server = server_factory(db)
    conn = server.connect(statement_timeout=0.5)
    for name in ("spin", "query"):
        t0 = time.monotonic()
        with pytest.raises(casemate.OperationalError) as e:
            conn.call(name)
        assert e.value.code == CANCELED and "statement timeout" in e.value.message
        assert time.monotonic() - t0 < 5
    conn.execute("SET statement_timeout = 0")
    for name in ("spin", "query"):
        threading.Timer(0.3, conn.cancel).start()
        with pytest.raises(casemate.OperationalError) as e:
            conn.call(name)
        assert e.value.code == CANCELED and "user request" in e.value.message, e.value
    assert conn.execute("SELECT 1").fetchall() == [(1,)]
    assert_cpu_settles(server.pid)
