"""Property tests (hypothesis) of the sans-I/O protocol core and the value codec.

* Any byte stream, cut into arbitrary chunks, makes a server-side ProtocolConnection yield
  Messages or raise ProtocolError (nothing else), and what it buffers stays bounded.
* Valid frames round-trip through encode / receive for generated bodies, however cut.
* codec.unpack of arbitrary bytes returns a value or raises ValueError, nothing else.
"""

from __future__ import annotations

import datetime as dt
import math
import struct
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casemate.errors import ProtocolError
from casemate.protocol import NEED_DATA, Message, Msg, ProtocolConnection, Role, codec
from casemate.protocol.core import HEADER_SIZE

# Hypothesis's failure report imports a module that warns; keep the report readable.
pytestmark = pytest.mark.filterwarnings(
    "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAX_FRAME = 256  # small, so that generated streams reach and cross the limit
LOGIN = (b"".join((  # what a client sends to log in: after it, every request type is legal
    struct.pack(">cI", Msg.HELLO.value, 1) + b"\x80",
    struct.pack(">cI", Msg.SASL_INITIAL.value, 1) + b"\x90",
    struct.pack(">cI", Msg.SASL_RESPONSE.value, 1) + b"\xa0",
)))

# -- values -------------------------------------------------------------------------

offsets = st.integers(min_value=-23 * 60, max_value=23 * 60).map(
    lambda m: dt.timezone(dt.timedelta(minutes=m)))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # beyond 64 bits too: the BIGINT extension
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.dates(),
    st.times(timezones=st.none() | offsets),
    st.datetimes(timezones=st.none() | offsets),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)


def same(a: Any, b: Any) -> bool:
    """Equality as the wire defines it: lists come back as tuples; NaN equals NaN."""
    if isinstance(a, list | tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, Decimal) and a.is_nan():
        return isinstance(b, Decimal) and b.is_nan() and a.is_snan() == b.is_snan()
    if isinstance(a, dt.datetime | dt.time):  # same wall time and same offset, not just instant
        return (type(a) is type(b) and a.replace(tzinfo=None) == b.replace(tzinfo=None)
                and a.utcoffset() == b.utcoffset())
    return type(a) is type(b) and a == b


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[i:j] for i, j in zip(points, points[1:], strict=False) if j > i]


# -- arbitrary bytes into a server connection ----------------------------------------

frame_types = st.sampled_from([m.value for m in Msg])
any_frame = st.builds(
    lambda t, body, delta: struct.pack(">cI", t, min(max(len(body) + delta, 0), 2**32 - 1)) + body,
    frame_types, st.binary(max_size=64), st.sampled_from([0, 0, 0, -1, 1, 10**6, 2**32 - 1]))
valid_frame = st.builds(lambda t, v: t + struct.pack(">I", len(p := codec.pack(v))) + p,
                        frame_types, values)
streams = st.builds(
    lambda login, parts: (LOGIN if login else b"") + b"".join(parts),
    st.booleans(),
    st.lists(st.one_of(st.binary(max_size=80), any_frame, valid_frame), max_size=8))


@SETTINGS
@given(data=streams, cuts=st.lists(st.integers(min_value=0, max_value=10**6), max_size=20))
def test_any_bytes_give_messages_or_protocol_error(data: bytes, cuts: list[int]) -> None:
    pc = ProtocolConnection(Role.SERVER, max_frame=MAX_FRAME)
    chunks = chunked(data, cuts)
    biggest = max((len(c) for c in chunks), default=0)
    try:
        for chunk in chunks:
            pc.receive_data(chunk)
            # Unparsed bytes: less than one frame of the limit, plus what just arrived.
            assert pc.buffered <= MAX_FRAME + HEADER_SIZE + len(chunk)
            # The array itself: compaction keeps the consumed prefix below half of it.
            assert len(pc._buf) <= 2 * (MAX_FRAME + HEADER_SIZE) + biggest
            while (ev := pc.next_event()) is not NEED_DATA:
                assert isinstance(ev, Message) and isinstance(ev.type, Msg)
            assert pc.buffered < MAX_FRAME + HEADER_SIZE
        pc.receive_data(b"")
        assert pc.next_event() is NEED_DATA
    except ProtocolError as e:
        assert e.code is not None and e.message


# -- round trip of valid frames ---------------------------------------------------------

requests = st.sampled_from([Msg.QUERY, Msg.EXECUTE_MANY, Msg.FETCH, Msg.CLOSE_PORTAL, Msg.COMMIT,
                            Msg.ROLLBACK, Msg.SYNC, Msg.ADMIN])


@SETTINGS
@given(frames=st.lists(st.tuples(requests, values), min_size=1, max_size=6),
       cuts=st.lists(st.integers(min_value=0, max_value=10**6), max_size=30))
def test_valid_frames_round_trip_however_cut(frames: list[tuple[Msg, Any]], cuts: list[int]
                                             ) -> None:
    client = ProtocolConnection(Role.CLIENT)
    server = ProtocolConnection(Role.SERVER)
    login = [(Msg.HELLO, {"protocol": 1}), (Msg.SASL_INITIAL, ("SCRAM-SHA-256", "n,,n=a,r=x")),
             (Msg.SASL_RESPONSE, "c=biws,r=x,p=y")]
    sent = login + frames
    wire = b"".join(client.send(m, body) for m, body in sent)
    received: list[Message] = []
    for chunk in chunked(wire, cuts):
        server.receive_data(chunk)
        while (ev := server.next_event()) is not NEED_DATA:
            assert isinstance(ev, Message)
            received.append(ev)
    assert server.buffered == 0
    assert [m.type for m in received] == [m for m, _ in sent]
    for (_, body), got in zip(sent, received, strict=True):
        assert same(body, got.body), (body, got.body)


@SETTINGS
@given(value=values)
def test_pack_unpack_round_trip(value: Any) -> None:
    assert same(value, codec.unpack(codec.pack(value)))


# -- codec on garbage ---------------------------------------------------------------------

ext_garbage = st.builds(lambda code, data: b"\xc7" + struct.pack(">Bb", len(data), code) + data,
                        st.integers(min_value=-128, max_value=127),
                        st.one_of(st.binary(max_size=30), st.sampled_from([
                            b"2024-02-30", b"NaN", b"-Infinity", b"1e999999999", b"\xff",
                            b"25:00", b"2024-01-01T00:00:00+99:00", b"", b"0" * 30])))
garbage = st.one_of(
    st.binary(max_size=200),
    ext_garbage,
    st.builds(lambda a, b: a + b, ext_garbage, st.binary(max_size=4)),
    st.builds(lambda depth: b"\x91" * depth + b"\xc0", st.integers(0, 5000)),  # deep nesting
    st.builds(lambda n: b"\xdd" + struct.pack(">I", n), st.integers(0, 2**32 - 1)),  # huge array
    st.builds(lambda n: b"\xdf" + struct.pack(">I", n), st.integers(0, 2**32 - 1)),  # huge map
    st.builds(lambda n: b"\xdb" + struct.pack(">I", n) + b"ab", st.integers(0, 2**32 - 1)),
)


@SETTINGS
@given(data=garbage)
def test_unpack_of_arbitrary_bytes_raises_only_value_error(data: bytes) -> None:
    try:
        codec.unpack(data)
    except ValueError:
        pass
