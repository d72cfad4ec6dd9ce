"""Red-team tests of the one request path (commit c7a494a): every handler starts in
``data_received`` when the session is idle (``handlers.serve_now``) and, once it waits,
goes on in the session's task (``handlers.Resumed``).

Each test drives a real ``casemate serve`` process over raw sockets (frames in one TCP
segment, across segments, malformed ones) and checks reply order, cancels, drops, rights
and memory around the hand-over.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

import casemate
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
    read on the only worker) and queues it as Resumed; the bad frame ends the session
    before its task takes the Resumed (next_message raises Closed once the session is
    closed), so nothing waits for the thread, and release_all gives the storage connection
    back to the pool with the INSERT still queued on it.  The next session to lease that
    connection re-arms it (clearing the stop the close asked for) and opens a transaction:
    the dead session's INSERT then runs inside the other session's transaction.  Before
    the change the INSERT was a queued message, never started once the session closed."""
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
    assert insert.type is Msg.ERROR and insert.body[0] == "42501", (insert, rows)
    assert rows == [(1,)]
    assert rows_of(count) == [(1,)]
