"""Red-team attacks on the event loop: one SQLite step the progress handler cannot split.

A statement trained short (same SQL text, small parameters) runs in the event loop; SQLite's
progress handler stops it between steps, but a single function call is one step.  Pattern
matching and substring search are quadratic in their arguments (``LIKE``, ``GLOB``,
``instr``, ``replace``, ``trim``), so values well under the event loop's size cap still
make one step last seconds.
"""

from __future__ import annotations

import collections
import contextlib
import socket
from types import SimpleNamespace

import msgpack
import pytest

import casemate
from casemate.protocol import Message, Msg, encode_frame
from casemate.testing import ServerProcess
from tests.access.test_limits import raw_login
from tests.conftest import worst_wait_during

A = "printf('%.*c', ?, 'a')"
QUADRATIC = {
    "like": (f"SELECT {A} LIKE '%' || {A} || 'b'", (200_000, 20_000)),
    "glob": (f"SELECT {A} GLOB '*' || {A} || 'b'", (200_000, 20_000)),
    "instr": (f"SELECT instr({A}, {A} || 'b') + instr({A}, {A} || 'c')",
              (250_000, 120_000) * 2),
    "like_function": (f"SELECT like('%' || {A} || 'b', {A})", (20_000, 200_000)),
}



@pytest.mark.parametrize("name", sorted(QUADRATIC))
def test_one_quadratic_function_cannot_stall_other_sessions(plain_server: ServerProcess,
                                                             name: str) -> None:
    sql, big = QUADRATIC[name]
    attacker = plain_server.connect()
    attacker.autocommit = True
    victim = plain_server.connect()
    for _ in range(30):  # teach the cost model that this SQL text is short
        attacker.execute(sql, (3, 1) * (len(big) // 2)).fetchall()
    for _ in range(20):
        victim.execute("SELECT 1").fetchall()
    worst, took, _ = worst_wait_during(lambda: attacker.execute(sql, big).fetchall(), victim)
    assert took > 0.3, f"the attack took {took:.2f} s: too short to mean anything"
    assert worst < 0.1, f"another session waited {worst * 1000:.0f} ms behind {name}"
    attacker.close()
    victim.close()


# Many steps, each a whole value's work: the cut-off is checked between steps, so how much
# runs between two checks (steps x value size) is what holds the event loop.
PRINTF = "length(printf('%.*c', ? - x % 2, 'a'))"  # ~7 ns a byte, one step
ROWS = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
        f"SELECT max({' + '.join([PRINTF] * 8)}) FROM c")


@pytest.mark.parametrize("size", [16_000, 250_000])
def test_steps_of_large_values_cannot_stall_other_sessions(plain_server: ServerProcess,
                                                           size: int) -> None:
    attacker = plain_server.connect()
    attacker.autocommit = True
    victim = plain_server.connect()
    for _ in range(30):
        attacker.execute(ROWS, (2,) + (3,) * 8).fetchall()
    for _ in range(20):
        victim.execute("SELECT 1").fetchall()
    worst, took, _ = worst_wait_during(
        lambda: attacker.execute(ROWS, (30_000_000 // size,) + (size,) * 8).fetchall(), victim)
    assert took > 0.3, f"the attack took {took:.2f} s: too short to mean anything"
    assert worst < 0.06, f"another session waited {worst * 1000:.0f} ms behind the attack"
    attacker.close()
    victim.close()


def test_a_view_redefined_to_match_patterns_leaves_the_event_loop(plain_server: ServerProcess
                                                                  ) -> None:
    # What EXPLAIN said of a statement (short steps) is forgotten when the schema changes:
    # the same SELECT through a view redefined to call LIKE is unbounded.
    admin = plain_server.connect()
    admin.execute("CREATE TABLE pairs (id INTEGER PRIMARY KEY, s TEXT, p TEXT)")
    # Values under the event loop's size cap (16 KiB), so only the LIKE steps are long.
    admin.execute("INSERT INTO pairs VALUES (1, 'a', 'a'), (2, printf('%.*c', 16000, 'a'), "
                  "'%' || printf('%.*c', 8000, 'a') || 'b')")
    admin.execute("CREATE VIEW v AS SELECT id, s = p AS m FROM pairs")
    admin.commit()
    attacker = plain_server.connect()
    attacker.autocommit = True
    victim = plain_server.connect()
    sql = "SELECT m FROM v WHERE id = ?"
    for _ in range(30):
        attacker.execute(sql, (1,)).fetchall()
    admin.execute("DROP VIEW v")
    admin.execute("CREATE VIEW v AS SELECT id, (s LIKE p) + (s LIKE p || '') + (s LIKE p || '') "
                  "+ (s LIKE p || '') AS m FROM pairs")
    admin.commit()
    for _ in range(20):
        attacker.execute(sql, (1,)).fetchall()
        victim.execute("SELECT 1").fetchall()
    worst, took, _ = worst_wait_during(lambda: attacker.execute(sql, (2,)).fetchall(), victim)
    assert took > 0.3, f"the attack took {took:.2f} s: too short to mean anything"
    assert worst < 0.1, f"another session waited {worst * 1000:.0f} ms behind the view"
    for c in (admin, attacker, victim):
        c.close()


def _one_frame(sock: socket.socket) -> tuple[bytes, bytes]:
    """(type byte, body) of the next frame the server sends."""
    data = b""
    while len(data) < 5 or len(data) < 5 + int.from_bytes(data[1:5], "big"):
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    return data[:1], data[5:5 + int.from_bytes(data[1:5], "big")]


def test_a_large_message_of_small_values_cannot_stall_other_sessions(
        plain_server: ServerProcess) -> None:
    """One QUERY of seven million one-element arrays (14 MB, under the 16 MiB limit):
    decoded at once it held the event loop, and every other session, for the whole of its
    decoding (a 16 MiB message of small nested values: 3-5 s).  Decoded a slice per turn
    of the loop (session.DECODE_SLICE), other sessions are served between slices; the
    large request is still answered, and its session goes on."""
    sock, _ = raw_login(plain_server)
    victim = plain_server.connect()
    victim.autocommit = True
    for _ in range(20):
        victim.execute("SELECT 1").fetchall()
    frame = encode_frame(Msg.QUERY, (1, "SELECT ?", (((0,),) * 7_000_000,), False, 100))
    reply: list[tuple[bytes, bytes]] = []

    def attack() -> None:
        sock.sendall(frame)
        reply.append(_one_frame(sock))
    try:
        worst, took, n = worst_wait_during(attack, victim)
        assert took > 0.3, f"the large request took {took:.2f} s: too short to mean anything"
        # Decoded at once: 805 ms of 1.00 s, 4 queries meanwhile.  Sliced, what is left is
        # Python's own work on seven million objects that no slice can split (a full
        # garbage collection among them, freeing them): 334 ms of 1.92 s, 194 queries.
        assert n >= 10 and worst < took / 2, (
            f"another session waited {worst * 1000:.0f} ms behind one large message "
            f"({took:.2f} s, {n} queries meanwhile)")
        kind, body = reply[0]
        assert kind == b"E"  # a list of arrays is no SQL value: the statement fails...
        assert msgpack.unpackb(body)["code"] != "08P01", body[:200]  # ...not the session
        sock.sendall(encode_frame(Msg.QUERY, (2, "SELECT 7", (), False, 100)))
        assert _one_frame(sock)[0] == Msg.RESULT.value  # the same session answers again
    finally:
        sock.close()
        victim.close()


def test_large_messages_take_turns_and_a_vanished_sender_passes_its_turn(
        plain_server: ServerProcess) -> None:
    """Large messages of several sessions decode one at a time (each partly built value
    can reach many times its message's size), in turn; a session that sends one and
    disconnects before it is decoded does not hold up the next; all the while other
    sessions are served."""
    gone, _ = raw_login(plain_server)
    senders = [raw_login(plain_server)[0] for _ in range(2)]
    victim = plain_server.connect()
    victim.autocommit = True
    frame = encode_frame(Msg.QUERY, (1, "SELECT ?", (((0,),) * 3_000_000,), False, 100))
    replies: list[bytes] = []

    def attack() -> None:
        gone.sendall(frame)
        gone.close()  # before its message is decoded
        for s in senders:
            s.sendall(frame)
        replies.extend(_one_frame(s)[0] for s in senders)
    try:
        worst_wait_during(attack, victim)  # (how long it waits: the test above)
        assert replies == [b"E", b"E"], replies  # both decoded, in turn, and answered
        for i, s in enumerate(senders):
            s.sendall(encode_frame(Msg.QUERY, (2, f"SELECT {i}", (), False, 100)))
            assert _one_frame(s)[0] == Msg.RESULT.value
    finally:
        for s in senders:
            s.close()
        victim.close()



class _Transport:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def test_nothing_more_is_read_while_a_large_message_waits_its_turn() -> None:
    """helper-38's attack: a session's large message waited behind others' to be decoded,
    reading paused; its inbox, filled over its limit in the same chunk, drained meanwhile,
    and the inbox's own resume of reading let the client stream gigabytes into a buffer
    no frame limit checked (3 GB in 15 s).  Reading stays off until the message is
    decoded, whatever else would resume it, and bytes that come anyway pause it again."""
    from casemate.protocol import Message
    from casemate.protocol.codec import Decoding
    from casemate.server.session import Session

    s = Session.__new__(Session)  # the state these two paths read, and nothing else
    t = _Transport()
    s.transport = t  # type: ignore[assignment]
    s.closed, s.paused, s.inbox_bytes = False, True, 2 << 20
    s.inbox = collections.deque([Message(Msg.QUERY, (1, "SELECT 1", (), False, 100))] * 2)
    s._decoding = (Msg.QUERY, Decoding(b"\x90", wrapped=True))
    s._take()
    s._take()  # the inbox is empty: on its own, reading would resume here
    assert "resume" not in t.calls and not s.paused
    s.server = SimpleNamespace(bytes_in=0)  # type: ignore[assignment]
    s.proto = SimpleNamespace(receive_data=lambda data: None)  # type: ignore[assignment]
    s.data_received(b"more")  # came anyway (the transport was resumed elsewhere)
    assert t.calls == ["pause"]




def test_large_messages_decode_one_at_a_time() -> None:
    """Server-wide, one large message decodes at a time (each partly built value can reach
    ~70 times its message's size: side by side, N sessions would hold N of them); the
    next session's slices start only when the first's message is whole, and a session
    closed while it waits passes its turn on."""
    import asyncio

    from casemate.protocol import NEED_DATA, RawFrame
    from casemate.protocol.codec import pack
    from casemate.server.session import DECODE_SLICE, Session

    body = pack([[0]] * DECODE_SLICE)  # a few slices' worth
    server = SimpleNamespace(large_decodes=collections.deque(), bytes_in=0)
    slices: list[str] = []  # whose slice ran, in order
    whole: list[str] = []   # whose message came out whole

    def session(name: str) -> Session:
        s = Session.__new__(Session)
        s.server = server  # type: ignore[assignment]
        s.transport = _Transport()  # type: ignore[assignment]
        s.closed, s.paused, s.inbox_bytes, s._holding = False, False, 0, False
        s.inbox, s._out, s._decoding = collections.deque(), [], None
        frames = iter([RawFrame(Msg.QUERY, body)])
        s.proto = SimpleNamespace(  # type: ignore[assignment]
            next_event=lambda _n: next(frames, NEED_DATA))
        real_slice, real_take = s._decode_slice, s._take_messages

        def one_slice() -> None:
            slices.append(name)
            real_slice()

        def take(first: Message | None, n: int) -> None:
            if first is not None:
                whole.append(name)
            else:
                real_take(first, n)
        s._decode_slice = one_slice  # type: ignore[method-assign]
        s._take_messages = take  # type: ignore[method-assign]
        return s

    async def run() -> None:
        a, b, c = session("a"), session("b"), session("c")
        for s in (a, b, c):
            s._take_messages(None, 0)  # each has a large message to decode
        assert list(server.large_decodes) == [a, b, c]
        b.closed = True  # gone while it waits
        for _ in range(10_000):
            if not server.large_decodes:
                break
            await asyncio.sleep(0)
        assert whole == ["a", "c"]
        first_c = slices.index("c")
        assert slices.count("a") > 2 and "a" not in slices[first_c:], slices  # not interleaved
        assert slices.count("b") == 1 and b._decoding is None  # its turn passed on at once
    asyncio.run(run())


def _huge_program(levels: int, tag: str) -> str:
    """Under 4 KiB of text (so the cost model keys it), a program SQLite takes long to
    compile and to list with EXPLAIN, neither of which its progress handler can stop:
    CTEs that are not materialized double it at every level (helper-39)."""
    ctes = ["c0(x) AS NOT MATERIALIZED (SELECT x FROM t)"] + [
        f"c{i}(x) AS NOT MATERIALIZED (SELECT x FROM c{i - 1} UNION ALL SELECT x FROM c{i - 1})"
        for i in range(1, levels + 1)]
    return (f"WITH {', '.join(ctes)} SELECT ?1 AS a, "
            f"CASE WHEN 1 THEN 1 ELSE (SELECT count(*) FROM c{levels}) END AS b /*{tag}*/")


def test_a_new_text_is_learnt_in_a_thread_not_in_the_event_loop(
        plain_server: ServerProcess) -> None:
    """Whether a statement may ever run in the event loop is learnt with an EXPLAIN; for
    a text never seen that ran in the event loop before the statement went to its worker
    thread, and another session waited most of the attack's time (helper-39: 0.4-0.9 s per
    new text, a fresh comment each time).  Now the worker thread learns it."""
    admin = plain_server.connect()
    admin.autocommit = True
    admin.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x INTEGER)")
    admin.execute("INSERT INTO t VALUES (1, 1)")
    attacker = plain_server.connect()
    attacker.autocommit = True
    for _ in range(20):
        admin.execute("SELECT 1").fetchall()
    sql = _huge_program(15, "first")
    worst, took, _ = worst_wait_during(lambda: attacker.execute(sql, (1,)).fetchall(), admin)
    assert took > 0.3, f"the attack took {took:.2f} s: too short to mean anything"
    assert worst < 0.4 * took, f"another session waited {worst:.2f} s of the {took:.2f} s"
    attacker.close()
    admin.close()


def test_a_new_text_sent_as_execute_many_is_learnt_in_a_thread(
        plain_server: ServerProcess) -> None:
    """The same attack through EXECUTE_MANY, which asked the same EXPLAIN in the event loop
    before choosing where to run (here SQLite then refuses a statement that returns rows,
    after the check)."""
    admin = plain_server.connect()
    admin.autocommit = True
    admin.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x INTEGER)")
    admin.execute("INSERT INTO t VALUES (1, 1)")
    attacker = plain_server.connect()
    attacker.autocommit = True
    for _ in range(20):
        admin.execute("SELECT 1").fetchall()
    sql = _huge_program(15, "many")

    def attack() -> None:
        with contextlib.suppress(casemate.Error):
            attacker.cursor().executemany(sql, [(1,), (2,)])
    worst, took, _ = worst_wait_during(attack, admin)
    assert took > 0.3, f"the attack took {took:.2f} s: too short to mean anything"
    assert worst < 0.4 * took, f"another session waited {worst:.2f} s of the {took:.2f} s"
    attacker.close()
    admin.close()
