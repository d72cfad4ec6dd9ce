"""The typed message bodies (protocol/messages.py) put on the wire exactly the bytes the
bare tuples and dicts did, and check malformed bodies as the server always has."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest

from casemate.errors import Codes, ProtocolError
from casemate.protocol import Msg, codec, encode_frame
from casemate.protocol.messages import (
    BODIES,
    Admin,
    AuthOk,
    Call,
    ClosePortal,
    Complete,
    ErrorBody,
    ExecuteMany,
    Fetch,
    Hello,
    HelloOk,
    Notice,
    Query,
    Result,
    SaslInitial,
    typed,
)

VALUES = (42, -1, 2**70, 1.5, "text", b"\x00\xff", None, True, Decimal("1.50"),
          dt.date(2024, 5, 17), dt.time(12, 30), dt.datetime(2024, 5, 17, 12, 30),
          uuid.UUID(int=7), codec.Json([1, 2]))

# (message, typed body, the body as the code built it before the types)
CASES: list[tuple[Msg, Any, Any]] = [
    (Msg.QUERY, Query(1, "SELECT ?", (42,), True, 2000), (1, "SELECT ?", (42,), True, 2000)),
    (Msg.QUERY, Query(7, "SELECT " + ", ".join("?" * len(VALUES)), VALUES, False, 1),
     (7, "SELECT " + ", ".join("?" * len(VALUES)), VALUES, False, 1)),
    (Msg.EXECUTE_MANY, ExecuteMany("INSERT INTO t VALUES (?)", [(1,), (Decimal("2"),)], True),
     ("INSERT INTO t VALUES (?)", [(1,), (Decimal("2"),)], True)),
    (Msg.FETCH, Fetch(3, 2000), (3, 2000)),
    (Msg.CLOSE_PORTAL, ClosePortal(3), (3,)),
    (Msg.ADMIN, Admin("drop", {"session": 4, "reason": "x"}), ("drop", {"session": 4, "reason": "x"})),
    (Msg.CALL, Call(2, "m", (1, dt.date(2020, 1, 1)), {"k": "v"}, True, 2000),
     (2, "m", (1, dt.date(2020, 1, 1)), {"k": "v"}, True, 2000)),
    (Msg.SASL_INITIAL, SaslInitial("SCRAM-SHA-256", "n,,n=u,r=abc"), ("SCRAM-SHA-256", "n,,n=u,r=abc")),
    (Msg.COMPLETE, Complete(-1, None, False), (-1, None, False)),
    (Msg.COMPLETE, Complete(3, 2**40, True), (3, 2**40, True)),
    (Msg.HELLO, Hello(1, "prog", "host", ("result",), None).wire(),
     {"protocol": 1, "program": "prog", "host": "host", "features": ["result"]}),
    (Msg.HELLO, Hello(1, "prog", "host", ("result",), 2.5).wire(),
     {"protocol": 1, "program": "prog", "host": "host", "features": ["result"],
      "statement_timeout": 2.5}),
    (Msg.HELLO_OK, HelloOk(1, True, ["SCRAM-SHA-256-PLUS"], 1 << 24).wire(),
     {"protocol": 1, "encrypted": True, "mechanisms": ["SCRAM-SHA-256-PLUS"],
      "max_message_bytes": 1 << 24}),
    (Msg.AUTH_OK, AuthOk("v=abc", 3, "0.1.0", "sqlite", "pub", "u", "g").wire(),
     {"server_final": "v=abc", "session": 3, "server_version": "0.1.0", "backend": "sqlite",
      "publication": "pub", "user": "u", "group": "g"}),
    (Msg.AUTH_OK, AuthOk(None, 3, "0.1.0", "sqlite", "pub", "u", "g").wire(),
     {"server_final": None, "session": 3, "server_version": "0.1.0", "backend": "sqlite",
      "publication": "pub", "user": "u", "group": "g"}),
    (Msg.ERROR, ErrorBody("42601", "syntax error", "a hint").wire(),
     {"code": "42601", "message": "syntax error", "hint": "a hint"}),
    (Msg.ERROR, ErrorBody("42601", "syntax error", None).wire(),
     {"code": "42601", "message": "syntax error"}),
    (Msg.ERROR, ErrorBody("42601", "syntax error", "").wire(), {"code": "42601", "message": "syntax error"}),
    (Msg.NOTICE, Notice("01M00", "hello").wire(), {"code": "01M00", "message": "hello"}),
]


@pytest.mark.parametrize(("msg", "new", "old"), CASES)
def test_typed_bodies_encode_to_the_old_bytes(msg: Msg, new: Any, old: Any) -> None:
    assert encode_frame(msg, new) == encode_frame(msg, old)


def test_result_frame_joined_from_packed_rows_is_the_tuple_encoding() -> None:
    desc = [("id", "integer"), ("d", "date")]
    rows = [[(1, dt.date(2024, 1, 2)), (2, None)]]
    packed = codec.pack_array_of_packed([codec.pack(chunk) for chunk in rows])
    assert Result.pack(desc, packed, -1, 5, True) == codec.pack((desc, rows, (-1, 5, True)))
    r = Result.decode(codec.unpack(codec.pack((desc, rows, (-1, 5, True)))))
    assert r.description == desc and r.completion == Complete(-1, 5, True)
    assert r.completion.in_transaction is True and list(r.rows[0]) == [tuple(x) for x in rows[0]]


def test_the_documented_worked_example() -> None:
    assert encode_frame(Msg.QUERY, Query(1, "SELECT ?", (42,), True, 2000)).hex(" ") == (
        "51 00 00 00 11 95 01 a8 53 45 4c 45 43 54 20 3f 91 2a c3 cd 07 d0")
    assert encode_frame(Msg.COMPLETE, Complete(-1, None, False)).hex(" ") == "5a 00 00 00 04 93 ff c0 c2"


def test_decoding_gives_the_declared_type_by_field() -> None:
    q = Query.decode(codec.unpack_wrapped(codec.pack((1, "SELECT ?", (42,), True, 2000))))
    assert type(q) is Query and (q.portal, q.sql, q.params, q.begin, q.batch_rows) == (
        1, "SELECT ?", (42,), True, 2000)
    # Still accepted: nil parameters, a batch size clamped (not an integer: 1000).
    q = Query.decode((1, "SELECT 1", None, True, 10**9))
    assert (q.portal, q.params, q.begin, q.batch_rows) == (1, (), True, 100_000)
    assert Query.decode((1, "x", (), False, "many")).batch_rows == 1000
    assert Fetch.decode((2, 0)).batch_rows == 1
    assert Call.decode((1, "m", (), {}, False, 5)).name == "m"


@pytest.mark.parametrize(("decode", "body", "message"), [
    (Query.decode, (1, 2, (), True, 10), "malformed QUERY message"),
    (Query.decode, (1, "x", ()), "malformed QUERY message"),
    (Query.decode, [1, "x", (), True, 10], "malformed QUERY message"),
    (Query.decode, (1, "x", 5, True, 10), "QUERY parameters must be an array"),
    (Query.decode, (True, "x", (), True, 10), "malformed QUERY message"),  # portal: a bool
    (Query.decode, (None, "x", (), True, 10), "malformed QUERY message"),
    (Query.decode, ("1", "x", (), True, 10), "malformed QUERY message"),
    (Query.decode, (1, "x", (), 1, 10), "malformed QUERY message"),  # begin: not a bool
    (Fetch.decode, (1, True), "malformed FETCH message"),
    (Fetch.decode, (1,), "malformed FETCH message"),
    (ClosePortal.decode, ("1",), "malformed CLOSE_PORTAL message"),
    (ExecuteMany.decode, ("x", (), 1), "malformed EXECUTE_MANY message"),
    (Admin.decode, ("status", ()), "malformed ADMIN message"),
    (Call.decode, (1, "m", (), {}, True), "malformed CALL message"),
])
def test_malformed_bodies_raise_what_the_server_always_raised(decode: Any, body: Any,
                                                                message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(body)
    assert (info.value.message, info.value.code) == (message, Codes.PROTOCOL_VIOLATION)


def test_bare_tuples_become_the_declared_type() -> None:
    assert typed(Msg.QUERY, (1, "x", (), True, 10)).sql == "x"
    assert typed(Msg.FETCH, Fetch(1, 2)).portal == 1
    assert typed(Msg.SYNC, None) is None and typed(Msg.CANCEL, 4) == 4
    with pytest.raises(TypeError):
        typed(Msg.QUERY, (1, "x"))


def test_every_message_type_has_a_declared_body() -> None:
    assert set(BODIES) == set(Msg)
