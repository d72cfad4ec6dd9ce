"""The body of every message, declared once: what the server and both clients build and
read, by field name.

An array body is a :class:`~typing.NamedTuple`: it *is* the tuple msgpack encodes as
an array and decodes from one, so the wire is the tuple encoding it always was (old
clients keep working; ``tests/protocol/test_messages.py`` checks the bytes), building
one costs no conversion, and a handler reads ``q.sql``, not ``body[1]``.  A map body
(``HELLO``, ``HELLO_OK``, ``AUTH_OK``, ``ERROR``, ``NOTICE``) is a frozen dataclass
with ``wire()`` (the map, keys in the order they always had) and a lenient ``decode``
(the login and the error paths have always read these maps with defaults).  A scalar
body (``CANCEL n``, ``SUSPENDED portal``, the SCRAM strings) is a ``NewType`` of its
value; ``COMMIT``, ``ROLLBACK``, ``SYNC`` and ``TERMINATE`` carry ``nil``.

``decode`` turns a body as :class:`~.core.ProtocolConnection` decoded it (arrays are
tuples) into the declared type, and raises what the server has always raised for a
malformed one (``ProtocolError 08P01`` "malformed QUERY message"...).  ``Query``
(the request of every statement) takes a fast path when every field already has its
type (one C call); the other request types check their fields one by one, a few hundred
nanoseconds: ``docs/architecture.md`` gives the measurements that chose NamedTuples over
``msgspec.Struct``.

:data:`BODIES` maps every :class:`~.core.Msg` to its body type; ``docs/protocol.md``
documents each (``tests/protocol/test_messages_documented.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple, NewType

from ..errors import Codes, ProtocolError
from .core import Msg, result_body

__all__ = [
    "BODIES", "MAX_BATCH_ROWS", "batch_size",
    "Hello", "SaslInitial", "SaslResponse", "Query", "ExecuteMany", "Fetch", "ClosePortal",
    "Admin", "Call", "Cancel",
    "HelloOk", "SaslChallenge", "AuthOk", "Column", "Description", "Rows", "Result",
    "Suspended", "Complete", "ErrorBody", "Notice", "decode_cancel", "decode_description", "typed",
]

MAX_BATCH_ROWS = 100_000
_new = tuple.__new__  # a tuple as a NamedTuple, in C, with no per-field Python call


def batch_size(v: Any) -> int:
    """A request's ``batch_rows``, clamped to 1..100,000 (not an integer: 1000)."""
    n = int(v) if isinstance(v, int) and not isinstance(v, bool) else 1000
    return max(1, min(n, MAX_BATCH_ROWS))


def _malformed(name: str) -> ProtocolError:
    return ProtocolError(f"malformed {name} message", Codes.PROTOCOL_VIOLATION)


def _shape(body: Any, name: str, *types: type) -> None:
    """Check an array body's layout (a bool is no int); a malformed one ends the session."""
    if not (isinstance(body, tuple) and len(body) == len(types) and all(
            isinstance(v, t) and (t is bool or not isinstance(v, bool))
            for v, t in zip(body, types, strict=True))):
        raise _malformed(name)


# -- client -> server ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class Hello:
    """``HELLO``: the first message; the server reads it leniently (a missing or
    mistyped field is a default, a wrong ``protocol`` is ``08P04``)."""

    protocol: Any
    program: Any = ""
    host: Any = ""
    features: Any = None  # ("result",): the client takes RESULT frames
    statement_timeout: Any = None  # seconds; omitted when None

    def wire(self) -> dict[str, Any]:
        body = {"protocol": self.protocol, "program": self.program, "host": self.host,
                "features": list(self.features or ())}
        if self.statement_timeout is not None:
            body["statement_timeout"] = self.statement_timeout
        return body

    @classmethod
    def decode(cls, body: Any) -> Hello:
        b = body if isinstance(body, dict) else {}
        return cls(b.get("protocol"), b.get("program", ""), b.get("host", ""),
                   b.get("features"), b.get("statement_timeout"))


class SaslInitial(NamedTuple):
    """``SASL_INITIAL [mechanism, client-first-message]``."""

    mechanism: str
    message: str

    @classmethod
    def decode(cls, body: Any) -> SaslInitial | None:
        """The body, or None when it is not two strings' worth (the login refuses it)."""
        if isinstance(body, tuple) and len(body) == 2 and isinstance(body[1], str):
            return _new(cls, body)
        return None


SaslResponse = NewType("SaslResponse", str)  # the SCRAM client-final-message ("" for EXTERNAL)


class Query(NamedTuple):
    """``QUERY [portal, sql, params, begin, batch_rows]``: run one statement."""

    portal: int
    sql: str
    params: tuple[Any, ...]
    begin: bool
    batch_rows: int

    @classmethod
    def decode(cls, body: Any) -> Query:
        if type(body) is tuple and len(body) == 5:
            portal, sql, params, begin, batch = body
            if (type(portal) is int and type(sql) is str and type(params) is tuple
                    and type(begin) is bool and type(batch) is int
                    and 0 < batch <= MAX_BATCH_ROWS):
                return _new(cls, body)  # what clients send: nothing to convert
        if not (isinstance(body, tuple) and len(body) == 5 and isinstance(body[1], str)):
            raise _malformed("QUERY")
        params = body[2] if body[2] is not None else ()
        if not isinstance(params, tuple):
            raise ProtocolError("QUERY parameters must be an array", Codes.PROTOCOL_VIOLATION)
        # The portal is an integer and begin a boolean, as with FETCH and CALL: anything
        # else is the wrong shape, fatal to the connection (a nil portal was answered as a
        # failed request, and "1" or 1.5 taken for portal 1).  batch_rows stays lenient
        # (documented: not an integer counts as 1000).
        if type(body[0]) is not int or type(body[3]) is not bool:
            raise _malformed("QUERY")
        return _new(cls, (body[0], body[1], params, body[3], batch_size(body[4])))


class ExecuteMany(NamedTuple):
    """``EXECUTE_MANY [sql, [params, ...], begin]``."""

    sql: str
    param_sets: Sequence[Any]  # each should be an array: checked where it runs (42000)
    begin: bool

    @classmethod
    def decode(cls, body: Any) -> ExecuteMany:
        _shape(body, "EXECUTE_MANY", str, tuple, bool)
        return _new(cls, body)


class Fetch(NamedTuple):
    """``FETCH [portal, batch_rows]``: the next batch of a suspended result."""

    portal: int
    batch_rows: int

    @classmethod
    def decode(cls, body: Any) -> Fetch:
        _shape(body, "FETCH", int, int)
        return _new(cls, (body[0], batch_size(body[1])))


class ClosePortal(NamedTuple):
    """``CLOSE_PORTAL [portal]``."""

    portal: int

    @classmethod
    def decode(cls, body: Any) -> ClosePortal:
        _shape(body, "CLOSE_PORTAL", int)
        return _new(cls, body)


class Admin(NamedTuple):
    """``ADMIN [command, {args}]``: user and server administration (admin group)."""

    command: str
    args: dict[str, Any]

    @classmethod
    def decode(cls, body: Any) -> Admin:
        _shape(body, "ADMIN", str, dict)
        return _new(cls, body)


class Call(NamedTuple):
    """``CALL [portal, name, args, kwargs, begin, batch_rows]``: run a server method."""

    portal: int
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    begin: bool
    batch_rows: int

    @classmethod
    def decode(cls, body: Any) -> Call:
        _shape(body, "CALL", int, str, tuple, dict, bool, int)
        return _new(cls, (*body[:5], batch_size(body[5])))


Cancel = NewType("Cancel", int)  # the newest request to stop (out of band, no reply)


def decode_cancel(body: Any) -> Cancel:
    if not isinstance(body, int) or isinstance(body, bool):
        raise _malformed("CANCEL")
    return Cancel(body)


# -- server -> client ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class HelloOk:
    """``HELLO_OK``: the server's answer to ``HELLO``."""

    protocol: Any
    encrypted: Any = False
    mechanisms: Any = None  # [mechanism, ...]
    max_message_bytes: Any = None  # the limit after login; older servers omit it

    def wire(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "encrypted": self.encrypted,
                "mechanisms": list(self.mechanisms or ()), "max_message_bytes": self.max_message_bytes}

    @classmethod
    def decode(cls, body: Any) -> HelloOk:
        b = body if isinstance(body, dict) else {}
        return cls(b.get("protocol"), b.get("encrypted"), b.get("mechanisms"),
                   b.get("max_message_bytes"))


SaslChallenge = NewType("SaslChallenge", str)  # the SCRAM server-first-message ("" for EXTERNAL)


@dataclasses.dataclass(frozen=True, slots=True)
class AuthOk:
    """``AUTH_OK``: the login succeeded."""

    server_final: Any  # SCRAM server-final-message (None after EXTERNAL)
    session: Any = 0
    server_version: Any = ""
    backend: Any = ""
    publication: Any = ""
    user: Any = ""
    group: Any = ""

    def wire(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def decode(cls, body: Any) -> AuthOk:
        b = body if isinstance(body, dict) else {}
        return cls(b.get("server_final"), b.get("session", 0), b.get("server_version", ""),
                   b.get("backend", ""), b.get("publication", ""), b.get("user", ""),
                   b.get("group", ""))


class Column(NamedTuple):
    """One ``DESCRIPTION`` entry: ``[column_name, type_code]``."""

    name: str
    type_code: str | None


Description = NewType("Description", list[Column])


def decode_description(body: Any) -> list[tuple[str, str | None]]:
    """A DESCRIPTION body as (name, type code) pairs."""
    return [(str(c[0]), c[1]) for c in body]


# [chunk, ...], each chunk [row, ...], each row [value, ...]; the server packs it ahead
Rows = NewType("Rows", list[list[tuple[Any, ...]]])


class Complete(NamedTuple):
    """``COMPLETE [rowcount, lastrowid, in_transaction]``: a request finished."""

    rowcount: int
    lastrowid: int | None
    in_transaction: bool

    @classmethod
    def decode(cls, body: Any) -> Complete:
        if type(body) is tuple and len(body) == 3:
            return _new(cls, body)
        rowcount, lastrowid, in_txn = body  # (raises as unpacking always did)
        return _new(cls, (rowcount, lastrowid, in_txn))


class Result(NamedTuple):
    """``RESULT [description, rows, completion]``: a whole small result in one frame."""

    description: list[tuple[str, str | None]]
    rows: Any  # a ROWS body
    completion: Complete

    @classmethod
    def decode(cls, body: Any) -> Result:
        desc, rows, c = body
        return _new(cls, ([(str(d[0]), d[1]) for d in desc], rows,
                          _new(Complete, c) if type(c) is tuple and len(c) == 3
                          else Complete.decode(c)))

    @staticmethod
    def pack(description: list[tuple[str, str | None]], packed_rows: bytes, rowcount: int,
             lastrowid: int | None, in_transaction: bool) -> bytes:
        """The body, from rows already packed (``core.result_body``, which the
        protocol cores' ``send_result`` builds the RESULT frame with)."""
        return result_body(description, packed_rows, rowcount, lastrowid, in_transaction)


Suspended = NewType("Suspended", int)  # the portal whose result stays open


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorBody:
    """``ERROR``: a request (or the connection) failed."""

    code: str
    message: str
    hint: str | None = None  # omitted when empty

    def wire(self) -> dict[str, Any]:
        body = {"code": self.code, "message": self.message}
        if self.hint:
            body["hint"] = self.hint
        return body

    @classmethod
    def decode(cls, body: Any) -> ErrorBody:
        b = body if isinstance(body, dict) else {}
        return cls(str(b.get("code", Codes.INTERNAL)), str(b.get("message", "unknown error")),
                   b.get("hint"))


@dataclasses.dataclass(frozen=True, slots=True)
class Notice:
    """``NOTICE``: information, at any moment; not a reply."""

    code: str
    message: str

    def wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def decode(cls, body: Any) -> Notice:
        if not isinstance(body, dict):
            raise ProtocolError("malformed NOTICE from server", Codes.PROTOCOL_VIOLATION)
        return cls(str(body.get("code", "")), str(body.get("message", "")))


# Every message type and its body's declared type (None: the body is nil).
BODIES: dict[Msg, Any] = {
    Msg.HELLO: Hello,
    Msg.SASL_INITIAL: SaslInitial,
    Msg.SASL_RESPONSE: SaslResponse,
    Msg.QUERY: Query,
    Msg.EXECUTE_MANY: ExecuteMany,
    Msg.FETCH: Fetch,
    Msg.CLOSE_PORTAL: ClosePortal,
    Msg.COMMIT: None,
    Msg.ROLLBACK: None,
    Msg.SYNC: None,
    Msg.ADMIN: Admin,
    Msg.CALL: Call,
    Msg.TERMINATE: None,
    Msg.CANCEL: Cancel,
    Msg.HELLO_OK: HelloOk,
    Msg.SASL_CHALLENGE: SaslChallenge,
    Msg.AUTH_OK: AuthOk,
    Msg.DESCRIPTION: Description,
    Msg.ROWS: Rows,
    Msg.RESULT: Result,
    Msg.SUSPENDED: Suspended,
    Msg.COMPLETE: Complete,
    Msg.ERROR: ErrorBody,
    Msg.NOTICE: Notice,
}


def typed(msg: Msg, body: Any) -> Any:
    """``body`` as the declared type of ``msg``'s array body (a bare tuple, as tests and
    older callers build requests, becomes one; TypeError if it does not fit); any other
    body as it is."""
    t = BODIES.get(msg)
    if not (isinstance(t, type) and issubclass(t, tuple)) or isinstance(body, t):
        return body
    return t._make(body)  # type: ignore[attr-defined]
