"""Value codec: Python values <-> msgpack bytes, with extension types for SQL values.

msgpack carries NULL, bool, 64-bit integers, float, text and bytes natively.
The other SQL values travel as msgpack extension types:

====  ==================  =============================================
code  Python type         payload
====  ==================  =============================================
1     int beyond 64 bits  two's-complement big-endian bytes
2     decimal.Decimal     ASCII text, ``str(value)`` (``NaN``, ``Infinity`` too)
3     datetime.date       ISO 8601 text ``YYYY-MM-DD``
4     datetime.time       ISO 8601 text, with ``+HH:MM`` offset if aware
5     datetime.datetime   ISO 8601 text, with ``+HH:MM`` offset if aware
6     uuid.UUID           the 16 bytes of the UUID
7     :class:`Json`       UTF-8 JSON text (``dict`` values travel as JSON too)
====  ==================  =============================================

A JSON value arrives at the server as a :class:`Json` (so the storage knows to
store JSON and not, say, a PostgreSQL array for a list) and at a client as the
plain Python object (``dict``, ``list``...), as psycopg returns ``jsonb``.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

import msgpack

__all__ = [
    "pack", "unpack", "unpack_wrapped", "pack_array_of_packed", "array_header", "Json",
    "dumps_json", "TOO_DEEP",
    "EXT_BIGINT", "EXT_DECIMAL", "EXT_DATE", "EXT_TIME", "EXT_DATETIME", "EXT_UUID", "EXT_JSON",
]

EXT_BIGINT = 1
EXT_DECIMAL = 2
EXT_DATE = 3
EXT_TIME = 4
EXT_DATETIME = 5
EXT_UUID = 6
EXT_JSON = 7


class Json:
    """A value to store as JSON (like psycopg's ``Json``): ``casemate.Json([1, 2])``.

    A ``dict`` parameter is JSON without the wrapper; a ``list`` needs it (on
    PostgreSQL a bare list is an array).
    """

    __slots__ = ("_obj", "_too_deep", "_text")

    def __init__(self, obj: Any) -> None:
        self._obj = obj
        self._too_deep = 0  # > 0: a received JSON text of this many bytes, not decodable
        self._text: str | None = None  # the text it was read from, sent as it was stored

    @classmethod
    def too_deep(cls, size: int) -> Json:
        """What the server makes of a JSON parameter nested deeper than it can decode: a
        value that fails the statement (or method) using it with a clear error, instead of
        a malformed message that would end the session and its transaction."""
        j = cls(None)
        j._too_deep = size
        return j

    @classmethod
    def read(cls, text: str | bytes) -> Json:
        """A JSON value read from storage: decoded (json.loads's errors), and sent on as the
        text it was stored as, instead of that text encoded again."""
        j = cls(json.loads(text))
        j._text = text if isinstance(text, str) else text.decode()
        return j

    @property
    def obj(self) -> Any:
        """The Python value (ValueError for a parameter nested too deep to decode).  A value
        read from storage forgets its text here: whoever holds the value may change it (a
        server method that reads a document, edits it and writes it back), and
        :meth:`dumps` must then encode what it has become."""
        if self._too_deep:
            raise ValueError(f"a JSON parameter of {self._too_deep} bytes is {TOO_DEEP} "
                             "(about 900 levels); flatten it, or send it as text")
        self._text = None
        return self._obj

    def dumps(self) -> str:
        """The JSON text (NaN and infinities refused: JSON has none)."""
        if self._text is not None:
            return self._text
        return dumps_json(self.obj)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Json) and not self._too_deep and not other._too_deep
                and other._obj == self._obj)

    def __hash__(self) -> int:
        # (of the value, as __eq__ compares: not of a text read, which may differ in form)
        if self._too_deep:
            return hash(self._too_deep)
        try:
            return hash(dumps_json(self._obj))
        except ValueError:  # infinities read from storage, or nested too deep
            return hash(type(self._obj))

    def __repr__(self) -> str:
        if self._too_deep:
            return f"Json(<{self._too_deep} bytes of JSON nested too deep to decode>)"
        try:
            return f"Json({self._obj!r})"
        except RecursionError:  # (in an error message, say: it must not become another)
            return "Json(<nested too deep to show>)"


TOO_DEEP = "nested deeper than the server can decode"


def dumps_json(obj: Any) -> str:
    """``obj`` as JSON text, as stored and sent: compact, NaN and infinities refused, a
    :class:`Json` inside a dict or list standing for its value; ValueError for a value
    nested deeper than the recursion limit lets this Python encode."""
    try:
        return json.dumps(obj, allow_nan=False, separators=(",", ":"), ensure_ascii=False,
                          default=_json_inside)
    except RecursionError:
        raise ValueError("a JSON value is nested deeper than Python can encode (its "
                         "recursion limit: about 900 levels); flatten it, or send it as "
                         "text") from None


def _json_inside(value: Any) -> Any:
    if isinstance(value, Json):
        return value.obj
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return msgpack.ExtType(EXT_DATETIME, value.isoformat().encode())
    if isinstance(value, dt.date):
        return msgpack.ExtType(EXT_DATE, value.isoformat().encode())
    if isinstance(value, dt.time):
        return msgpack.ExtType(EXT_TIME, value.isoformat().encode())
    if isinstance(value, Decimal):
        return msgpack.ExtType(EXT_DECIMAL, str(value).encode())
    if isinstance(value, int):  # only reached for ints that msgpack cannot hold
        return _bigint(value)
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    if isinstance(value, uuid.UUID):
        return msgpack.ExtType(EXT_UUID, value.bytes)
    if isinstance(value, Json):
        return msgpack.ExtType(EXT_JSON, value.dumps().encode())
    raise TypeError(f"cannot send a value of type {type(value).__name__} to the server")


def _bigint(value: int) -> msgpack.ExtType:
    length = (value.bit_length() + 8) // 8
    return msgpack.ExtType(EXT_BIGINT, value.to_bytes(length, "big", signed=True))


def _replace_bigints(value: Any) -> Any:
    """Slow path: wrap out-of-range ints, which msgpack refuses before calling ``default``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not _INT64_MIN <= value <= _UINT64_MAX:
        return _bigint(value)
    if isinstance(value, list | tuple):
        return [_replace_bigints(v) for v in value]
    if isinstance(value, dict):
        return {k: _replace_bigints(v) for k, v in value.items()}
    return value


class _Packers(threading.local):
    """One reusable Packer per thread (``msgpack.packb`` builds, and allocates the buffer
    of, a new one at every call: most of the cost of packing a small message)."""

    def __init__(self) -> None:
        self.pack = msgpack.Packer(default=_default, use_bin_type=True, autoreset=True).pack


_packers = _Packers()


def pack(value: Any) -> bytes:
    """Encode ``value``; raises TypeError for a value with no wire representation."""
    try:
        return _packers.pack(value)  # type: ignore[no-any-return]
    except OverflowError:  # (the Packer resets itself after an error)
        return _packers.pack(_replace_bigints(value))  # type: ignore[no-any-return]


def array_header(n: int) -> bytes:
    """The msgpack header of an array of ``n`` elements (the elements follow it)."""
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def pack_array_of_packed(items: list[bytes]) -> bytes:
    """A msgpack array whose elements are already-encoded values."""
    return array_header(len(items)) + b"".join(items)


# A JSON value nested deeper than this Python decodes (its C decoder counts each level
# against the recursion limit: about 900 levels in the server's event loop) is no malformed
# message: a client gets its text (as SQLite's reads give a stored value that does not
# decode), and the server a Json.too_deep that fails only the statement using it.

def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_JSON:
        try:
            return json.loads(data)
        except RecursionError:
            return data.decode()
    return _ext_common(code, data)


def _ext_hook_wrapped(code: int, data: bytes) -> Any:
    if code == EXT_JSON:
        try:
            return Json(json.loads(data))
        except RecursionError:
            return Json.too_deep(len(data))
    return _ext_common(code, data)


def _ext_common(code: int, data: bytes) -> Any:
    if code == EXT_BIGINT:
        return int.from_bytes(data, "big", signed=True)
    if code == EXT_DECIMAL:
        return Decimal(data.decode())
    if code == EXT_DATE:
        return dt.date.fromisoformat(data.decode())
    if code == EXT_TIME:
        return dt.time.fromisoformat(data.decode())
    if code == EXT_DATETIME:
        return dt.datetime.fromisoformat(data.decode())
    if code == EXT_UUID:
        return uuid.UUID(bytes=data)
    raise ValueError(f"unknown extension type {code}")


def unpack(data: bytes | memoryview) -> Any:
    """Decode one value; arrays come back as tuples. Raises ValueError on malformed input."""
    return _unpack(data, _ext_hook, False)


def unpack_wrapped(data: bytes | memoryview) -> Any:
    """:func:`unpack`, with JSON values as :class:`Json`: the server's view of what a client
    sends.  Map keys must be text or bytes there (``strict_map_key``): their hashes are
    seeded per process, whereas tuples, numbers and the other types hash to values anyone
    can compute, so a map of thousands of keys with one hash would take time quadratic in
    its size to decode (one such frame of 447 KB held the event loop 12.7 s)."""
    return _unpack(data, _ext_hook_wrapped, True)


# What a malformed value raises inside msgpack.unpackb, worded as ValueError by _unpack (and
# by the compiled protocol core, which calls msgpack itself).
MALFORMED = (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, UnicodeDecodeError)
# InvalidOperation (an ArithmeticError): a DECIMAL extension that is not a number;
# RecursionError: a JSON extension nested deeper than the interpreter's stack allows.
MALFORMED_TOO = (ValueError, TypeError, OverflowError, InvalidOperation, RecursionError)


class Decoding:
    """One value decoded a slice at a time: what :func:`unpack_wrapped` (``wrapped``) or
    :func:`unpack` returns for ``data``, or the ValueError it raises, over as many calls
    of :meth:`step` as the value has slices.  The server decodes a large message so, one
    slice per turn of its event loop: decoding 16 MiB of small nested values at once held
    the loop, and every other session, for seconds."""

    def __init__(self, data: bytes, wrapped: bool) -> None:
        self._data = data
        self._pos = 0
        # msgpack's streaming decoder keeps a value it has begun between feeds; its limits
        # (longest string, array, map) default to max_buffer_size, as unpackb's to the
        # length of what it decodes: the same values are refused.
        self._u = msgpack.Unpacker(ext_hook=_ext_hook_wrapped if wrapped else _ext_hook,
                                   raw=False, use_list=False, strict_map_key=wrapped,
                                   max_buffer_size=max(len(data), 1))

    @property
    def left(self) -> int:
        """Bytes not yet fed to the decoder."""
        return len(self._data) - self._pos

    def step(self, size: int) -> tuple[bool, Any]:
        """Decode up to ``size`` more bytes: (True, the value) once it is complete, else
        (False, None).  Raises ValueError as :func:`unpack` does for the same data."""
        try:
            return self._step(size)
        except MALFORMED as e:
            raise ValueError(f"malformed value: {str(e) or type(e).__name__}") from e
        except MALFORMED_TOO as e:
            raise ValueError(f"malformed value: {str(e) or type(e).__name__}") from e

    def _step(self, size: int) -> tuple[bool, Any]:
        data, end = self._data, min(self._pos + max(size, 1), len(self._data))
        with memoryview(data) as view:
            self._u.feed(view[self._pos:end])
        self._pos = end
        try:
            value = self._u.unpack()
        except msgpack.OutOfData:
            if end < len(data):
                return False, None
            raise ValueError("Unpack failed: incomplete input") from None  # (unpackb's words)
        if end < len(data) or self._u.tell() < len(data):
            raise msgpack.ExtraData(value, b"")  # bytes after the value, as unpackb says
        return True, value


def _unpack(data: bytes | memoryview, hook: Any, strict: bool) -> Any:
    try:
        return msgpack.unpackb(
            data, ext_hook=hook, raw=False, use_list=False, strict_map_key=strict
        )
    except MALFORMED as e:
        raise ValueError(f"malformed value: {str(e) or type(e).__name__}") from e
    except MALFORMED_TOO as e:
        raise ValueError(f"malformed value: {str(e) or type(e).__name__}") from e
