"""Nobody unauthenticated makes the server hold memory, or guess passwords faster in parallel.

- Before login, frames are capped small: 30 connections that announce and send a
  16 MB first message leave the server's peak memory flat, and a normal client
  still logs in meanwhile.
- Connections that have not finished login are capped, per address and in total.
- Login attempts in flight count against the address and the user: 30 guesses sent
  at once get their verdicts one throttle step apart, as if sent in turn.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from pathlib import Path

import pytest

import casemate
from tests.access.test_limits import server_with
from tests.conftest import ADMIN_PASSWORD, set_setting

MB = 1024 * 1024


def peak_rss(pid: int) -> int:
    """The process's peak resident memory in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _open(port: int, encrypted: bool) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if not encrypted:
        return s
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # only the server's memory matters
    return ctx.wrap_socket(s)


def flood_one(port: int, size: int, stop: threading.Event, encrypted: bool = False) -> None:
    """Announce a ``size``-byte HELLO and send it, until the server stops taking it."""
    chunk = b"\x00" * MB
    try:
        with _open(port, encrypted) as s:
            s.sendall(struct.pack(">cI", b"H", size))
            for _ in range(size // MB):
                if stop.is_set():
                    return
                s.sendall(chunk)
            s.recv(100)
    except OSError:
        pass  # refused or reset: what the fixed server does


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "tls"])
def test_flood_of_large_first_messages_keeps_memory_flat(make_db, server_factory,  # type: ignore[no-untyped-def]
                                                         encrypted: bool) -> None:
    db = make_db(encrypted=encrypted)
    set_setting(db, "login_timeout_seconds", "20")
    server = server_factory(db)
    with server.connect() as c:  # warm up: first login, storage open
        c.execute("SELECT 1")
    before = peak_rss(server.pid)
    stop = threading.Event()
    threads = [threading.Thread(target=flood_one, args=(server.port, 16 * MB, stop, encrypted))
               for _ in range(30)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        with server.connect() as c:  # a normal client logs in during the flood
            assert c.execute("SELECT 1").fetchall() == [(1,)]
        assert time.monotonic() - t0 < 5
    finally:
        for t in threads:
            t.join(30)
        stop.set()
    grown = peak_rss(server.pid) - before
    print(f"peak memory grew by {grown / MB:.1f} MB")
    assert grown < 16 * MB, f"peak memory grew by {grown // MB} MB"


def test_prelogin_frame_cap_is_raised_after_login(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_with(make_db, server_factory)
    with server.connect() as c:  # a 1 MB parameter: far above the pre-login cap
        assert c.execute("SELECT length(?)", ("x" * MB,)).fetchone() == (MB,)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(struct.pack(">cI", b"H", 64 * 1024))
        reply = s.recv(4096)
    assert reply[:1] == b"E" and b"54000" in reply


def _hold(port: int, n: int) -> list[socket.socket]:
    """``n`` connections that send one byte of a HELLO and then nothing."""
    held = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"H")
        held.append(s)
    return held


def _refused(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        return s.recv(4096)


def test_unauthenticated_connections_are_capped(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_with(make_db, server_factory, login_timeout_seconds="20",
                         max_unauthenticated_per_address="5")
    held = _hold(server.port, 5)
    try:
        time.sleep(0.3)
        reply = _refused(server.port)
        assert reply[:1] == b"E" and b"53300" in reply
        assert b"max_unauthenticated_per_address" in reply
        with pytest.raises(casemate.OperationalError) as e:
            server.connect()
        assert e.value.code == "53300"
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)  # closed connections give their place back
    with server.connect() as c:
        assert c.execute("SELECT 1").fetchall() == [(1,)]


def test_total_unauthenticated_cap(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_with(make_db, server_factory, login_timeout_seconds="20",
                         max_unauthenticated_connections="4")
    held = _hold(server.port, 4)
    try:
        time.sleep(0.3)
        assert b"max_unauthenticated_connections" in _refused(server.port)
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    conns = [server.connect() for _ in range(5)]  # logged-in sessions do not count
    try:
        assert all(c.execute("SELECT 1").fetchone() == (1,) for c in conns)
    finally:
        for c in conns:
            c.close()

def _guess(port: int, results: list[tuple[float, str]], lock: threading.Lock) -> None:
    try:
        casemate.connect(host="127.0.0.1", port=port, user="admin", password="wrong-guess",
                         connect_timeout=30).close()
        code = "ok"
    except casemate.Error as e:
        code = str(e.code)
    with lock:
        results.append((time.monotonic(), code))


def test_parallel_guesses_are_not_faster(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    step = 0.4
    server = server_with(make_db, server_factory, login_timeout_seconds="3",
                         throttle_after_failures="1", throttle_base_delay_seconds=str(step),
                         throttle_max_delay_seconds=str(step))
    results: list[tuple[float, str]] = []
    lock = threading.Lock()
    t0 = time.monotonic()
    threads = [threading.Thread(target=_guess, args=(server.port, results, lock))
               for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    verdicts = sorted(t - t0 for t, code in results if code == "28P01")
    throttled = [code for _, code in results if code == "53300"]
    assert len(verdicts) + len(throttled) == 30, results
    # One verdict per step at most, however many guesses are in flight (before: 30 in ~1 s).
    assert len(verdicts) <= 3 / step + 3, verdicts
    for i, t in enumerate(verdicts[2:], start=2):
        assert t >= (i - 1) * step * 0.9, verdicts
    # The right password still gets in once the queue has drained.
    time.sleep(step * 2)
    with casemate.connect(host="127.0.0.1", port=server.port, user="admin",
                          password=ADMIN_PASSWORD) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
