"""[limits] and per-address session limits against real servers: session counts, login and
idle timeouts, message and statement sizes."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

import casemate
from casemate.client.login import login_flow
from casemate.client.params import parse_params
from casemate.protocol import NEED_DATA, Message, Msg, ProtocolConnection, Role, encode_frame
from tests.conftest import ADMIN_PASSWORD, HAVE_V6, ServerProcess, set_setting


def connect(server: ServerProcess, host: str = "127.0.0.1", **kw: Any) -> casemate.Connection:
    return casemate.connect(host=host, port=server.port, user="admin", password=ADMIN_PASSWORD,
                            **kw)


def audit(db: Path) -> list[dict[str, Any]]:
    text = (db / "Logs" / "audit.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes; and how long that took."""
    sock.settimeout(timeout)
    t, data = time.monotonic(), b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.monotonic() - t


def frames(data: bytes) -> list[tuple[bytes, Any]]:
    out = []
    while data:
        kind, n = struct.unpack(">cI", data[:5])
        out.append((kind, msgpack.unpackb(data[5:5 + n])))
        data = data[5 + n:]
    return out


def server_with(make_db: Any, server_factory: Any, extra: tuple[str, ...] = (),
                **settings: str) -> ServerProcess:
    db = make_db()
    for k, v in settings.items():
        set_setting(db, k, v)
    return server_factory(db, extra=extra)  # type: ignore[no-any-return]


# -- session counts ---------------------------------------------------------------------------
def test_max_sessions(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_with(make_db, server_factory, max_sessions="3")
    conns = [connect(server) for _ in range(3)]
    try:
        with pytest.raises(casemate.OperationalError) as ei:
            connect(server)
        assert ei.value.code == "53300"
        assert "server full" in ei.value.message and "max_sessions" in ei.value.message
        for c in conns:  # the three sessions are unaffected
            assert c.execute("SELECT 1").fetchall() == [(1,)]
        conns.pop().close()
        deadline = time.monotonic() + 5
        while True:  # the closed session leaves the registry shortly after
            try:
                conns.append(connect(server))
                break
            except casemate.OperationalError as e:
                assert e.code == "53300"
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        for c in conns:
            c.close()


def test_max_sessions_per_address(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    extra = ("--host", "127.0.0.1", "--host", "::1") if HAVE_V6 else ()
    server = server_with(make_db, server_factory, extra, max_sessions_per_address="2")
    conns = [connect(server) for _ in range(2)]
    try:
        with pytest.raises(casemate.OperationalError) as ei:
            connect(server)
        assert ei.value.code == "53300"
        assert "127.0.0.1" in ei.value.message and "max_sessions_per_address" in ei.value.message
        if HAVE_V6:  # another address is counted apart
            for _ in range(2):
                conns.append(connect(server, "::1"))
            with pytest.raises(casemate.OperationalError, match="::1"):
                connect(server, "::1")
        for c in conns:
            assert c.execute("SELECT 1").fetchall() == [(1,)]
    finally:
        for c in conns:
            c.close()


# -- login timeout ----------------------------------------------------------------------------
@pytest.fixture
def quick_login(make_db, server_factory) -> ServerProcess:  # type: ignore[no-untyped-def]
    return server_with(make_db, server_factory, login_timeout_seconds="1",
                       throttle_max_delay_seconds="0.5")


def test_login_timeout_silent_client(quick_login: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", quick_login.port)) as s:
        data, took = read_until_closed(s, 10)
    assert data == b""  # nothing is said to a client that said nothing
    assert 0.8 <= took < 3, took


@pytest.mark.parametrize("sent", [b"H", b"H\x00\x00", b"H\x00\x00\x00\x40\x81"],
                         ids=["type-byte", "half-header", "half-body"])
def test_login_timeout_slow_handshake(quick_login: ServerProcess, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", quick_login.port)) as s:
        s.sendall(sent)
        data, took = read_until_closed(s, 10)
    assert 0.8 <= took < 3, took
    [(kind, body)] = frames(data)
    assert kind == b"E" and body["code"] == "08P01" and "in time" in body["message"]


def test_login_timeout_stall_after_hello(quick_login: ServerProcess) -> None:
    hello = msgpack.packb({"protocol": 1, "program": "staller", "host": "h"})
    with socket.create_connection(("127.0.0.1", quick_login.port)) as s:
        s.sendall(b"H" + struct.pack(">I", len(hello)) + hello)
        data, took = read_until_closed(s, 10)
    assert 0.8 <= took < 3, took
    got = frames(data)
    assert [k for k, _ in got] == [b"h", b"E"]
    assert got[1][1]["code"] == "08P01"


def test_login_timeout_stalled_tls_handshake(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db(encrypted=True)
    set_setting(db, "login_timeout_seconds", "1")
    set_setting(db, "throttle_max_delay_seconds", "0.5")
    server = server_factory(db)
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"\x16\x03\x01\x00")  # the start of a TLS record, then nothing
        data, took = read_until_closed(s, 10)
    assert data == b""
    assert took < 2, took  # one deadline from accept covers peek and TLS handshake


def test_silent_clients_do_not_block_logins(quick_login: ServerProcess) -> None:
    silent = [socket.create_connection(("127.0.0.1", quick_login.port)) for _ in range(30)]
    try:
        t = time.monotonic()
        with connect(quick_login) as c:
            assert c.execute("SELECT 1").fetchall() == [(1,)]
        assert time.monotonic() - t < 0.8
    finally:
        for s in silent:
            s.close()


# -- idle timeout -----------------------------------------------------------------------------
def test_idle_timeout(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    set_setting(db, "idle_timeout_seconds", "1")
    server = server_factory(db)
    with connect(server) as setup:
        setup.execute("CREATE TABLE t (x INTEGER)")
    in_txn = connect(server, reconnect_attempts=0)
    idle = connect(server, reconnect_attempts=0)
    auto = connect(server)  # default: reconnects an idle connection that was lost
    busy = connect(server, reconnect_attempts=0)
    try:
        in_txn.execute("INSERT INTO t VALUES (1)")  # holds the write lock, uncommitted
        assert in_txn.in_transaction
        for c in (idle, auto):
            c.execute("SELECT 1")
            c.commit()
        t_end = time.monotonic() + 1.8
        while time.monotonic() < t_end:  # active every 0.3 s: never idle for 1 s
            assert busy.execute("SELECT 2").fetchall() == [(2,)]
            busy.commit()
            time.sleep(0.3)
        with pytest.raises(casemate.OperationalError) as ei:
            in_txn.execute("SELECT count(*) FROM t")
        assert "rolled back" in ei.value.message
        assert any(code == "57P05" and "rolled back" in text for code, text in in_txn.notices)
        with pytest.raises(casemate.OperationalError):
            idle.execute("SELECT 1")
        assert any(code == "57P05" for code, _ in idle.notices)
        assert auto.execute("SELECT 3").fetchall() == [(3,)]
        assert auto.generation == 1  # a new session
        # The open transaction was rolled back and its write lock released: no wait here.
        busy.execute("INSERT INTO t VALUES (2)")
        busy.commit()
        t = time.monotonic()
        assert busy.execute("SELECT x FROM t").fetchall() == [(2,)]
        assert time.monotonic() - t < 0.5
    finally:
        for c in (in_txn, idle, auto, busy):
            c.close()
    reasons = [e["reason"] for e in audit(db) if e["event"] == "disconnect"]
    assert reasons.count("idle timeout") == 3  # in_txn, idle and auto's first session


# -- sizes ------------------------------------------------------------------------------------
@pytest.fixture
def small_messages(make_db, server_factory) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    yield server_with(make_db, server_factory, max_message_bytes="65536")


def raw_login(server: ServerProcess, user: str = "admin", password: str = ADMIN_PASSWORD
              ) -> tuple[socket.socket, ProtocolConnection]:
    """A logged-in plain connection driven by the sans-I/O core, so the test can send frames
    the real client would refuse to send."""
    params = parse_params(host="127.0.0.1", port=server.port, user=user, password=password)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    proto = ProtocolConnection(Role.CLIENT, max_frame=1 << 28)
    gen = login_flow(proto, params, None)
    out = next(gen)
    try:
        while True:
            if out is None:
                out = gen.send(next_message(sock, proto))
            else:
                sock.sendall(out)
                out = gen.send(None)
    except StopIteration:
        pass
    return sock, proto


def next_message(sock: socket.socket, proto: ProtocolConnection) -> Message:
    while (ev := proto.next_event()) is NEED_DATA:
        data = sock.recv(65536)
        assert data, "server closed the connection"
        proto.receive_data(data)
    assert isinstance(ev, Message)
    return ev


def test_max_message_bytes_client_side(small_messages: ServerProcess) -> None:
    """The server announces its limit; the client refuses an oversized request itself and
    the session goes on."""
    server = small_messages
    other = connect(server)
    big = connect(server, reconnect_attempts=0)
    try:
        assert big.execute("SELECT length(?)", ("y" * 60_000,)).fetchall() == [(60_000,)]
        big.commit()
        for size in (70_000, 8_000_000):
            with pytest.raises(casemate.ProgrammingError) as ei:
                big.execute("SELECT length(?)", ("x" * size,))
            assert ei.value.code == "54000"
            assert "65536" in ei.value.message
        assert big.execute("SELECT 1").fetchall() == [(1,)]  # same session
        assert big.generation == 0
        assert other.execute("SELECT 2").fetchall() == [(2,)]
    finally:
        big.close()
        other.close()


@pytest.mark.parametrize("size", [200_000, 8_000_000])
def test_max_message_bytes_server_side(small_messages: ServerProcess, size: int) -> None:
    """A client that ignores the announced limit: the server refuses the frame from its
    header (54000) and closes that connection; other sessions are unaffected."""
    server = small_messages
    other = connect(server)
    sock, proto = raw_login(server)
    try:
        query = encode_frame(Msg.QUERY, (1, "SELECT length(?)", ("x" * size,), False, 100))
        try:
            sock.sendall(query)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed while we were still sending: also a refusal
        data, took = read_until_closed(sock, 10)
        assert took < 5
        got = frames(data)
        # What arrives before the close (a reset may swallow it for a huge frame) is the
        # 54000 error and nothing else.
        assert all(k == b"E" and b["code"] == "54000" for k, b in got), got
        if size == 200_000:
            assert got and "65536" in got[0][1]["message"]
        assert other.execute("SELECT 2").fetchall() == [(2,)]
        other.commit()
    finally:
        sock.close()
        other.close()
    assert server.proc is not None and server.proc.poll() is None
    reasons = [e["reason"] for e in audit(server.db) if e["event"] == "disconnect"]
    assert any("65536" in r for r in reasons), reasons


def test_max_statement_bytes(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_with(make_db, server_factory, max_statement_bytes="1000")

    def select_of(n: int) -> str:
        sql = "SELECT '" + "x" * (n - 9) + "'"
        assert len(sql.encode()) == n
        return sql

    with connect(server) as c:
        assert c.execute(select_of(1000)).fetchall() == [("x" * 991,)]
        with pytest.raises(casemate.ProgrammingError) as ei:
            c.execute(select_of(1001))
        assert ei.value.code == "54000"
        assert "1001" in ei.value.message and "max_statement_bytes" in ei.value.message
        assert ei.value.hint and "parameters" in ei.value.hint
        # Counted in bytes, not characters.
        euros = "SELECT '" + "€" * 340 + "'"  # 349 characters, 1029 bytes
        with pytest.raises(casemate.ProgrammingError) as ei:
            c.execute(euros)
        assert ei.value.code == "54000"
        with pytest.raises(casemate.ProgrammingError) as ei:
            c.cursor().executemany("INSERT INTO nowhere VALUES (?) -- " + "x" * 1000, [(1,)])
        assert ei.value.code == "54000"
        # The session goes on; large values travel as parameters.
        assert c.execute("SELECT length(?)", ("v" * 50_000,)).fetchall() == [(50_000,)]


def test_threads_hammering_limits_leave_the_server_alive(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_with(make_db, server_factory, max_sessions="4")
    errors: list[str] = []
    ok = [0]

    def worker() -> None:
        for _ in range(5):
            try:
                with connect(server) as c:
                    c.execute("SELECT 1").fetchall()
                ok[0] += 1
            except casemate.OperationalError as e:
                if e.code != "53300":
                    errors.append(repr(e))
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert ok[0] > 0
    with connect(server) as c:
        assert c.execute("SELECT 1").fetchall() == [(1,)]


