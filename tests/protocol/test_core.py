"""Byte-level tests of the sans-I/O protocol core: framing and both state machines, no socket."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest

from casemate.errors import Codes, ProtocolError
from casemate.protocol import codec
from casemate.protocol.core import (
    HEADER_SIZE,
    NEED_DATA,
    Message,
    Msg,
    ProtocolConnection,
    Role,
    State,
    encode_frame,
)

LOGIN = [
    (Role.CLIENT, Msg.HELLO, {"version": 1}),
    (Role.SERVER, Msg.HELLO_OK, {"version": 1}),
    (Role.CLIENT, Msg.SASL_INITIAL, ("SCRAM-SHA-256", "n,,n=admin,r=abc")),
    (Role.SERVER, Msg.SASL_CHALLENGE, "r=abcdef,s=c2FsdA==,i=4096"),
    (Role.CLIENT, Msg.SASL_RESPONSE, "c=biws,r=abcdef,p=proof"),
    (Role.SERVER, Msg.AUTH_OK, {"v": "signature"}),
]


def events(conn: ProtocolConnection) -> list[Message]:
    out: list[Message] = []
    while (ev := conn.next_event()) is not NEED_DATA:
        assert isinstance(ev, Message)
        out.append(ev)
    return out


def header(type_byte: bytes, length: int) -> bytes:
    return struct.pack(">cI", type_byte, length)


def pair(logged_in: bool = True) -> tuple[ProtocolConnection, ProtocolConnection]:
    client, server = ProtocolConnection(Role.CLIENT), ProtocolConnection(Role.SERVER)
    if logged_in:
        for role, msg, body in LOGIN:
            src, dst = (client, server) if role is Role.CLIENT else (server, client)
            dst.receive_data(src.send(msg, body))
            assert events(dst) == [Message(msg, body)]
    return client, server


# -- handshake and state machines --------------------------------------------------------


def test_full_login_reaches_ready_on_both_sides() -> None:
    client, server = pair()
    for conn in (client, server):
        assert conn.client_state is State.READY
        assert conn.server_state is State.READY
        assert conn.buffered == 0


def test_query_before_login_is_refused_by_the_server() -> None:
    server = ProtocolConnection(Role.SERVER)
    server.receive_data(encode_frame(Msg.QUERY, ("SELECT 1", ())))
    with pytest.raises(ProtocolError) as ei:
        server.next_event()
    assert ei.value.code == Codes.PROTOCOL_VIOLATION
    assert "QUERY" in ei.value.message and "hello" in ei.value.message


def test_query_before_login_is_refused_by_the_client_too() -> None:
    client = ProtocolConnection(Role.CLIENT)
    with pytest.raises(ProtocolError) as ei:
        client.send(Msg.QUERY, ("SELECT 1", ()))
    assert ei.value.code == Codes.PROTOCOL_VIOLATION
    assert client.client_state is State.HELLO


CLIENT_MSGS = [Msg.HELLO, Msg.SASL_INITIAL, Msg.SASL_RESPONSE, Msg.QUERY, Msg.EXECUTE_MANY,
               Msg.FETCH, Msg.CLOSE_PORTAL, Msg.COMMIT, Msg.ROLLBACK, Msg.SYNC]
LOGIN_CLIENT = [m for r, m, _ in LOGIN if r is Role.CLIENT]


@pytest.mark.parametrize("done", range(len(LOGIN_CLIENT) + 1))
@pytest.mark.parametrize("msg", CLIENT_MSGS, ids=lambda m: m.name)
def test_server_accepts_only_the_next_login_step(done: int, msg: Msg) -> None:
    """After ``done`` client login steps the server accepts the next one only (then requests)."""
    server = ProtocolConnection(Role.SERVER)
    server.receive_data(b"".join(encode_frame(m, None) for m in LOGIN_CLIENT[:done]))
    assert len(events(server)) == done
    allowed = msg is LOGIN_CLIENT[done] if done < len(LOGIN_CLIENT) else (
        msg not in LOGIN_CLIENT)
    server.receive_data(encode_frame(msg, None))
    if allowed:
        assert events(server) == [Message(msg, None)]
    else:
        with pytest.raises(ProtocolError) as ei:
            server.next_event()
        assert ei.value.code == Codes.PROTOCOL_VIOLATION
        assert msg.name in ei.value.message


def test_hello_twice_is_refused() -> None:
    server = ProtocolConnection(Role.SERVER)
    server.receive_data(encode_frame(Msg.HELLO, {}) * 2)
    assert server.next_event() == Message(Msg.HELLO, {})
    with pytest.raises(ProtocolError):
        server.next_event()


def test_client_refuses_results_before_login() -> None:
    client = ProtocolConnection(Role.CLIENT)
    client.receive_data(encode_frame(Msg.ROWS, ()))
    with pytest.raises(ProtocolError) as ei:
        client.next_event()
    assert ei.value.code == Codes.PROTOCOL_VIOLATION


def test_server_may_not_send_client_messages_nor_the_reverse() -> None:
    client, server = pair()
    with pytest.raises(ProtocolError):
        server.send(Msg.QUERY, ("SELECT 1", ()))
    with pytest.raises(ProtocolError):
        client.send(Msg.ROWS, ())
    with pytest.raises(ProtocolError):
        client.send(Msg.NOTICE, {"code": "01000", "message": "hi"})


def test_error_before_login_closes_and_nothing_follows() -> None:
    client = ProtocolConnection(Role.CLIENT)
    client.send(Msg.HELLO, {})
    client.receive_data(encode_frame(Msg.ERROR, {"code": "28P01", "message": "no"}))
    assert events(client) == [Message(Msg.ERROR, {"code": "28P01", "message": "no"})]
    assert client.server_state is State.CLOSED
    client.receive_data(encode_frame(Msg.HELLO_OK, {}))
    with pytest.raises(ProtocolError):
        client.next_event()


def test_error_after_login_keeps_the_connection_ready() -> None:
    client, server = pair()
    client.receive_data(server.send(Msg.ERROR, {"code": "42601", "message": "syntax"}))
    assert [m.type for m in events(client)] == [Msg.ERROR]
    assert client.server_state is State.READY


def test_send_that_fails_to_encode_leaves_the_state_unchanged() -> None:
    client = ProtocolConnection(Role.CLIENT)
    with pytest.raises(TypeError):
        client.send(Msg.HELLO, {"x": object()})
    assert client.client_state is State.HELLO
    client.send(Msg.HELLO, {})
    assert client.client_state is State.SASL


def test_oversized_send_is_refused_and_leaves_the_state_unchanged() -> None:
    client = ProtocolConnection(Role.CLIENT, max_frame=100)
    with pytest.raises(ProtocolError) as ei:
        client.send(Msg.HELLO, "x" * 200)
    assert ei.value.code == Codes.MESSAGE_TOO_LARGE
    assert client.client_state is State.HELLO


# -- NOTICE and TERMINATE -----------------------------------------------------------------


@pytest.mark.parametrize("steps", range(len(LOGIN) + 1))
def test_notice_is_allowed_in_any_state(steps: int) -> None:
    client, server = pair(logged_in=False)
    for role, msg, body in LOGIN[:steps]:
        src, dst = (client, server) if role is Role.CLIENT else (server, client)
        dst.receive_data(src.send(msg, body))
        events(dst)
    before = (client.client_state, client.server_state)
    notice = {"code": "57P01", "message": "shutting down"}
    client.receive_data(server.send(Msg.NOTICE, notice))
    assert events(client) == [Message(Msg.NOTICE, notice)]
    assert (client.client_state, client.server_state) == before


def test_notice_after_a_fatal_error_is_still_accepted() -> None:
    client = ProtocolConnection(Role.CLIENT)
    client.send(Msg.HELLO, {})
    client.receive_data(encode_frame(Msg.ERROR, {}) + encode_frame(Msg.NOTICE, {}))
    assert [m.type for m in events(client)] == [Msg.ERROR, Msg.NOTICE]


@pytest.mark.parametrize("steps", [0, 1, 3, len(LOGIN)])
def test_terminate_is_allowed_in_any_state_and_closes(steps: int) -> None:
    client, server = pair(logged_in=False)
    for role, msg, body in LOGIN[:steps]:
        src, dst = (client, server) if role is Role.CLIENT else (server, client)
        dst.receive_data(src.send(msg, body))
        events(dst)
    server.receive_data(client.send(Msg.TERMINATE))
    assert client.client_state is State.CLOSED
    assert events(server) == [Message(Msg.TERMINATE, None)]
    assert server.client_state is State.CLOSED
    with pytest.raises(ProtocolError):
        client.send(Msg.QUERY, ("SELECT 1", ()))
    server.receive_data(encode_frame(Msg.QUERY, ("SELECT 1", ())))
    with pytest.raises(ProtocolError):
        server.next_event()


def test_server_cannot_send_terminate() -> None:
    _, server = pair()
    with pytest.raises(ProtocolError):
        server.send(Msg.TERMINATE)


# -- framing ------------------------------------------------------------------------------


def test_frame_layout() -> None:
    data = encode_frame(Msg.QUERY, ("SELECT ?", (1,)))
    body = codec.pack(("SELECT ?", (1,)))
    assert data == b"Q" + struct.pack(">I", len(body)) + body
    assert HEADER_SIZE == 5


def test_frames_split_at_every_byte_boundary_reassemble() -> None:
    client, _ = pair()
    frames = [
        (Msg.DESCRIPTION, (("a", "integer"), ("b", "text"))),
        (Msg.ROWS, ((1, "x" * 300), (2, None))),
        (Msg.COMPLETE, (2, None, False)),
        (Msg.RESULT, ((("v", "text"),), ((("a",),),), (-1, None, True))),
    ]
    _, server = pair()
    stream = b"".join(server.send(m, b) for m, b in frames)
    expected = [Message(m, b) for m, b in frames]
    for cut in range(len(stream) + 1):
        c, _ = pair()
        c.receive_data(stream[:cut])
        got = events(c)
        c.receive_data(stream[cut:])
        got += events(c)
        assert got == expected, cut
        assert c.buffered == 0
    # and one byte at a time
    got = []
    for i in range(len(stream)):
        client.receive_data(stream[i:i + 1])
        got += events(client)
    assert got == expected


def test_pipelined_frames_in_one_chunk_come_out_in_order() -> None:
    _, server = pair()
    # The client pipelines its whole login with a query in one write.
    client = ProtocolConnection(Role.CLIENT)
    chunk = b"".join(client.send(m, b) for r, m, b in LOGIN if r is Role.CLIENT)
    chunk += client.send(Msg.QUERY, ("SELECT 1", ()))
    chunk += client.send(Msg.SYNC)
    fresh = ProtocolConnection(Role.SERVER)
    fresh.receive_data(chunk)
    first = fresh.next_event()
    assert first == Message(Msg.HELLO, {"version": 1})
    # the server must answer before the SASL steps are accepted: emulate it
    fresh.send(Msg.HELLO_OK, {})
    assert fresh.next_event() == Message(Msg.SASL_INITIAL, LOGIN[2][2])
    fresh.send(Msg.SASL_CHALLENGE, "c")
    assert fresh.next_event() == Message(Msg.SASL_RESPONSE, LOGIN[4][2])
    fresh.send(Msg.AUTH_OK, {})
    assert events(fresh) == [Message(Msg.QUERY, ("SELECT 1", ())), Message(Msg.SYNC, None)]
    assert fresh.buffered == 0

    many = [(Msg.ROWS, ((i,),)) for i in range(50)] + [(Msg.COMPLETE, (50, None, False))]
    client2, _ = pair()
    client2.receive_data(b"".join(server.send(m, b) for m, b in many))
    assert events(client2) == [Message(m, b) for m, b in many]


def test_buffer_compaction_keeps_the_stream_intact() -> None:
    client, server = pair()
    frame = server.send(Msg.ROWS, (("y" * 1000,),))
    for i in range(200):
        # a frame and a half each time, so the read position is never at a boundary
        client.receive_data(frame[: len(frame) // 2] if i % 2 == 0 else frame[len(frame) // 2:])
        got = events(client)
        assert got == ([] if i % 2 == 0 else [Message(Msg.ROWS, (("y" * 1000,),))])
    assert client.buffered == 0


def test_oversized_announced_frame_is_refused_from_the_header_alone() -> None:
    server = ProtocolConnection(Role.SERVER, max_frame=1000)
    server.receive_data(header(b"H", 1001))  # no payload at all
    with pytest.raises(ProtocolError) as ei:
        server.next_event()
    assert ei.value.code == Codes.MESSAGE_TOO_LARGE == "54000"
    assert server.buffered == HEADER_SIZE  # nothing waited for, nothing buffered


def test_huge_announced_frame_is_refused_without_waiting() -> None:
    server = ProtocolConnection(Role.SERVER)
    server.receive_data(header(b"Q", 0xFFFFFFFF) + b"x" * 10)
    with pytest.raises(ProtocolError) as ei:
        server.next_event()
    assert ei.value.code == "54000"


def test_frame_of_exactly_the_limit_is_accepted() -> None:
    body = "z" * 50
    payload = codec.pack(body)
    server = ProtocolConnection(Role.SERVER, max_frame=len(payload))
    server.receive_data(header(b"H", len(payload)) + payload)
    assert server.next_event() == Message(Msg.HELLO, body)


@pytest.mark.parametrize("tbyte", [b"\x00", b"\x16", b"G", b"z", b"\xff"])
def test_unknown_type_byte_is_a_protocol_violation(tbyte: bytes) -> None:
    server = ProtocolConnection(Role.SERVER)
    server.receive_data(header(tbyte, 1) + b"\xc0")
    with pytest.raises(ProtocolError) as ei:
        server.next_event()
    assert ei.value.code == Codes.PROTOCOL_VIOLATION == "08P01"


def test_unknown_type_byte_is_refused_before_the_rest_arrives() -> None:
    server = ProtocolConnection(Role.SERVER)
    server.receive_data(b"\x00")
    with pytest.raises(ProtocolError) as ei:
        server.next_event()
    assert ei.value.code == "08P01"
    big = ProtocolConnection(Role.SERVER)
    big.receive_data(header(b"\x00", 0xFFFFFFFF))
    with pytest.raises(ProtocolError) as ei:
        big.next_event()
    assert ei.value.code == "08P01"


@pytest.mark.parametrize("payload", [
    b"",  # empty body
    b"\xc1",  # never-used msgpack byte
    b"\x92\x01",  # truncated array
    b"\x01\x02",  # two values
    b"\xa2\xff\xfe",  # invalid UTF-8 text
    b"\xd4\x02A",  # DECIMAL extension that is not a number
    b"\xc7\x03\x05abc",  # DATETIME extension that is not a date
    b"\xd4\x63A",  # unknown extension type
    b"\x81\x80\x01",  # map with a map as key
], ids=repr)
def test_malformed_body_is_a_protocol_error(payload: bytes) -> None:
    server = ProtocolConnection(Role.SERVER)
    server.receive_data(header(b"H", len(payload)) + payload)
    with pytest.raises(ProtocolError) as ei:
        server.next_event()
    assert ei.value.code == Codes.PROTOCOL_VIOLATION
    assert "HELLO" in ei.value.message


@pytest.mark.parametrize("cut", [1, 3, HEADER_SIZE, HEADER_SIZE + 1, 12])
def test_eof_mid_frame_is_an_error(cut: int) -> None:
    data = encode_frame(Msg.HELLO, {"version": 1, "pad": "p" * 20})
    server = ProtocolConnection(Role.SERVER)
    server.receive_data(data[:cut])
    assert server.next_event() is NEED_DATA
    server.receive_data(b"")
    assert server.eof
    with pytest.raises(ProtocolError) as ei:
        server.next_event()
    assert ei.value.code == Codes.CONNECTION_FAILURE


def test_eof_at_a_frame_boundary_is_clean() -> None:
    server = ProtocolConnection(Role.SERVER)
    server.receive_data(encode_frame(Msg.HELLO, {}))
    server.receive_data(b"")
    assert server.eof
    assert events(server) == [Message(Msg.HELLO, {})]
    assert server.next_event() is NEED_DATA


# -- send_packed --------------------------------------------------------------------------


def test_send_packed_frames_a_pre_encoded_body() -> None:
    client, server = pair()
    rows: list[Any] = [(1, "a"), (2, None), (2**70, b"\x00")]
    body = codec.pack_array_of_packed([codec.pack(rows[:2]), codec.pack(rows[2:])])
    data = server.send_packed(Msg.ROWS, body)
    assert data == b"B" + struct.pack(">I", len(body)) + body
    client.receive_data(data)
    assert events(client) == [Message(Msg.ROWS, (tuple(rows[:2]), tuple(rows[2:])))]


def test_send_packed_checks_the_state() -> None:
    _, server = pair(logged_in=False)
    with pytest.raises(ProtocolError) as ei:
        server.send_packed(Msg.ROWS, codec.pack(()))
    assert ei.value.code == Codes.PROTOCOL_VIOLATION


# -- what a hostile peer can make decoding cost ------------------------------------------


@pytest.mark.parametrize("key", [b"\x92\x01\x02", b"\x01", b"\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00",
                                 b"\xc3", b"\xc0"], ids=["array", "int", "float", "bool", "nil"])
def test_the_server_takes_map_keys_of_text_or_bytes_only(key: bytes) -> None:
    # Hashes of tuples and numbers can be computed by anyone: a map of thousands of keys
    # with one hash took seconds of the event loop to decode.  Text and bytes hash with a
    # per-process seed.
    payload = b"\x81" + key + b"\x01"
    server = ProtocolConnection(Role.SERVER)
    server.receive_data(header(b"H", len(payload)) + payload)
    with pytest.raises(ProtocolError) as ei:
        server.next_event()
    assert ei.value.code == Codes.PROTOCOL_VIOLATION
    assert "not allowed for map key" in ei.value.message
    # The client decodes what its server sends as before (a method may return such a dict).
    client = ProtocolConnection(Role.CLIENT)
    client.receive_data(header(b"h", len(payload)) + payload)
    assert len(events(client)[0].body) == 1


def test_the_server_takes_text_and_bytes_map_keys() -> None:
    server = ProtocolConnection(Role.SERVER)
    body = {"version": 1, b"raw": 2}
    server.receive_data(encode_frame(Msg.HELLO, body))
    assert events(server) == [Message(Msg.HELLO, body)]


def test_json_nested_too_deep_to_decode_is_no_protocol_error() -> None:
    # Not RecursionError (an internal error), nor a malformed message that ends the session:
    # the server gets a Json that fails only the statement using it, a client the text.
    text = b"[" * 100_000 + b"]" * 100_000
    deep = msgpack.packb({"x": msgpack.ExtType(codec.EXT_JSON, text)})
    server = ProtocolConnection(Role.SERVER)
    server.receive_data(header(b"H", len(deep)) + deep)
    (m,) = events(server)
    value = m.body["x"]
    assert isinstance(value, codec.Json) and f"{len(text)} bytes" in repr(value)
    with pytest.raises(ValueError, match="nested deeper than the server can decode"):
        value.dumps()
    assert value != codec.Json(None)
    client = ProtocolConnection(Role.CLIENT)
    client.receive_data(header(b"h", len(deep)) + deep)
    (m,) = events(client)
    assert m.body == {"x": text.decode()}


def test_a_frame_is_decoded_as_received_when_python_code_runs_meanwhile() -> None:
    # In-process misuse: a state object whose hash (taken while the frame is read) empties
    # and refills the receive buffer.  The frame decoded is the one received, not memory
    # the buffer has given back.
    size = 3000
    body = b"\xc5" + size.to_bytes(2, "big") + b"A" * size
    frame = header(b"h", len(body)) + body
    client = ProtocolConnection(Role.CLIENT)
    client.receive_data(frame)

    class Rewrites:
        def __hash__(self) -> int:
            client._buf[:] = b""  # type: ignore[attr-defined]
            junk = [bytes([66 + i % 20]) * (size + 40) for i in range(200)]
            client._buf.extend(frame)  # type: ignore[attr-defined]
            del junk
            return hash(State.HELLO)

        def __eq__(self, other: object) -> bool:
            return other is State.HELLO

    client.server_state = Rewrites()  # type: ignore[assignment]
    assert client.next_event().body == b"A" * size  # type: ignore[union-attr]


def test_send_packed_refuses_what_a_frame_cannot_announce(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    # The 4-byte length would wrap past 4 GiB; the compiled core checks the same limit.
    import casemate.protocol.core as core_module

    if ProtocolConnection is not core_module.PureProtocolConnection:
        pytest.skip("the compiled limit is a constant; a test of it would need 4 GiB")
    _, server = pair()
    monkeypatch.setattr(core_module, "FRAME_LIMIT", 10)
    with pytest.raises(ProtocolError) as ei:
        server.send_packed(Msg.ROWS, codec.pack(["x" * 20]))
    assert ei.value.code == Codes.MESSAGE_TOO_LARGE
