"""Value codec: every SQL value type survives pack/unpack; bad input fails with the right error."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from typing import Any

import msgpack
import pytest

from casemate.protocol import codec

UTC = dt.UTC
PLUS_0530 = dt.timezone(dt.timedelta(hours=5, minutes=30))
MINUS_8 = dt.timezone(dt.timedelta(hours=-8))

VALUES: list[Any] = [
    None, True, False,
    0, 1, -1, 127, 128, -32, -33, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1,
    -(2**63), 2**64, -(2**63) - 1, 2**100, -(2**100), 10**40, -(10**40), 2**64 * 255,
    0.0, -0.0, 1.5, -2.25e-300, 1e300, math.inf, -math.inf,
    "", "hello", "é☃𝄞", "x" * 70000, "nul\x00inside",
    b"", b"\x00\xff", bytes(range(256)) * 300,
    Decimal("0"), Decimal("-1.50"), Decimal("1E+30"), Decimal("123456789012345678901234567890.123"),
    Decimal("Infinity"), Decimal("-Infinity"),
    dt.date(2024, 2, 29), dt.date(1, 1, 1), dt.date(9999, 12, 31),
    dt.time(0, 0), dt.time(23, 59, 59, 999999), dt.time(12, 30, tzinfo=UTC),
    dt.time(8, 15, 1, 5, tzinfo=PLUS_0530),
    dt.datetime(2024, 5, 6, 7, 8, 9), dt.datetime(2024, 5, 6, 7, 8, 9, 123456),
    dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
    dt.datetime(1999, 12, 31, 23, 59, 59, 1, tzinfo=MINUS_8),
    dt.datetime(2024, 1, 1, tzinfo=PLUS_0530),
]


def roundtrip(value: Any) -> Any:
    return codec.unpack(codec.pack(value))


@pytest.mark.parametrize("value", VALUES, ids=lambda v: f"{type(v).__name__}:{repr(v)[:40]}")
def test_roundtrip(value: Any) -> None:
    got = roundtrip(value)
    assert type(got) is type(value)
    assert got == value
    if isinstance(value, float):
        assert math.copysign(1, got) == math.copysign(1, value)  # -0.0 stays negative
    if isinstance(value, dt.time | dt.datetime):
        assert got.utcoffset() == value.utcoffset()
        assert (got.tzinfo is None) == (value.tzinfo is None)  # naive stays naive
    if isinstance(value, Decimal):
        assert str(got) == str(value)  # exponent and trailing zeros kept


def test_float_nan() -> None:
    assert math.isnan(roundtrip(math.nan))


@pytest.mark.parametrize("text", ["NaN", "-NaN", "sNaN"])
def test_decimal_nan(text: str) -> None:
    got = roundtrip(Decimal(text))
    assert isinstance(got, Decimal)
    assert got.is_nan()
    assert str(got) == text


def test_bool_is_not_an_int() -> None:
    assert roundtrip(True) is True
    assert roundtrip(False) is False
    assert roundtrip([True, 1, 2**70]) == (True, 1, 2**70)
    assert type(roundtrip([True, 1])[0]) is bool


def test_big_integers_use_the_extension() -> None:
    assert codec.pack(2**64 - 1) == msgpack.packb(2**64 - 1)  # still native
    assert codec.pack(-(2**63)) == msgpack.packb(-(2**63))
    for big in (2**64, -(2**63) - 1):
        packed = codec.pack(big)
        ext = msgpack.unpackb(packed)
        assert isinstance(ext, msgpack.ExtType) and ext.code == codec.EXT_BIGINT


def test_extension_payloads_are_as_documented() -> None:
    def ext(v: Any) -> msgpack.ExtType:
        e = msgpack.unpackb(codec.pack(v))
        assert isinstance(e, msgpack.ExtType)
        return e

    assert ext(Decimal("NaN")) == msgpack.ExtType(codec.EXT_DECIMAL, b"NaN")
    assert ext(dt.date(2024, 1, 2)) == msgpack.ExtType(codec.EXT_DATE, b"2024-01-02")
    assert ext(dt.time(1, 2, 3, tzinfo=UTC)) == msgpack.ExtType(codec.EXT_TIME, b"01:02:03+00:00")
    assert ext(dt.datetime(2024, 1, 2, 3, 4)) == msgpack.ExtType(
        codec.EXT_DATETIME, b"2024-01-02T03:04:00")
    assert ext(-(2**64)).data == (-(2**64)).to_bytes(9, "big", signed=True)


def test_nested_lists_come_back_as_tuples() -> None:
    value = [1, [2, [3, [None, "x"]]], (), [[]], {"k": [1, 2]}]
    assert roundtrip(value) == (1, (2, (3, (None, "x"))), (), ((),), {"k": (1, 2)})


def test_nested_big_ints_and_extensions() -> None:
    value = [[2**64, -(2**100)], {"a": 2**65, "b": [Decimal("1.1"), dt.date(2020, 1, 1)]}]
    assert roundtrip(value) == ((2**64, -(2**100)),
                                {"a": 2**65, "b": (Decimal("1.1"), dt.date(2020, 1, 1))})


def test_bytearray_and_memoryview_travel_as_bytes() -> None:
    assert roundtrip(bytearray(b"ab")) == b"ab"
    assert roundtrip(memoryview(b"cd")) == b"cd"
    assert type(roundtrip(bytearray(b"ab"))) is bytes


def test_pack_array_of_packed_matches_pack() -> None:
    items = [(1, "a"), (2**70, None), (Decimal("2"), b"")]
    joined = codec.pack_array_of_packed([codec.pack(i) for i in items])
    assert joined == codec.pack(items)
    assert codec.unpack(joined) == tuple(items)
    assert codec.unpack(codec.pack_array_of_packed([])) == ()


@pytest.mark.parametrize("value", [
    object(), {1, 2}, frozenset(), 1j, dt.timedelta(days=1), [1, object()], {"k": {1}},
    type, Exception("x"),
], ids=repr)
def test_unsupported_types_raise_type_error(value: Any) -> None:
    with pytest.raises(TypeError) as ei:
        codec.pack(value)
    assert "cannot send a value of type" in str(ei.value)


@pytest.mark.parametrize("data", [
    b"",
    b"\xc1",  # reserved byte
    b"\x92\x01",  # array of 2 with one element
    b"\x01\x02",  # trailing data
    b"\xa2\xff\xfe",  # invalid UTF-8
    b"\xd9",  # str8 without its length
    b"\x81\x80\x01",  # unhashable map key
    b"\x91" * 100_000 + b"\xc0",  # nesting beyond msgpack's stack limit
    msgpack.packb(msgpack.ExtType(codec.EXT_DECIMAL, b"abc")),
    msgpack.packb(msgpack.ExtType(codec.EXT_DECIMAL, b"\xff")),
    msgpack.packb(msgpack.ExtType(codec.EXT_DATE, b"2024-13-01")),
    msgpack.packb(msgpack.ExtType(codec.EXT_TIME, b"25:00")),
    msgpack.packb(msgpack.ExtType(codec.EXT_DATETIME, b"yesterday")),
    msgpack.packb(msgpack.ExtType(99, b"?")),  # unknown extension
], ids=lambda d: repr(d)[:30])
def test_garbage_raises_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"malformed value: \S"):
        codec.unpack(data)


def _nested_list(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_json_too_deep_to_encode_is_a_value_error_and_shows_in_errors() -> None:
    deep = codec.Json(_nested_list(5000))
    with pytest.raises(ValueError, match="nested deeper than Python can encode"):
        deep.dumps()
    assert repr(deep) == "Json(<nested too deep to show>)"  # not RecursionError
    assert codec.dumps_json({"a": codec.Json([1, 2])}) == '{"a":[1,2]}'
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        codec.dumps_json({"a": {1}})


def test_json_read_from_storage_is_sent_as_stored() -> None:
    j = codec.Json.read(b'[1e400, {"b": 1,  "b": 2}]')
    assert j.dumps() == '[1e400, {"b": 1,  "b": 2}]'  # not encoded again (it could not be)
    assert codec.unpack(codec.pack([j])) == ([float("inf"), {"b": 2}],)
    assert j == codec.Json([float("inf"), {"b": 2}])
    assert j.obj == [float("inf"), {"b": 2}]
    with pytest.raises(ValueError, match="Out of range"):
        j.dumps()  # its value handed out, its text forgotten: JSON has no infinity
    edited = codec.Json.read('{"n": 1}')
    edited.obj["n"] += 1  # (a server method editing a document it read)
    assert edited.dumps() == '{"n":2}'
    k = codec.Json.read(" [1, 2] ")
    assert k == codec.Json([1, 2]) and hash(k) == hash(codec.Json([1, 2]))
    with pytest.raises(ValueError):
        codec.Json.read("[1,")
