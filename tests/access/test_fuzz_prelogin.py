"""Bounded, seeded fuzzing of everything a client can send before logging in.

Random byte strings and random well-framed messages of random types (with random msgpack
bodies) go to a real server, many connections at a time.  Every connection must be closed
by the server (protocol error or login timeout); meanwhile a logged-in client keeps working;
afterwards the server is alive, has not logged an internal error, and its memory is bounded.
"""

from __future__ import annotations

import random
import socket
import ssl
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack
import psutil
import pytest

import casemate
from casemate.protocol import Msg
from tests.conftest import ADMIN_PASSWORD, ServerProcess, set_setting

SEED = 0xCA5E
CONNECTIONS = 200
CLIENT_LETTERS = [m.value for m in Msg]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(11 if depth < 3 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.random() * 10 ** rng.randrange(-5, 300)
    if kind == 4:
        return "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(40)))
    if kind == 5:
        return rng.randbytes(rng.randrange(40))
    if kind == 6:
        return rng.choice(["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "n,,n=admin,r=abc",
                           "c=biws,r=abc,p=AAAA", "n,,n=,r=", "p=tls-server-end-point,,n=a,r=x",
                           "y,,n=admin,r=" + "x" * 50])
    if kind == 7:
        return msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.randrange(12)))
    if kind == 8:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == 9:
        return {random_value(rng, 3) if rng.random() < 0.3 else
                rng.choice(["protocol", "program", "host", "x"]): random_value(rng, depth + 1)
                for _ in range(rng.randrange(5))}
    return (rng.choice(["SCRAM-SHA-256", "PLAIN", ""]), random_value(rng, depth + 1))


def frame(letter: bytes, body: bytes) -> bytes:
    return letter + struct.pack(">I", len(body)) + body


def packed(rng: random.Random, value: Any) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError):
        return rng.randbytes(8)


def hello(rng: random.Random) -> bytes:
    body = {"protocol": rng.choice([1, 1, 1, 0, 2, "1", None, 2**40]),
            "program": random_value(rng), "host": random_value(rng)}
    return frame(b"H", packed(rng, body))


def payload(rng: random.Random) -> bytes:
    """One of several shapes of pre-login garbage."""
    kind = rng.randrange(8)
    if kind == 0:  # pure noise
        return rng.randbytes(rng.randrange(1, 400))
    if kind == 1:  # noise behind a valid type letter
        return rng.choice(CLIENT_LETTERS) + rng.randbytes(rng.randrange(0, 200))
    if kind == 2:  # well framed, random type, random body
        letter = rng.choice(CLIENT_LETTERS + [bytes([rng.randrange(256)])])
        return frame(letter, packed(rng, random_value(rng)))
    if kind == 3:  # well framed, body that is not msgpack
        return frame(rng.choice(CLIENT_LETTERS), rng.randbytes(rng.randrange(1, 100)))
    if kind == 4:  # a length that lies (too long: the server waits; huge: refused at once)
        letter = rng.choice(CLIENT_LETTERS)
        n = rng.choice([rng.randrange(100, 5000), 2**32 - 1, 2**31, 64 * 1024 * 1024])
        return letter + struct.pack(">I", n) + rng.randbytes(rng.randrange(50))
    if kind == 5:  # a hello, then random messages of random types
        out = hello(rng)
        for _ in range(rng.randrange(1, 4)):
            out += frame(rng.choice(CLIENT_LETTERS), packed(rng, random_value(rng)))
        return out
    if kind == 6:  # a hello and a SCRAM start with random contents
        first = rng.choice(["n,,n=admin,r=" + rng.randbytes(6).hex(), "n,,n=\x00,r=",
                            "p=tls-server-end-point,,n=admin,r=x", str(random_value(rng))])
        out = hello(rng) + frame(b"S", packed(rng, ("SCRAM-SHA-256", first)))
        if rng.random() < 0.5:
            out += frame(b"s", packed(rng, rng.choice(
                ["c=biws,r=x,p=" + rng.randbytes(32).hex(), random_value(rng)])))
        return out
    return b"\x16\x03" + rng.randbytes(rng.randrange(0, 300))  # TLS-looking on a plain server


def _tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the fuzzer does not care who the server is
    return ctx


TLS_CONTEXT = _tls_context()


def poke(port: int, data: bytes, half_close: bool, use_tls: bool = False) -> str:
    """Send ``data`` (inside TLS if ``use_tls``); return how the server ended the connection:
    "eof" or "reset" ("open" if it did not within the socket timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        s: socket.socket = raw
        if use_tls:
            s = TLS_CONTEXT.wrap_socket(raw)
        try:
            try:
                s.sendall(data)
                if half_close and not use_tls:
                    s.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                return "reset"
            received = 0
            try:
                while chunk := s.recv(65536):
                    received += len(chunk)
                    assert received < 1_000_000, "the server keeps talking to garbage"
            except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
                return "reset"
            except TimeoutError:
                return "open"
            return "eof"
        finally:
            if use_tls:
                s.close()


class Heartbeat(threading.Thread):
    """A logged-in client running statements throughout."""

    def __init__(self, server: ServerProcess) -> None:
        super().__init__(daemon=True)
        self.conn = server.connect(reconnect_attempts=0)
        self.stop = threading.Event()
        self.count = 0
        self.slowest = 0.0
        self.errors: list[str] = []

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                t = time.monotonic()
                got = self.conn.execute("SELECT ?", (self.count,)).fetchall()
                self.conn.commit()
                self.slowest = max(self.slowest, time.monotonic() - t)
                assert got == [(self.count,)]
                self.count += 1
                time.sleep(0.01)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(e))

    def finish(self) -> None:
        self.stop.set()
        self.join(10)
        self.conn.close()


def rss(server: ServerProcess) -> int:
    assert server.proc is not None
    return int(psutil.Process(server.proc.pid).memory_info().rss)


def fuzz(server: ServerProcess, n: int, seed: int, tls_share: float) -> dict[str, int]:
    rng = random.Random(seed)
    jobs = [(payload(rng), rng.random() < 0.2, rng.random() < tls_share) for _ in range(n)]
    with ThreadPoolExecutor(max_workers=40) as pool:
        results = list(pool.map(lambda j: poke(server.port, *j), jobs))
    return {k: results.count(k) for k in set(results)}


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_prelogin_fuzz(make_db, server_factory, encrypted: bool) -> None:  # type: ignore[no-untyped-def]
    db = make_db(encrypted=encrypted)
    set_setting(db, "login_timeout_seconds", "1")
    set_setting(db, "throttle_max_delay_seconds", "0.5")
    # Fuzzed SCRAM exchanges for "admin" fail and are throttled; keep the delay cap below the
    # login timeout (as the settings file advises) so the final real login is only delayed.
    set_setting(db, "throttle_max_delay_seconds", "0.3")
    server = server_factory(db)
    heart = Heartbeat(server)
    heart.start()
    try:
        with server.connect() as warm:  # a full login path, before measuring
            warm.execute("SELECT 1")
        before = rss(server)
        t = time.monotonic()
        # On the encrypted server most payloads travel inside TLS, reaching the session.
        outcome = fuzz(server, CONNECTIONS, SEED + encrypted, 0.8 if encrypted else 0.0)
        took = time.monotonic() - t
    finally:
        heart.finish()
    assert set(outcome) <= {"eof", "reset"}, outcome  # the server closed every connection
    assert took < 30, took
    assert not heart.errors, heart.errors
    assert heart.count > 20 and heart.slowest < 2.0, (heart.count, heart.slowest)
    assert server.proc is not None and server.proc.poll() is None
    after = rss(server)
    assert after < 300 * 1024 * 1024 and after - before < 64 * 1024 * 1024, (before, after)
    with server.connect() as c:  # still serving new logins
        assert c.execute("SELECT 42").fetchall() == [(42,)]
    assert "Traceback" not in server.log() and "internal error" not in server.log(), \
        server.log()[-3000:]
    logged_in = [line for line in (db / "Logs" / "audit.jsonl").read_text().splitlines()
                 if '"login_ok"' in line]
    assert len(logged_in) == 3  # heartbeat, warm-up, final check: no fuzzed login got in


def test_fuzz_is_deterministic() -> None:
    a = [payload(random.Random(SEED)) for _ in range(3)]
    b = [payload(random.Random(SEED)) for _ in range(3)]
    assert a == b
    _ = casemate, ADMIN_PASSWORD
