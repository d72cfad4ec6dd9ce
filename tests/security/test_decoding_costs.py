"""What a logged-in client can make the server spend on decoding its requests, against a
real server: a map whose keys all share one hash (quadratic decoding, on the event loop
every session shares), and requests that decode to many times their size queued behind
a slow one."""

from __future__ import annotations

import struct
from typing import Any

from tests.conftest import PeakRss, ServerProcess, worst_wait_during
from tests.security.test_redteam_one_path import login, socks  # noqa: F401 - a fixture
from tests.security.test_redteam_today import no_internal_errors, query, replies

# Python's tuple hash (xxHash-based, CPython 3.8+) over two ints, inverted: pairs (a, b)
# whose tuples all hash alike.  Text and bytes hash with a per-process seed instead.
_M = 2**64
_P1, _P2, _P5 = 11400714785074694791, 14029467366897019727, 2870177450012600261
_TARGET = 0x1234567890ABCDEF


def _after_first(h: int) -> int:
    acc = (_P5 + h * _P2) % _M
    acc = ((acc << 31) | (acc >> 33)) & (_M - 1)
    return (acc * _P1) % _M


def colliding_pairs(n: int) -> list[tuple[int, int]]:
    inv = pow(_P2, -1, _M)
    out: list[tuple[int, int]] = []
    a = 0
    while len(out) < n:
        a += 1
        hb = ((_TARGET - _after_first(a)) * inv) % _M
        if hb < 2**61 - 1:  # a non-negative int hashes to itself below the modulus
            out.append((a, hb))
    return out


def packed_map(keys: list[tuple[int, int]]) -> bytes:
    parts = [b"\xdf" + struct.pack(">I", len(keys))]
    for a, b in keys:  # key: array (a, b), value: nil
        parts.append(b"\x92\xcf" + struct.pack(">Q", a) + b"\xcf" + struct.pack(">Q", b) + b"\xc0")
    return b"".join(parts)


def frame(type_byte: bytes, body: bytes) -> bytes:
    return type_byte + struct.pack(">I", len(body)) + body


def test_the_keys_chosen_collide() -> None:
    pairs = colliding_pairs(50)
    assert len({hash(p) for p in pairs}) == 1 and len(set(pairs)) == 50


def colliding_keys_attack(server: ServerProcess, sock: Any, proto: Any) -> None:
    """Send a QUERY whose parameter is a map of 30,000 keys sharing one hash (0.7 MB;
    decoded, they took the event loop over ten seconds) while another session probes;
    assert it is refused at once and holds nobody up."""
    attack = frame(b"Q", b"\x95\x00\xa8SELECT 1" + packed_map(colliding_pairs(30_000))
                   + b"\xc2\x64")
    got = []

    def send_and_read() -> None:
        sock.sendall(attack)
        sock.settimeout(30)
        got.extend(replies(sock, proto, 1))

    with server.connect() as victim:
        stall = worst_wait_during(send_and_read, victim)
    assert got[-1].type.name == "ERROR" and got[-1].body["code"] == "08P01", got
    assert "not allowed for map key" in got[-1].body["message"]
    assert stall.worst < 2.0, stall  # every session waited while the keys were hashed
    no_internal_errors(server)


def test_a_map_of_colliding_keys_is_refused_without_holding_up_others(
        make_db, server_factory, socks) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    server: ServerProcess = server_factory(make_db())
    sock, proto = login(server, socks)
    colliding_keys_attack(server, sock, proto)


def test_requests_queued_behind_a_slow_one_are_bounded_in_bytes(
        make_db, server_factory, socks) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    # Each request is 1 MB on the wire and about 70 MB decoded (an array of a million
    # empty maps); eight of them queued behind a slow statement were all decoded before.
    server: ServerProcess = server_factory(make_db())
    sock, proto = login(server, socks)
    n = 1_000_000
    big = frame(b"Q", b"\x95\x00\xa8SELECT ?" + b"\x91\xdd" + struct.pack(">I", n)
                + b"\x80" * n + b"\xc2\x64")
    slow = query("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r "
                 "WHERE i < 5000000) SELECT count(*) FROM r")
    with PeakRss(server.pid, every=0.02) as rss:
        sock.sendall(slow + big * 8)
        sock.settimeout(60)
        got = replies(sock, proto, 9)
    finals = [m.type.name for m in got if m.type.name in ("RESULT", "ERROR")]
    assert finals == ["RESULT"] + ["ERROR"] * 8, finals  # a tuple is no parameter
    assert rss.grown < 300 * 1024 * 1024, f"server grew {rss.grown / 2**20:.0f} MiB"
    no_internal_errors(server)
