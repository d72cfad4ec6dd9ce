"""The compiled protocol core (_core.pyx) against its pure-Python reference (core.py):
the same bytes out, the same messages in, the same errors, the same states, for any
stream of bytes however it arrives."""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casemate.errors import ProtocolError
from casemate.protocol import codec, core
from casemate.protocol.core import NEED_DATA, Msg, Role

from .test_properties import LOGIN, chunked, values

Pure = core.PureProtocolConnection
Compiled = core.ProtocolConnection
FORCED_PURE = os.environ.get("CASEMATE_PURE", "") not in ("", "0")
needs_compiled = pytest.mark.skipif(core.PROTOCOL_CORE != "compiled",
                                    reason=core.PROTOCOL_CORE)
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
pytestmark = pytest.mark.filterwarnings(
    "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")


def test_compiled_core_is_built_unless_forced() -> None:
    """CI tests the compiled build: a build that silently failed must not pass for it."""
    assert (core.PROTOCOL_CORE == "compiled") is not FORCED_PURE, core.PROTOCOL_CORE
    assert (Compiled is not Pure) is not FORCED_PURE


def _state(pc: Any) -> tuple[Any, ...]:
    return (pc.client_state, pc.server_state, pc.requests, pc.buffered, pc.eof, pc.max_frame,
            pc.max_send)


def _run(cls: Any, role: Role, chunks: list[bytes], max_frame: int, decode_up_to: int = 0
         ) -> list[Any]:
    """What a connection makes of the chunks: each event or error, and its state after."""
    pc = cls(role, max_frame=max_frame)
    out: list[Any] = []
    try:
        for chunk in [*chunks, b""]:
            pc.receive_data(chunk)
            while (ev := pc.next_event(decode_up_to)) is not NEED_DATA:
                out.append((ev.type, codec.pack(ev.body), type(ev).__name__))
            out.append(_state(pc))
    except ProtocolError as e:
        out.append(("error", e.message, e.code, e.hint, _state(pc)))
    return out


frame_types = st.sampled_from([m.value for m in Msg] + [b"?", b"\x00"])
frames = st.one_of(
    st.builds(lambda t, v: t + struct.pack(">I", len(p := codec.pack(v))) + p, frame_types,
              values),
    st.builds(lambda t, b, d: t + struct.pack(">I", max(len(b) + d, 0)) + b, frame_types,
              st.binary(max_size=40), st.sampled_from([0, -1, 1, 300])),
    st.binary(max_size=30),
)
streams = st.builds(lambda login, parts: (LOGIN if login else b"") + b"".join(parts),
                    st.booleans(), st.lists(frames, max_size=8))


@needs_compiled
@SETTINGS
@given(data=streams, cuts=st.lists(st.integers(min_value=0, max_value=10**6), max_size=12),
       role=st.sampled_from(list(Role)), max_frame=st.sampled_from([64, 256, 2**20]),
       decode_up_to=st.sampled_from([0, 0, 1, 8, 300]))
def test_same_messages_errors_and_states_for_any_stream(data: bytes, cuts: list[int],
                                                        role: Role, max_frame: int,
                                                        decode_up_to: int) -> None:
    """... and the same raw frames (bodies longer than ``decode_up_to``, left encoded)."""
    chunks = chunked(data, cuts)
    assert _run(Compiled, role, chunks, max_frame, decode_up_to) == \
        _run(Pure, role, chunks, max_frame, decode_up_to)


def test_large_frames_decode_the_same() -> None:
    """Frames above the compiled core's copy limit are decoded in place, as core.py does."""
    body = [("x" * 1000, i, b"\x00" * 100) for i in range(200)]  # ~230 kB
    for cls in (Pure, Compiled):
        client, server = cls(Role.CLIENT), cls(Role.SERVER)
        server.receive_data(LOGIN)
        while server.next_event() is not NEED_DATA:
            pass
        for m, b in ((Msg.HELLO_OK, {}), (Msg.SASL_CHALLENGE, "c"), (Msg.AUTH_OK, {})):
            client.receive_data(server.send(m, b))
        client.receive_data(server.send(Msg.ROWS, [body]))
        events = []
        while (ev := client.next_event()) is not NEED_DATA:
            events.append(ev)
        assert [e.type for e in events] == [Msg.HELLO_OK, Msg.SASL_CHALLENGE, Msg.AUTH_OK,
                                            Msg.ROWS]
        assert events[-1].body == (tuple(body),)


sendable = st.sampled_from([Msg.HELLO, Msg.QUERY, Msg.NOTICE, Msg.ERROR, Msg.RESULT, Msg.CANCEL,
                            Msg.TERMINATE, Msg.HELLO_OK, Msg.ROWS])


@needs_compiled
@SETTINGS
@given(steps=st.lists(st.tuples(sendable, values, st.booleans()), max_size=10),
       role=st.sampled_from(list(Role)), max_send=st.sampled_from([None, 16, 1000]))
def test_same_bytes_and_states_for_what_is_sent(steps: list[tuple[Msg, Any, bool]], role: Role,
                                               max_send: int | None) -> None:
    def run(cls: Any) -> list[Any]:
        pc = cls(role, max_send=max_send)
        out: list[Any] = []
        for msg, body, packed in steps:
            try:
                out.append(pc.send_packed(msg, codec.pack(body)) if packed else pc.send(msg, body))
            except ProtocolError as e:
                out.append(("error", e.message, e.code, e.hint))
            except (TypeError, ValueError) as e:  # values the codec refuses
                out.append((type(e), str(e)))
            out.append(_state(pc))
        return out
    assert run(Compiled) == run(Pure)


columns = st.lists(st.tuples(st.text(max_size=12), st.none()), max_size=6)
type_codes = st.lists(st.one_of(st.none(), st.sampled_from(["text", "integer", "real", "blob"])),
                      max_size=8)


@needs_compiled
@SETTINGS
@given(cols=columns, types=type_codes, rows=st.lists(st.tuples(values), max_size=3),
       rowcount=st.integers(min_value=-1, max_value=2**40),
       lastrowid=st.none() | st.integers(min_value=0, max_value=2**40),
       in_txn=st.booleans(), ready=st.booleans())
def test_the_same_result_frame(cols: list[Any], types: list[Any], rows: list[Any], rowcount: int,
                               lastrowid: int | None, in_txn: bool, ready: bool) -> None:
    """The RESULT reply, built in one piece by the compiled core, is the frame that
    messages.Result.pack and send_packed make (and a RESULT before login is refused alike)."""
    from casemate.protocol.messages import Result

    packed = codec.pack_array_of_packed([codec.pack(rows)])

    def run(cls: Any) -> Any:
        pc = cls(Role.SERVER)
        if ready:
            pc.client_state = pc.server_state = core.State.READY
        try:
            return pc.send_result(cols, types, packed, rowcount, lastrowid, in_txn), _state(pc)
        except ProtocolError as e:
            return ("error", e.message, e.code), _state(pc)

    got = run(Compiled)
    assert got == run(Pure)
    if ready:
        described = [(c[0], t) for c, t in zip(cols, types or [None] * len(cols), strict=False)]
        assert got[0] == core.encode_frame(Msg.RESULT, None)[:1] + struct.pack(
            ">I", len(body := Result.pack(described, packed, rowcount, lastrowid, in_txn))) + body


@needs_compiled
def test_misuse_in_process_never_reads_outside_the_buffer() -> None:
    """The compiled core reads its buffer through a C pointer: an instance made without
    __init__, a buffer emptied from outside (it is readable) and a copy sharing the buffer
    must not make it read memory it does not own (found by the attack round on the core)."""
    import copy
    import pickle

    bare = Compiled.__new__(Compiled)  # no __init__: the buffer exists all the same
    assert bare.next_event() is NEED_DATA and bare.buffered == 0
    pc = Compiled(Role.CLIENT)
    notice = b"N\x00\x00\x00\x01\xc0"
    pc.receive_data(notice * 10)
    for _ in range(5):
        pc.next_event()
    pc._buf.clear()  # behind its back
    assert pc.buffered == 0 and pc.next_event() is NEED_DATA
    pc.receive_data(notice)
    assert pc.next_event() == (Msg.NOTICE, None)
    for make_copy in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError):
            make_copy(pc)


@SETTINGS
@given(value=values, wrapped=st.booleans(), size=st.sampled_from([1, 2, 7, 64, 10**6]),
       edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=3),
       cut=st.one_of(st.none(), st.integers(min_value=0)), tail=st.sampled_from([b"", b"\x01"]))
def test_decoding_in_slices_gives_what_unpack_gives(value: Any, wrapped: bool, size: int,
                                                    edits: list[tuple[int, int]],
                                                    cut: int | None, tail: bytes) -> None:
    """codec.Decoding, which the server uses for large messages a slice per turn of its
    event loop, against unpack/unpack_wrapped: the same value, or the same error, for
    valid bytes and for bytes edited, cut short or followed by more."""
    data = bytearray(codec.pack(value))
    for at, byte in edits:
        data[at % len(data)] = byte
    if cut is not None:
        data = data[:max(1, cut % (len(data) + 1))]
    raw = bytes(data) + tail

    def at_once() -> Any:
        return (codec.unpack_wrapped if wrapped else codec.unpack)(raw)

    def in_slices() -> Any:
        d = codec.Decoding(raw, wrapped)
        while True:
            done, got = d.step(size)
            if done:
                assert d.left == 0
                return got

    def outcome(f: Any) -> Any:
        try:
            return "value", codec.pack(f())
        except ValueError as e:
            return "error", str(e)
    assert outcome(in_slices) == outcome(at_once)
