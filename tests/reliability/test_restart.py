"""Server restart under connected clients: idle connections reconnect by themselves (here
across a switch from plain to encrypted on the same port), an open transaction is reported
lost exactly once, and the shutdown notice reaches the clients."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

import casemate
from casemate.errors import Codes
from tests.conftest import set_setting


def _ids(conn: casemate.Connection) -> set[int]:
    rows = conn.execute("SELECT id FROM t").fetchall()
    conn.commit()
    return {r[0] for r in rows}


def _restart_encrypted(server, db: Path, server_factory):  # type: ignore[no-untyped-def]
    """SIGTERM the running server, switch encryption on, start again on the same port."""
    port = server.port
    assert server.stop(signal.SIGTERM) == 0
    set_setting(db, "encrypt_client_server_connections", "true")
    new = server_factory(db, port=port)
    assert new.port == port and new.mode == "encrypted"
    return new


def test_clients_survive_restart_and_switch_to_encryption(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    server = server_factory(db)
    assert server.mode == "plain"
    setup = server.connect()
    setup.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT)")
    setup.cursor().executemany("INSERT INTO t (id, who) VALUES (?, ?)",
                               [(i, "committed") for i in range(1, 6)])
    setup.commit()
    setup.close()

    a = server.connect()  # idle, never used
    b = server.connect()  # idle, with a cursor that was used
    c = server.connect()  # inside a transaction
    d = server.connect(reconnect_attempts=0)  # idle, must NOT reconnect
    heard: dict[str, list[tuple[str, str]]] = {"a": [], "b": []}
    a.on_notice = lambda code, text: heard["a"].append((code, text))
    b.on_notice = lambda code, text: heard["b"].append((code, text))
    try:
        for conn in (a, b, c, d):
            assert not conn.security.encrypted
        cur_b = b.cursor()
        cur_b.execute("SELECT who FROM t WHERE id = ?", (1,))
        assert cur_b.fetchall() == [("committed",)]
        b.commit()  # ends the read transaction: B is idle
        c.execute("INSERT INTO t (id, who) VALUES (100, 'uncommitted')")
        assert c.in_transaction

        server = _restart_encrypted(server, db, server_factory)

        # A and B: no code change, the statement just works, now encrypted.
        assert a.execute("SELECT count(*) FROM t").fetchone() == (5,)
        a.commit()
        cur_b.execute("SELECT who FROM t WHERE id = ?", (2,))
        assert cur_b.fetchall() == [("committed",)]
        b.commit()
        for conn in (a, b):
            assert conn.security.encrypted, conn.security
            assert conn.generation == 1
        assert heard["a"] == [(Codes.ADMIN_SHUTDOWN, "server is shutting down")]
        assert heard["b"] == [(Codes.ADMIN_SHUTDOWN, "server is shutting down")]

        # C: the lost transaction is reported once, with the reason...
        with pytest.raises(casemate.OperationalError) as info:
            c.execute("SELECT count(*) FROM t")
        err = info.value
        assert err.code == Codes.CONNECTION_FAILURE
        assert "rolled back" in err.message and "nothing of it was committed" in err.message
        assert "server is shutting down" in err.message
        assert (Codes.ADMIN_SHUTDOWN, "server is shutting down") in c.notices
        assert not c.in_transaction
        # ... then C works again: reconnected, encrypted, its row gone, committed rows there.
        assert _ids(c) == {1, 2, 3, 4, 5}
        assert c.security.encrypted and c.generation == 1
        c.execute("INSERT INTO t (id, who) VALUES (101, 'after restart')")
        c.commit()
        assert _ids(a) == {1, 2, 3, 4, 5, 101}

        # D (reconnect_attempts=0): an error instead of a reconnection, and it stays so.
        with pytest.raises(casemate.OperationalError) as info:
            d.execute("SELECT 1")
        assert info.value.code == Codes.CONNECTION_FAILURE
        assert "rolled back" not in info.value.message  # D had no transaction
        assert (Codes.ADMIN_SHUTDOWN, "server is shutting down") in d.notices
        assert d.generation == 0
        with pytest.raises(casemate.OperationalError):
            d.execute("SELECT 1")

        # The server saw the reconnections as encrypted logins, and D never came back.
        columns, rows = a.admin_table("sessions")
        enc = columns.index("encrypted")
        assert len(rows) == 3 and all(r[enc] for r in rows)
    finally:
        for conn in (a, b, c, d):
            conn.close()


def test_idle_client_waits_for_the_server_to_come_back(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    """The statement issued while the server is down succeeds once it is back (retries with
    backoff), and the client sees the shutdown notice through on_notice."""
    db = make_db()
    server = server_factory(db)
    conn = server.connect(reconnect_delay=0.1)
    notices: list[tuple[str, str]] = []
    conn.on_notice = lambda code, text: notices.append((code, text))
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    port = server.port
    assert server.stop(signal.SIGTERM) == 0

    result: list[object] = []

    def work() -> None:
        try:
            result.append(conn.execute("SELECT count(*) FROM t").fetchone())
            conn.commit()
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            result.append(e)

    t = threading.Thread(target=work)
    t0 = time.monotonic()
    t.start()
    time.sleep(0.8)  # the client is retrying now: nobody listens on the port
    assert t.is_alive()
    server_factory(db, port=port)
    t.join(30)
    try:
        assert not t.is_alive()
        assert result == [(1,)], result
        assert time.monotonic() - t0 < 15
        assert conn.generation == 1 and not conn.security.encrypted
        assert notices == [(Codes.ADMIN_SHUTDOWN, "server is shutting down")]
    finally:
        conn.close()


def test_no_reconnect_after_a_failed_transaction_is_silent(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    """commit() of a transaction lost in a restart raises; it never reports success."""
    db = make_db()
    server = server_factory(db)
    conn = server.connect()
    try:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        conn.commit()
        conn.execute("INSERT INTO t VALUES (1)")
        server = _restart_encrypted(server, db, server_factory)
        with pytest.raises(casemate.OperationalError, match="rolled back"):
            conn.commit()
        assert _ids(conn) == set()
        assert conn.security.encrypted
    finally:
        conn.close()
