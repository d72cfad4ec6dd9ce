"""Bounded live fuzz after login, plain and encrypted: logged-in connections send mutated
frames (wrong type letters, random msgpack bodies, flipped bytes, lying length fields,
garbage).  Each such connection must be answered (ERROR or a normal reply, the server staying
in step) or closed, never hang; a well-behaved client keeps getting correct answers all
along; the server's memory stays bounded and it never reports an internal error."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest

import casemate
from casemate.errors import Codes
from casemate.protocol import NEED_DATA, Message, Msg, ProtocolConnection, Role, codec
from casemate.protocol.core import State

ITERATIONS = 150  # per mode; seeded, so every run sends the same bytes
SEED = 20240611
RSS_GROWTH_LIMIT = 100 * 1024 * 1024
ANSWER_TIMEOUT = 5.0  # a frame the server can parse must be answered or refused within this
WAIT_PROBE = 0.15  # for bytes that may leave the server waiting: then we half-close (EOF)
CLIENT_TYPES = {Msg.QUERY, Msg.EXECUTE_MANY, Msg.FETCH, Msg.CLOSE_PORTAL, Msg.COMMIT,
                Msg.ROLLBACK, Msg.SYNC, Msg.ADMIN, Msg.TERMINATE}


def _templates(rng: random.Random) -> list[tuple[Msg, Any]]:
    portal = rng.randrange(1, 50)
    return [
        (Msg.QUERY, (portal, "SELECT id, v FROM fz WHERE id < ?", (5,), True, 100)),
        (Msg.QUERY, (portal, "INSERT INTO fz (v) VALUES (?)", ("x",), True, 100)),
        (Msg.QUERY, (portal, "SELECT * FROM fz", (), False, 1)),
        (Msg.EXECUTE_MANY, ("INSERT INTO fz (v) VALUES (?)", (("a",), ("b",)), True)),
        (Msg.FETCH, (portal, 10)),
        (Msg.CLOSE_PORTAL, (portal,)),
        (Msg.COMMIT, None),
        (Msg.ROLLBACK, None),
        (Msg.SYNC, None),
        (Msg.ADMIN, ("status", {})),
    ]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(12 if depth < 3 else 9)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([0, -1, 1, 2**31, -(2**63), 2**64 - 1, rng.randrange(-1000, 1000)])
    if kind == 2:
        return rng.choice(["", "SELECT 1", "status", "x" * rng.randrange(200), "\u00e9\u4e2d"])
    if kind == 3:
        return rng.randbytes(rng.randrange(20))
    if kind == 4:
        return rng.choice([0.5, float("inf"), float("nan"), -0.0])
    if kind == 5:
        return rng.choice([True, False])
    if kind in (6, 7, 8):  # a raw extension value, possibly not decodable
        return ("ext", rng.randrange(-128, 128), rng.choice(
            [b"2024-02-30", b"NaN", b"1e99999", b"\xff\xfe", b"", rng.randbytes(8)]))
    if kind in (9, 10):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(7))]
    return {_random_value(rng, 3) if rng.random() < 0.3 else f"k{i}": _random_value(rng, depth + 1)
            for i in range(rng.randrange(4))}


def _pack_random(rng: random.Random) -> bytes:
    """msgpack of a random value, extension values included (codec.pack cannot make those)."""
    def enc(v: Any) -> bytes:
        if isinstance(v, tuple) and len(v) == 3 and v[0] == "ext":
            return b"\xc7" + struct.pack(">Bb", len(v[2]), v[1]) + v[2]
        if isinstance(v, list):
            return codec.pack_array_of_packed([enc(x) for x in v])
        if isinstance(v, dict):
            items = [(enc(k) if not isinstance(k, list | dict) else enc(str(k)), enc(x))
                     for k, x in v.items()]
            head = b"\xdf" + struct.pack(">I", len(items))
            return head + b"".join(k + x for k, x in items)
        return codec.pack(v)
    return enc(_random_value(rng))


def _frame(t: bytes, body: bytes, length: int | None = None) -> bytes:
    return struct.pack(">cI", t, len(body) if length is None else length) + body


# Mutations after which the server may rightly wait for more bytes (a length field that
# promises more than follows): for those we half-close after WAIT_PROBE and expect a close.
MAY_WAIT = {"truncate", "long", "pipeline", "garbage"}
# Well-framed bodies of the wrong shape, tried for every request type.
SHAPES: list[Any] = [None, (), {}, 0, "x", (None,), (None, None), (1, "SELECT 1", None, True, None),
                     (1,), ("SELECT 1", ((1,),), True), ("status", None), (-1, 2**64 - 1)]


def _mutation(rng: random.Random) -> tuple[str, bytes]:
    """One mutated request: (kind, bytes)."""
    msg, body = rng.choice(_templates(rng))
    payload = codec.pack(body)
    kind = rng.choice(["type", "body", "flip", "truncate", "long", "oversize", "pipeline",
                       "garbage", "body", "flip"])
    if kind == "type":
        return kind, _frame(rng.choice([m.value for m in Msg]), payload)
    if kind == "body":
        return kind, _frame(msg.value, _pack_random(rng))
    if kind == "flip":
        b = bytearray(payload)
        for _ in range(rng.randrange(1, 5)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return kind, _frame(msg.value, bytes(b))
    if kind == "truncate":  # the length field is short: the rest is parsed as the next frame
        return kind, _frame(msg.value, payload, rng.randrange(len(payload)))
    if kind == "long":  # the length field promises more than follows
        return kind, _frame(msg.value, payload, len(payload) + rng.randrange(1, 5000))
    if kind == "oversize":
        return kind, _frame(msg.value, payload, rng.choice([2**24 + 1, 2**31, 2**32 - 1]))
    if kind == "pipeline":
        return kind, b"".join(_mutation(rng)[1] for _ in range(rng.randrange(2, 5)))
    return kind, rng.randbytes(rng.randrange(1, 64))


@dataclass
class Outcome:
    answered: int = 0  # the probe after the mutated bytes was answered: the server kept in step
    closed: int = 0  # the server closed the connection
    closed_after_half_close: int = 0  # waited for bytes that never came, closed at our EOF
    error_codes: dict[str, int] = field(default_factory=dict)


def _reader() -> ProtocolConnection:
    p = ProtocolConnection(Role.CLIENT, max_frame=256 * 1024 * 1024)
    p.client_state = p.server_state = State.READY
    return p


def _run_case(url: str, data: bytes, marker: str, out: Outcome, may_wait: bool = False
              ) -> tuple[str, list[Message]]:
    """Send ``data`` then a probe query on a fresh logged-in connection; classify the end."""
    conn = casemate.connect(url, reconnect_attempts=0)
    chan, conn._chan = conn._chan, None  # from now on the raw socket is ours
    assert chan is not None
    sock = chan.sock
    probe = _frame(Msg.QUERY.value, codec.pack((987654, "SELECT ?", (marker,), False, 10)))
    replies: list[Message] = []
    proto = _reader()
    half_closed = False
    try:
        try:
            sock.sendall(data + probe)
        except OSError:
            pass  # the server may already have closed on the first bad bytes
        deadline = time.monotonic() + ANSWER_TIMEOUT
        sock.settimeout(WAIT_PROBE if may_wait else 0.5)
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no answer and no close within {ANSWER_TIMEOUT} s "
                                         f"after {data[:80]!r}") from None
                if may_wait and not half_closed:  # the server may wait for the rest of a frame
                    sock.shutdown(socket.SHUT_WR)  # TCP FIN (TLSSocket: TLS state kept)
                    half_closed = True
                continue
            except OSError:  # reset: closed (possibly before we read its ERROR)
                chunk = b""
            if not chunk:
                if half_closed:
                    out.closed_after_half_close += 1
                else:
                    out.closed += 1
                return "closed", replies
            proto.receive_data(chunk)
            while (ev := proto.next_event()) is not NEED_DATA:
                assert isinstance(ev, Message)
                replies.append(ev)
                if ev.type is Msg.ERROR:
                    assert isinstance(ev.body, dict) and isinstance(ev.body.get("code"), str)
                    assert isinstance(ev.body.get("message"), str) and ev.body["message"]
                    code = ev.body["code"]
                    out.error_codes[code] = out.error_codes.get(code, 0) + 1
                rows = (ev.body if ev.type is Msg.ROWS else
                        ev.body[1] if ev.type is Msg.RESULT else ())  # RESULT: small results
                if ((marker,),) in rows:
                    out.answered += 1
                    return "answered", replies
    finally:
        chan.close()


def _good_client(url: str, stop: threading.Event, done: list[int],
                 failures: list[BaseException]) -> None:
    try:
        with casemate.connect(url, reconnect_attempts=0) as conn:
            cur = conn.cursor()
            n = 0
            while not stop.is_set():
                n += 1
                cur.execute("INSERT INTO good (n) VALUES (?)", (n,))
                conn.commit()
                cur.execute("SELECT count(*), max(n) FROM good")
                assert cur.fetchall() == [(n, n)]
                cur.execute("SELECT ?, ?", (f"echo {n}", n * 2))
                assert cur.fetchall() == [(f"echo {n}", n * 2)]
                conn.commit()
                done.append(n)
    except BaseException as e:  # noqa: BLE001 - reported by the test
        failures.append(e)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_live_fuzz_after_login(make_db, server_factory, encrypted: bool) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(make_db(encrypted=encrypted))
    with server.connect() as conn:
        conn.execute("CREATE TABLE fz (id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("CREATE TABLE good (n INTEGER)")
        conn.cursor().executemany("INSERT INTO fz (v) VALUES (?)", [(str(i),) for i in range(50)])
        assert conn.security.encrypted == encrypted
    proc = psutil.Process(server.pid)

    stop = threading.Event()
    done: list[int] = []
    failures: list[BaseException] = []
    good = threading.Thread(target=_good_client, args=(server.url, stop, done, failures))
    good.start()
    rng = random.Random(SEED + encrypted)
    out = Outcome()
    kinds: dict[str, dict[str, int]] = {}
    try:
        time.sleep(0.2)
        rss0 = proc.memory_info().rss
        for i in range(ITERATIONS):
            kind, data = _mutation(rng)
            verdict, replies = _run_case(server.url, data, f"probe-{i}", out, kind in MAY_WAIT)
            kinds.setdefault(kind, {}).setdefault(verdict, 0)
            kinds[kind][verdict] += 1
            types = [m.type for m in replies]
            if kind == "oversize" or (kind == "type" and Msg(data[:1]) not in CLIENT_TYPES):
                # Refused from the header alone: an ERROR, then the connection is closed.
                assert verdict == "closed", (kind, data[:40], replies)
                if types:
                    assert types[-1] is Msg.ERROR
                    want = Codes.MESSAGE_TOO_LARGE if kind == "oversize" else (
                        Codes.PROTOCOL_VIOLATION)
                    assert replies[-1].body["code"] == want, replies
            assert not failures, failures
            assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        for msg in sorted(CLIENT_TYPES - {Msg.TERMINATE}, key=lambda m: m.value):
            for j, body in enumerate(SHAPES):
                verdict, replies = _run_case(server.url, _frame(msg.value, codec.pack(body)),
                                             f"shape-{msg.name}-{j}", out)
                kinds.setdefault("shape", {}).setdefault(verdict, 0)
                kinds["shape"][verdict] += 1
        assert not failures, failures
        rss1 = proc.memory_info().rss
    finally:
        stop.set()
        good.join(30)
    assert not failures, failures
    assert len(done) >= 10, "the well-behaved client made too little progress"
    assert rss1 - rss0 < RSS_GROWTH_LIMIT, f"server RSS grew by {(rss1 - rss0) / 1e6:.0f} MB"
    print(f"\n{'encrypted' if encrypted else 'plain'}: {out}; by kind: {kinds}; "
          f"good client ops {len(done)}; RSS {rss0 / 1e6:.0f} -> {rss1 / 1e6:.0f} MB")
    # Every outcome actually happened: the fuzz reached both the answered and the closed paths.
    assert out.answered > 0 and out.closed > 0
    total = ITERATIONS + len(SHAPES) * (len(CLIENT_TYPES) - 1)
    assert out.answered + out.closed + out.closed_after_half_close == total
    # The server still serves new clients normally.
    with server.connect() as conn:
        assert conn.execute("SELECT count(*) FROM good").fetchone() == (len(done),)
    log = server.log()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
    assert Codes.INTERNAL not in out.error_codes, out.error_codes


def test_probe_detects_a_server_that_keeps_in_step(plain_server) -> None:  # type: ignore[no-untyped-def]
    """The harness itself: a valid SYNC is answered; an unknown type letter is refused and closed."""
    out = Outcome()
    sync = _frame(Msg.SYNC.value, codec.pack(None))
    assert _run_case(plain_server.url, sync, "p1", out)[0] == "answered"
    verdict, replies = _run_case(plain_server.url, b"?\x00\x00\x00\x00", "p2", out)
    assert verdict == "closed"
    assert [m.type for m in replies] == [Msg.ERROR]
    assert replies[0].body["code"] == Codes.PROTOCOL_VIOLATION
    verdict, _ = _run_case(plain_server.url, _frame(Msg.SYNC.value, b"", 100), "p3", out, True)
    assert verdict == "closed" and out.closed_after_half_close == 1
