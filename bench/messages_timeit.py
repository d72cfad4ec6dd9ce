"""Per-message CPU of the typed bodies (protocol/messages.py) against the bare tuples they
replaced and msgspec Structs: ``taskset -c 0 python bench/messages_timeit.py`` (msgspec
must be importable, e.g. ``pip install --target /tmp/ms msgspec`` and PYTHONPATH)."""
import timeit
from typing import Any

import msgspec

from casemate.errors import Codes, ProtocolError
from casemate.protocol import codec
from casemate.protocol.messages import Complete, Query, Result, batch_size


def old_query_args(body):  # results.query_args before this change
    if not (isinstance(body, tuple) and len(body) == 5 and isinstance(body[1], str)):
        raise ProtocolError("malformed QUERY message", Codes.PROTOCOL_VIOLATION)
    params = body[2] if body[2] is not None else ()
    if not isinstance(params, tuple):
        raise ProtocolError("QUERY parameters must be an array", Codes.PROTOCOL_VIOLATION)
    return int(body[0]), body[1], params, bool(body[3]), batch_size(body[4])

class SQuery(msgspec.Struct, array_like=True, frozen=True, gc=False):
    portal: int
    sql: str
    params: tuple[Any, ...] | None
    begin: bool
    batch_rows: Any


class SComplete(msgspec.Struct, array_like=True, frozen=True, gc=False):
    rowcount: int
    lastrowid: int | None
    in_transaction: bool

_qdec = msgspec.msgpack.Decoder(SQuery, ext_hook=lambda c, d: codec._ext_hook_wrapped(c, bytes(d)))
_enc = msgspec.msgpack.Encoder()
def ms_query(data):
    try:
        q = _qdec.decode(data)
    except msgspec.ValidationError as e:
        raise ProtocolError("malformed QUERY message", Codes.PROTOCOL_VIOLATION) from e
    return q, batch_size(q.batch_rows)

SQL = "SELECT v FROM t WHERE id = ?"
QB = codec.pack((1, SQL, (42,), True, 2000))
DESC = [("v", "text")]
ROWS = codec.pack_array_of_packed([codec.pack([("hello",)])])
RB = codec.array_header(3) + codec.pack(DESC) + ROWS + codec.pack((-1, None, True))
assert codec.pack(Query(1, SQL, (42,), True, 2000)) == QB
assert Result.pack(DESC, ROWS, -1, None, True) == RB
assert _enc.encode(SComplete(-1, None, False)) == codec.pack((-1, None, False))

def old_recv(body):
    desc, chunks, complete = body
    d = [(str(c[0]), c[1]) for c in desc]
    rowcount, lastrowid, in_txn = complete
    return d, chunks, rowcount, lastrowid, in_txn


def new_recv(body):
    r = Result.decode(body)
    c = r.completion
    return r.description, r.rows, c.rowcount, c.lastrowid, c.in_transaction

RBODY = codec.unpack(RB)
cases = [
 ("server: QUERY decode+validate, today (unpack + query_args)",
  lambda: old_query_args(codec.unpack_wrapped(QB))),
 ("server: QUERY decode+validate, NamedTuple (unpack + Query.decode)",
  lambda: Query.decode(codec.unpack_wrapped(QB))),
 ("server: QUERY decode+validate, msgspec Struct (Decoder(Query))",
  lambda: ms_query(QB)),
 ("server: COMPLETE build+encode, today (tuple + codec.pack)",
  lambda: codec.pack((-1, None, False))),
 ("server: COMPLETE build+encode, NamedTuple (Complete(...) + codec.pack)",
  lambda: codec.pack(Complete(-1, None, False))),
 ("server: COMPLETE build+encode, msgspec Struct (Struct + Encoder.encode)",
  lambda: _enc.encode(SComplete(-1, None, False))),
 ("server: RESULT body, today (join of packed parts)",
  lambda: b"".join((codec.array_header(3), codec.pack(DESC), ROWS, codec.pack((-1, None, True))))),
 ("server: RESULT body, NamedTuple (Result.pack)",
  lambda: Result.pack(DESC, ROWS, -1, None, True)),
 ("client: QUERY build+encode, today (tuple + codec.pack)",
  lambda: codec.pack((1, SQL, (42,), True, 2000))),
 ("client: QUERY build+encode, NamedTuple (Query(...) + codec.pack)",
  lambda: codec.pack(Query(1, SQL, (42,), True, 2000))),
 ("client: RESULT body read, today (tuple unpacking)",
  lambda: old_recv(RBODY)),
 ("client: RESULT body read, NamedTuple (Result.decode)",
  lambda: new_recv(RBODY)),
]
N = 200_000
for name, fn in cases:
    print(f"{min(timeit.repeat(fn, number=N, repeat=9)) / N * 1e9:6.0f} ns  {name}")
