"""Red-team tests of the one request path (commit c7a494a): every handler starts in
``data_received`` when the session is idle (``handlers.serve_now``) and, once it waits,
goes on in the session's task (``handlers.Resumed``).

Each test drives a real ``casemate serve`` process over raw sockets (frames in one TCP
segment, across segments, malformed ones) and checks reply order, cancels, drops, rights
and memory around the hand-over.

Three findings, each fixed and its test now guarding the fix:
- a handler started in data_received and queued as Resumed was abandoned when the session
  closed before its task took it (a bad frame in the same segment): its worker-thread
  statement ran later on a connection already back in the pool, inside another session's
  transaction (new with c7a494a; Session.next_message now hands the task a Resumed
  request before it reports the session closed, and a call stopped while it waits for a
  worker thread never starts);
- a write waiting for the write lock was retried with the grants checked before the wait
  (older than c7a494a; Runner.retrying checks the rights again after each wait);
- a server method failing with a large value in its frame kept it until the garbage
  collector ran, one per call (older than c7a494a; calls.guarded lets go of the future).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from casemate.protocol import Message, Msg, ProtocolConnection, encode_frame
from tests.conftest import ServerProcess, set_setting
from tests.security.test_redteam_today import add_user, closed, no_internal_errors, query, raw, replies

# A read that takes a worker thread about a second (never seen before: never inlined).
SLOW = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) "
        "SELECT count(*) FROM c")
FINAL = (Msg.RESULT, Msg.COMPLETE, Msg.ERROR, Msg.SUSPENDED)


def finals(msgs: list[Message]) -> list[Message]:
    return [m for m in msgs if m.type in FINAL]


def rows_of(m: Message) -> Any:
    assert m.type is Msg.RESULT, m
    return [tuple(r) for batch in m.body[1] for r in batch]


def admin_rows(server: ServerProcess, sql: str) -> list[tuple[Any, ...]]:
    with server.connect() as c:
        cur = c.cursor()
        cur.execute(sql)
        rows = cur.fetchall()
        c.rollback()
        return rows


@pytest.fixture
def socks() -> Iterator[list[socket.socket]]:
    """Raw sockets to close at the end of the test."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def login(server: ServerProcess, socks: list[socket.socket], user: str = "admin"
          ) -> tuple[socket.socket, ProtocolConnection]:
    sock, proto = raw(server, user)
    socks.append(sock)
    return sock, proto


def train(sock: socket.socket, proto: ProtocolConnection, frame: bytes, times: int = 3) -> None:
    """Run a request a few times so the cost model has seen it short (it then runs in
    the event loop)."""
    for _ in range(times):
        sock.sendall(frame + encode_frame(Msg.ROLLBACK, None))
        assert [m.type for m in finals(replies(sock, proto, 2))] != [Msg.ERROR] * 2


# -- found: a started handler abandoned when its session ends -------------------------------

def test_handler_abandoned_by_a_closed_session_runs_in_another_sessions_transaction(
        make_db, server_factory, socks) -> None:  # type: ignore[no-untyped-def]
    """An INSERT followed, in the same TCP segment, by a frame of unknown type: serve_now
    starts the INSERT (a write: a worker thread, here queued behind another session's long
    read on the only worker) and queues it as Resumed; the bad frame ends the session at
    once.  Found: the task then saw the session closed and never took the Resumed, so the
    connection went back to the pool with the INSERT still queued on it, and the INSERT
    ran later inside the next session's transaction.  Fixed twice over: the task finishes
    a Resumed request before it reports the session closed (the connection is given back
    after), and a call stopped while it waits for a thread never starts (runner.py
    _unless_stopped: the stop the close asks for reached a short statement too late)."""
    db = make_db()
    set_setting(db, "worker_threads", "1")
    server = server_factory(db)
    with server.connect() as admin:
        admin.cursor().execute("CREATE TABLE t(x)")
        admin.commit()
        add_user(admin, "rw", "readwrite")
    blocker, bproto = login(server, socks)
    other, oproto = login(server, socks)
    victim, _ = login(server, socks, "rw")
    begin = query("SELECT 2 AS two", begin=True)
    train(other, oproto, begin)  # its BEGIN now runs in the event loop
    blocker.sendall(query(SLOW.format(n=2_500_000)))  # holds the only worker thread
    time.sleep(0.3)
    victim.sendall(query("INSERT INTO t VALUES (666)") + b"?garbage")
    assert closed(victim)  # 08P01: the session ended
    time.sleep(0.3)
    other.sendall(begin)  # leases the connection the dead session gave back; BEGIN
    assert rows_of(finals(replies(other, oproto, 1))[0]) == [(2,)]
    assert rows_of(finals(replies(blocker, bproto, 1))[0]) == [(2_500_000,)]
    other.sendall(query("SELECT x FROM t"))  # inside its own, fresh transaction
    seen = rows_of(finals(replies(other, oproto, 1))[0])
    other.sendall(encode_frame(Msg.ROLLBACK, None))
    replies(other, oproto, 1)
    assert seen == [], "a dead session's INSERT ran inside another session's transaction"


# -- rights: a change while a handed-over request waits -------------------------------------

def rights_server(make_db, server_factory) -> ServerProcess:  # type: ignore[no-untyped-def]
    server: ServerProcess = server_factory(make_db())
    with server.connect() as admin:
        admin.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        admin.commit()
        admin.admin("group_add", name="clerks")
        admin.admin("grant", group="clerks", table="items", privileges=["SELECT", "INSERT"])
        add_user(admin, "clerk", "clerks")
    return server


def test_revoke_while_a_write_waits_for_the_lock_applies_to_its_retry(
        make_db, server_factory, socks) -> None:  # type: ignore[no-untyped-def]
    """A clerk's INSERT meets an admin's write lock: it is handed over (Resumed) and waits
    in Runner.retrying, with a SELECT pipelined behind it.  INSERT is revoked from the
    clerk's group (committed, visible to the server) before the lock is released: the
    retry must not insert with the grants the handler checked before it waited."""
    server = rights_server(make_db, server_factory)
    holder, hproto = login(server, socks)
    holder.sendall(query("INSERT INTO items VALUES (1, 'lock')", begin=True))
    assert finals(replies(holder, hproto, 1))[0].type is Msg.COMPLETE
    clerk, cproto = login(server, socks, "clerk")
    clerk.sendall(query("INSERT INTO items VALUES (2, 'after revoke')")
                  + query("SELECT count(*) FROM items"))
    time.sleep(0.5)  # the INSERT met the lock and waits
    with server.connect() as admin:
        admin.admin("revoke", group="clerks", table="items", privileges=["INSERT"])
        assert ("clerks", "items", "SELECT") in admin.admin("group_list")
    holder.sendall(encode_frame(Msg.COMMIT, None))
    assert finals(replies(holder, hproto, 1))[0].type is Msg.COMPLETE
    insert, count = finals(replies(clerk, cproto, 2))
    rows = admin_rows(server, "SELECT id FROM items ORDER BY id")
    assert insert.type is Msg.ERROR and insert.body["code"] == "42501", (insert, rows)
    assert rows == [(1,)]
    assert rows_of(count) == [(1,)]


# -- held: reply order, cancels, timeouts, methods and admin commands around the hand-over --

METHODS = '''
import time

from casemate.methods import method


@method
def ping(db, n: int = 1) -> int:
    return n


@method
def boom(db) -> int:
    raise ValueError("boom")


@method
def hold(db, megabytes: int) -> int:
    blob = b"y" * (megabytes * 1_000_000)
    raise ValueError(f"refused {len(blob)} bytes")


@method
def spin(db, seconds: float) -> int:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)
    db.execute("INSERT INTO items VALUES (999, 'spun')")
    return 1
'''


def call(name: str, *args: Any) -> bytes:
    return encode_frame(Msg.CALL, (0, name, args, {}, False, 100))


def session_id(server: ServerProcess, sock: socket.socket) -> int:
    """The server's id of the session on ``sock`` (matched by its address)."""
    me = f"127.0.0.1:{sock.getsockname()[1]}"
    with server.connect() as admin:
        ids = [r[0] for r in admin.admin("sessions") if r[2] == me]
    assert len(ids) == 1
    return int(ids[0])


def method_server(make_db, server_factory) -> ServerProcess:  # type: ignore[no-untyped-def]
    db = make_db()
    (db / "Methods").mkdir(exist_ok=True)
    (db / "Methods" / "tools.py").write_text(METHODS)
    set_setting(db, "time_limit_seconds", "1.0")
    server: ServerProcess = server_factory(db)
    with server.connect() as admin:
        admin.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        admin.cursor().executemany("INSERT INTO items VALUES (?, 'x')", [(i,) for i in range(1, 6)])
        admin.commit()
    return server


def test_mixed_pipeline_replies_in_order_in_one_segment_and_across_segments(
        make_db, server_factory, socks) -> None:  # type: ignore[no-untyped-def]
    """Requests answered at once, ones handed over to a worker thread, a write waiting for
    another session's lock, a suspended cursor and its FETCH, admin commands, server
    methods (one raising), SET/SHOW: every reply in request order, none lost, none twice."""
    server = method_server(make_db, server_factory)
    s, proto = login(server, socks)
    holder, hproto = login(server, socks)
    s.sendall(query("SELECT 1 AS a"))
    replies(s, proto, 1)
    for round_, one_segment in enumerate((True, False)):
        holder.sendall(query(f"INSERT INTO items VALUES ({50 + round_}, 'lock')", begin=True))
        assert finals(replies(holder, hproto, 1))[0].type is Msg.COMPLETE
        plan: list[tuple[bytes, Msg, Any]] = [
            (query("SELECT 1 AS a"), Msg.RESULT, [(1,)]),
            (query(SLOW.format(n=300_000 + round_)), Msg.RESULT, [(300_000 + round_,)]),
            (encode_frame(Msg.SYNC, None), Msg.COMPLETE, None),
            (query(f"INSERT INTO items VALUES ({100 + round_}, 'w')"), Msg.COMPLETE, None),
            (encode_frame(Msg.QUERY, (1, "SELECT id FROM items ORDER BY id", (), False, 1)),
             Msg.SUSPENDED, None),
            (encode_frame(Msg.FETCH, (1, 1)), Msg.SUSPENDED, None),
            (encode_frame(Msg.ADMIN, ("status", {})), Msg.COMPLETE, None),
            (call("ping", 7 + round_), Msg.RESULT, [(7 + round_,)]),
            (call("boom"), Msg.ERROR, None),
            (query("SHOW statement_timeout"), Msg.COMPLETE, None),
            (encode_frame(Msg.CLOSE_PORTAL, (1,)), Msg.COMPLETE, None),
            (encode_frame(Msg.ADMIN, ("user_list", {})), Msg.COMPLETE, None),
            (query(f"SELECT {round_} + 40 AS b"), Msg.RESULT, [(40 + round_,)]),
        ]
        if one_segment:
            s.sendall(b"".join(f for f, _, _ in plan))
        else:
            for f, _, _ in plan:
                s.sendall(f)
                time.sleep(0.02)
        time.sleep(0.3)
        holder.sendall(encode_frame(Msg.COMMIT, None))
        assert finals(replies(holder, hproto, 1))[0].type is Msg.COMPLETE
        got = finals(replies(s, proto, len(plan)))
        assert [m.type for m in got] == [t for _, t, _ in plan], got
        for m, (_, _, rows) in zip(got, plan, strict=True):
            if rows is not None:
                assert rows_of(m) == rows, (m, rows)
        s.sendall(encode_frame(Msg.SYNC, None))  # nothing else was pending
        assert [m.type for m in replies(s, proto, 1)] == [Msg.COMPLETE]
    no_internal_errors(server)


def test_cancel_and_statement_timeout_at_the_hand_over(
        make_db, server_factory, socks) -> None:  # type: ignore[no-untyped-def]
    """CANCEL of the handed-over request, of a later queued one (stops all up to it), and
    the statement timeout: the stopped requests answer 57014 in order, the ones behind run."""
    server = method_server(make_db, server_factory)
    s, proto = login(server, socks)
    # requests 1, 2: a slow read handed over, a short one queued; CANCEL 1 stops only 1
    s.sendall(query(SLOW.format(n=20_000_000)) + query("SELECT 2 AS two"))
    time.sleep(0.2)
    s.sendall(encode_frame(Msg.CANCEL, 1))
    a, b = finals(replies(s, proto, 2))
    assert a.type is Msg.ERROR and a.body["code"] == "57014", a
    assert rows_of(b) == [(2,)]
    # requests 3, 4, 5: CANCEL 4 stops 3 (running) and 4 (queued); 5 runs
    s.sendall(query(SLOW.format(n=20_000_001)) + query(SLOW.format(n=20_000_002))
              + query("SELECT 5 AS five"))
    time.sleep(0.2)
    s.sendall(encode_frame(Msg.CANCEL, 4))
    a, b, c = finals(replies(s, proto, 3))
    assert [a.type, b.type] == [Msg.ERROR, Msg.ERROR] and a.body["code"] == b.body["code"] == "57014"
    assert rows_of(c) == [(5,)]
    # a method spinning past nothing, cancelled while handed over: undone, 57014
    s.sendall(call("spin", 5.0) + query("SELECT 7 AS seven"))
    time.sleep(0.3)
    s.sendall(encode_frame(Msg.CANCEL, 6))
    a, b = finals(replies(s, proto, 2))
    assert a.type is Msg.ERROR and a.body["code"] == "57014", a
    assert rows_of(b) == [(7,)]
    # statement timeout: request 8 answered at once, 9 handed over and stopped, 10 runs
    s.sendall(query("SET statement_timeout = '100ms'") + query(SLOW.format(n=20_000_003))
              + query("SELECT 10 AS ten"))
    a, b, c = finals(replies(s, proto, 3))
    assert a.type is Msg.COMPLETE and b.type is Msg.ERROR and b.body["code"] == "57014", (a, b)
    assert "timeout" in b.body["message"]
    assert rows_of(c) == [(10,)]
    # a method over methods.time_limit_seconds (1 s), timed out while handed over
    s.sendall(query("SET statement_timeout = 0") + call("spin", 3.0) + query("SELECT 13 AS x"))
    a, b, c = finals(replies(s, proto, 3))
    assert b.type is Msg.ERROR and b.body["code"] == "57014", b
    assert rows_of(c) == [(13,)]
    assert admin_rows(server, "SELECT id FROM items WHERE id = 999") == []
    no_internal_errors(server)


def notices(msgs: list[Message]) -> list[str]:
    return [m.body["code"] if isinstance(m.body, dict) else m.body[0]
            for m in msgs if m.type is Msg.NOTICE]


def read_all(sock: socket.socket, proto: ProtocolConnection, timeout: float = 10
             ) -> tuple[list[Message], bool]:
    """Every message until the server closes the connection (True) or ``timeout`` (False)."""
    got: list[Message] = []
    sock.settimeout(timeout)
    try:
        while True:
            while (ev := proto.next_event()) is not None and isinstance(ev, Message):
                got.append(ev)
            data = sock.recv(65536)
            if not data:
                return got, True
            proto.receive_data(data)
    except ConnectionResetError:
        return got, True
    except TimeoutError:
        return got, False


def test_drop_of_own_session_and_of_one_with_a_handed_over_write(
        make_db, server_factory, socks) -> None:  # type: ignore[no-untyped-def]
    """An admin drops its own session with requests pipelined behind; an admin drops a
    session whose write in a transaction is handed over to a worker thread: the dropped
    sessions get their notice and no reply after it, the transaction is rolled back, the
    write lock is free at once, the other sessions go on."""
    server = method_server(make_db, server_factory)
    bystander, bproto = login(server, socks)
    me, mproto = login(server, socks)
    mine = session_id(server, me)
    me.sendall(encode_frame(Msg.ADMIN, ("drop", {"session": mine})) + query("SELECT 1 AS a")
               + query("INSERT INTO items VALUES (700, 'after drop')"))
    got, ended = read_all(me, mproto)
    assert ended and len(notices(got)) == 1, got
    assert [m.type for m in got if m.type in FINAL] == [], got
    victim, vproto = login(server, socks)
    vid = session_id(server, victim)
    victim.sendall(query("INSERT INTO items VALUES (800, 'in txn')", begin=True))
    assert finals(replies(victim, vproto, 1))[0].type is Msg.COMPLETE
    victim.sendall(query("INSERT INTO items SELECT x + 1000, 'slow' FROM ("
                         + SLOW.format(n=3_000_000).replace("count(*)", "x") + ")")
                   + query("SELECT 2 AS b"))
    time.sleep(0.3)
    with server.connect() as admin:
        assert admin.admin("drop", session=vid) == [(vid,)]
    got, ended = read_all(victim, vproto)
    assert ended and [m.type for m in got if m.type in FINAL] in ([], [Msg.ERROR]), got
    bystander.sendall(query("INSERT INTO items VALUES (900, 'free')"))  # the lock is free
    assert finals(replies(bystander, bproto, 1))[0].type is Msg.COMPLETE
    assert admin_rows(server, "SELECT id FROM items WHERE id >= 700") == [(900,)]
    no_internal_errors(server)


def test_user_removed_or_moved_while_its_request_waits_with_more_pipelined(
        make_db, server_factory, socks) -> None:  # type: ignore[no-untyped-def]
    """A clerk's INSERT waits for the write lock (handed over) with statements pipelined
    behind; the clerk is removed (or moved to another group) meanwhile: the session ends,
    the waiting INSERT never runs, nothing behind it is answered."""
    server = rights_server(make_db, server_factory)
    with server.connect() as admin:
        add_user(admin, "clerk2", "clerks")
    for user, change in (("clerk", {"cmd": "user_remove", "name": "clerk"}),
                         ("clerk2", {"cmd": "user_group", "name": "clerk2", "group": "readonly"})):
        holder, hproto = login(server, socks)
        holder.sendall(query("INSERT INTO items VALUES (1, 'lock')", begin=True))
        assert finals(replies(holder, hproto, 1))[0].type is Msg.COMPLETE
        clerk, cproto = login(server, socks, user)
        clerk.sendall(query(f"INSERT INTO items VALUES (2, '{user}')")
                      + query("SELECT count(*) FROM items") + query("INSERT INTO items VALUES (3, 'x')"))
        time.sleep(0.4)
        with server.connect() as admin:
            cmd = change.pop("cmd")
            admin.admin(cmd, **change)
        time.sleep(0.3)
        holder.sendall(encode_frame(Msg.ROLLBACK, None))
        replies(holder, hproto, 1)
        got, ended = read_all(clerk, cproto)
        assert ended and notices(got) == ["57P06"], got
        assert [m for m in got if m.type in FINAL and m.type is not Msg.ERROR] == [], got
        assert admin_rows(server, "SELECT id FROM items") == []
    no_internal_errors(server)


def test_malformed_body_queued_behind_a_handed_over_request(
        make_db, server_factory, socks) -> None:  # type: ignore[no-untyped-def]
    """A slow read handed over, then a QUERY whose body has the wrong shape: the read is
    answered, then 08P01, and the session ends; nothing after the bad request runs."""
    server = method_server(make_db, server_factory)
    s, proto = login(server, socks)
    s.sendall(query(SLOW.format(n=1_000_000)) + encode_frame(Msg.QUERY, ("x", "SELECT 1", (), False, 100))
              + query("INSERT INTO items VALUES (600, 'behind')"))
    got, ended = read_all(s, proto)
    assert ended and [m.type for m in got] == [Msg.RESULT, Msg.ERROR], got
    assert got[1].body["code"] == "08P01"
    assert admin_rows(server, "SELECT id FROM items WHERE id = 600") == []
    no_internal_errors(server)


def test_burst_of_eager_requests_meets_back_pressure(
        make_db, server_factory, socks) -> None:  # type: ignore[no-untyped-def]
    """A client pipelines a bounded burst of short requests with 15 kB replies and reads
    none: the server stops reading (MAX_INBOX / the write buffer), so the client's send
    blocks and the server's memory stays bounded; other sessions are served meanwhile."""
    server = method_server(make_db, server_factory)
    proc = psutil.Process(server.proc.pid)
    s, proto = login(server, socks)
    q = query("SELECT zeroblob(15000) AS z")
    for _ in range(5):  # the cost model learns it is short: answered in data_received
        s.sendall(q)
        replies(s, proto, 1)
    before = proc.memory_info().rss
    data = q * 300_000  # 15 MB of requests, 4.5 GB of replies if all were answered
    s.settimeout(3)
    sent = 0
    try:
        while sent < len(data):
            sent += s.send(data[sent:sent + (1 << 20)])
    except TimeoutError:
        pass
    assert sent < len(data), "the server never stopped reading"
    grown = proc.memory_info().rss - before
    assert admin_rows(server, "SELECT 5 AS x") == [(5,)]
    assert grown < 200_000_000, grown


def test_failed_method_with_a_large_value_is_not_kept(
        make_db, server_factory, socks) -> None:  # type: ignore[no-untyped-def]
    """A server method whose frame holds 50 MB raises: once the error is answered (and
    the session has gone on to another request) nothing may keep those 50 MB.  Each of
    four calls here stays referenced (a reference cycle through the exception's traceback
    and the future it was stored in, freed only by the garbage collector): the server's
    memory grows by about 50 MB per failed call."""
    server = method_server(make_db, server_factory)
    proc = psutil.Process(server.proc.pid)
    s, proto = login(server, socks)
    s.sendall(call("ping", 1))
    replies(s, proto, 1)
    time.sleep(0.3)
    before = proc.memory_info().rss
    for _ in range(4):
        s.sendall(call("hold", 50))
        err = finals(replies(s, proto, 1))[0]
        assert err.type is Msg.ERROR and "refused 50000000 bytes" in err.body["message"], err
    s.sendall(query("SELECT 1 AS a"))
    replies(s, proto, 1)
    time.sleep(0.5)
    grown = proc.memory_info().rss - before
    assert grown < 60_000_000, f"{grown / 1e6:.0f} MB still held after four failed calls"


def test_sigterm_with_handed_over_requests_pending(
        make_db, server_factory, socks) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM while one session's slow read is handed over to a worker thread and
    another's write waits for the lock, with requests pipelined behind both: the server
    stops promptly and cleanly, and the open transaction is not committed."""
    db = make_db()
    server = server_factory(db)
    with server.connect() as admin:
        admin.cursor().execute("CREATE TABLE t(x)")
        admin.commit()
    holder, hproto = login(server, socks)
    holder.sendall(query("INSERT INTO t VALUES (1)", begin=True))
    assert finals(replies(holder, hproto, 1))[0].type is Msg.COMPLETE
    reader, _ = login(server, socks)
    writer, _ = login(server, socks)
    reader.sendall(query(SLOW.format(n=50_000_000)) + query("SELECT 1 AS a"))
    writer.sendall(query("INSERT INTO t VALUES (2)") + query("INSERT INTO t VALUES (3)"))
    time.sleep(0.4)
    t0 = time.monotonic()
    rc = server.stop()
    assert time.monotonic() - t0 < 15
    assert rc == 0, server.log()
    no_internal_errors(server)
    again = server_factory(db)
    assert admin_rows(again, "SELECT x FROM t") == []
