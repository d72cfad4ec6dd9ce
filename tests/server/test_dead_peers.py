"""A session that holds a transaction and goes quiet cannot keep the write lock for ever:
limits.idle_in_transaction_timeout_seconds, a client that stops reading, what
``casemate sessions`` shows, and the keepalive options on both sides (the network
namespace tests in tests/reliability/test_lan.py cut real links)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest

import casemate
from casemate.keepalive import enable_keepalive, keepalive_plan
from casemate.protocol import Msg
from tests.conftest import ADMIN_PASSWORD, set_setting
from tests.server.test_sessions import RawClient


def _server(make_db: Any, server_factory: Any, **settings: str) -> Any:
    db = make_db()
    for k, v in settings.items():
        set_setting(db, k, v)
    server = server_factory(db)
    with server.connect() as c:
        c.execute("CREATE TABLE t (x INTEGER)")
        c.commit()
    return server


def test_idle_in_transaction_is_rolled_back_and_told_why(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server = _server(make_db, server_factory, idle_in_transaction_timeout_seconds="1.5")
    holder = server.connect(reconnect_attempts=0)
    idle = server.connect(reconnect_attempts=0)
    other = server.connect(reconnect_attempts=0)
    try:
        idle.execute("SELECT 1").fetchall()
        idle.commit()  # idle, but outside a transaction: not concerned
        for _ in range(4):  # active every 0.5 s inside its transaction: kept
            holder.execute("INSERT INTO t VALUES (1)")
            time.sleep(0.5)
        assert holder.in_transaction
        t0 = time.monotonic()  # holder's last activity (about)
        other.execute("INSERT INTO t VALUES (2)")  # waits for the lock, up to 5 s
        waited = time.monotonic() - t0
        assert 1.0 < waited < 3.5, waited
        other.commit()
        with pytest.raises(casemate.OperationalError) as ei:
            holder.execute("SELECT 1")
        assert "rolled back" in ei.value.message
        assert any(code == "25P03" and "idle_in_transaction_timeout_seconds" in text
                   for code, text in holder.notices)
        assert idle.execute("SELECT 3").fetchall() == [(3,)]  # still the same session
        assert other.execute("SELECT count(*) FROM t").fetchall() == [(1,)]  # only other's
    finally:
        for c in (holder, idle, other):
            c.close()
    assert "idle in a transaction for 1.5 s" in server.log()


def test_idle_in_transaction_after_requests_served_at_once(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    """The transaction is opened by requests served in data_received while the session's
    task waits with no transaction (and no idle limit of its own): the limit still holds."""
    server = _server(make_db, server_factory, idle_in_transaction_timeout_seconds="1")
    conn = server.connect(reconnect_attempts=0)
    try:
        for _ in range(5):  # known to be short: served at once from now on
            conn.execute("SELECT count(*) FROM t").fetchall()
            conn.commit()
        time.sleep(0.3)
        conn.execute("INSERT INTO t VALUES (1)")  # opens the transaction
        time.sleep(2.5)
        with pytest.raises(casemate.OperationalError):
            conn.execute("SELECT 1")
        assert any(code == "25P03" for code, _ in conn.notices)
    finally:
        conn.close()


def test_sessions_show_transaction_and_write_lock(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server = _server(make_db, server_factory)
    writer, reader, admin = (server.connect() for _ in range(3))
    try:
        writer.execute("SELECT 1").fetchall()  # a transaction that has only read so far
        reader.execute("SELECT count(*) FROM t").fetchall()
        time.sleep(1.1)
        writer.execute("INSERT INTO t VALUES (1)")  # now it holds the write lock
        time.sleep(1.1)
        cols, rows = admin.admin_table("sessions")
        by_id = {r[0]: dict(zip(cols, r, strict=True)) for r in rows}
        w, r = by_id[writer.session_id], by_id[reader.session_id]
        a = by_id[admin.session_id]
        assert w["transaction_seconds"] >= 2.0 and 1.0 <= w["write_lock_seconds"] < 2.0
        assert w["transaction_since"] < w["write_lock_since"]
        assert r["transaction_seconds"] >= 2.0 and r["write_lock_seconds"] is None
        assert a["transaction_seconds"] is None and a["write_lock_since"] is None
        writer.commit()
        rows = admin.admin_table("sessions")[1]
        w = dict(zip(cols, next(x for x in rows if x[0] == writer.session_id), strict=True))
        assert w["transaction_seconds"] is None and w["write_lock_seconds"] is None
    finally:
        for c in (writer, reader, admin):
            c.close()


def test_sessions_command_shows_the_write_lock(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from casemate.cli.monitor import sessions
    server = _server(make_db, server_factory)
    with server.connect() as writer:
        writer.execute("INSERT INTO t VALUES (1)")
        sid = writer.session_id
        out = CliRunner().invoke(sessions, [server.url]).output
        rows = json.loads(CliRunner().invoke(sessions, [server.url, "--json"]).output)
    header = [h.strip() for h in out.splitlines()[0].split("|")]
    assert header[-2:] == ["txn", "lock"], header  # in the table a DBA reads
    mine = next(r for r in rows if r["id"] == sid)
    assert mine["write_lock_seconds"] >= 0 and mine["transaction_seconds"] >= 0
    others = [r for r in rows if r["id"] != sid]
    assert all(r["write_lock_seconds"] is None for r in others)  # only the writer holds it


def test_client_that_stops_reading_in_a_transaction_loses_its_lock(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    """Replies pile up unread (the client is alive: its kernel acknowledges everything):
    after the in-transaction limit the session ends and its lock is released."""
    server = _server(make_db, server_factory, idle_in_transaction_timeout_seconds="1.5")
    raw = RawClient(server.port)
    try:
        raw.login("admin", ADMIN_PASSWORD)
        raw.sock.sendall(raw.proto.send(Msg.QUERY, (1, "INSERT INTO t VALUES (1)", (), True,
                                                    100)))
        assert raw.recv().type is Msg.COMPLETE
        big = raw.proto.send(Msg.QUERY, (1, "SELECT zeroblob(1000000)", (), False, 100))
        raw.sock.sendall(big * 48)  # about 48 MB of replies, never read
        with server.connect(reconnect_attempts=0) as other:
            t0 = time.monotonic()
            other.execute("INSERT INTO t VALUES (2)")
            waited = time.monotonic() - t0
            other.commit()
            assert waited < 4.5, waited
            assert other.execute("SELECT x FROM t").fetchall() == [(2,)]
    finally:
        raw.close()
    assert "read no reply for 1.5 s in a transaction" in server.log()


def test_keepalive_plan_and_socket_options() -> None:
    assert keepalive_plan(30) == (15, 5, 3, 30000)
    assert keepalive_plan(3) == (1, 1, 3, 3000)
    for seconds in (4, 7.5, 31, 600, 3600):
        idle, interval, count, _ = keepalive_plan(seconds)
        assert seconds - 1 <= idle + interval * count <= seconds  # dead after about that
    with socket.socket() as s:
        enable_keepalive(s, 0)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        enable_keepalive(s, 30)  # the server's: no user timeout
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 15
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 0
        enable_keepalive(s, 30, user_timeout=True)  # the clients'
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30000


def test_clients_enable_keepalive_by_default(plain_server) -> None:  # type: ignore[no-untyped-def]
    with plain_server.connect() as conn:
        sock = conn._chan.sock
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30000
    with plain_server.connect(keepalive=0) as conn:
        assert conn._chan.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    with pytest.raises(casemate.InterfaceError, match="keepalive"):
        plain_server.connect(keepalive="-1")


async def _aio_keepalive(url: str) -> int:
    from casemate import aio
    conn = await aio.connect(url, keepalive=4)
    try:
        sock = conn._writer.get_extra_info("socket")  # type: ignore[union-attr]
        return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
    finally:
        await conn.close()


def test_asyncio_client_enables_keepalive(plain_server) -> None:  # type: ignore[no-untyped-def]
    assert asyncio.run(_aio_keepalive(plain_server.url)) == 4000


def test_live_client_that_reads_slowly_is_not_cut(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    """Outside a transaction a client may leave its replies unread for longer than the
    keepalive time: its kernel answers the probes, and the server sets no
    TCP_USER_TIMEOUT (Linux would apply it to the closed window and cut the client)."""
    server = _server(make_db, server_factory, keepalive_seconds="2")
    raw = RawClient(server.port)
    try:
        raw.login("admin", ADMIN_PASSWORD)
        big = raw.proto.send(Msg.QUERY, (1, "SELECT zeroblob(1000000)", (), False, 100))
        raw.sock.sendall(big * 24)  # about 24 MB of replies: buffers fill, window closes
        time.sleep(6)  # three times the keepalive time, reading nothing
        for _ in range(24):
            kind, (_, rows, _) = raw.result()
            assert kind == "rows" and len(rows[0][0]) == 1000000
    finally:
        raw.close()


async def _aio_idle_in_transaction(url: str) -> list[tuple[str, str]]:
    from casemate import aio
    conn = await aio.connect(url, reconnect_attempts=0)
    notices: list[tuple[str, str]] = []
    conn.on_notice = lambda code, text: notices.append((code, text))
    try:
        await conn.execute("INSERT INTO t VALUES (1)")
        await asyncio.sleep(2.5)
        with pytest.raises(casemate.OperationalError, match="rolled back"):
            await conn.execute("SELECT 1")
    finally:
        await conn.close()
    return notices


def test_asyncio_client_told_of_idle_transaction(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server = _server(make_db, server_factory, idle_in_transaction_timeout_seconds="1")
    notices = asyncio.run(_aio_idle_in_transaction(server.url))
    assert [code for code, _ in notices] == ["25P03"]
    with server.connect() as c:
        assert c.execute("SELECT count(*) FROM t").fetchall() == [(0,)]
