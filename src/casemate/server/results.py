"""What a request's storage work produces and how its failure reads: row batches, the
coded error for an exception, and the two storage calls that open a result (request
bodies are checked for shape by their types, in ``protocol/messages.py``).  Pure
functions, with no session state: the request handlers call them, in the event loop or
in a worker thread.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import Codes, Error
from ..protocol import codec
from ..storage import Busy, Interrupted, StorageConnection, StorageCursor, StorageError
from ..storage.access import PermissionDenied
from ..storage.base import TYPE_NAMES

__all__ = ["REPORTED", "Batch", "Closed", "execute_first", "execute_many", "fetch_batch",
           "storage_error"]

# A row batch stops growing at ~1 MiB or at the client's row count, whichever
# comes first: server and client then hold at most about one batch each.
BATCH_BYTES = 1024 * 1024
SUBCHUNK_ROWS = 256


class Closed(Exception):
    """The peer went away or the session must end."""

class Batch(NamedTuple):
    """Rows pulled from a cursor for one ROWS frame (or a one-frame RESULT)."""

    body: bytes  # the rows, packed as one msgpack array
    row_count: int
    more: bool  # the cursor may hold more rows: it stays open as a portal
    types: list[str | None]  # each column's type code ([] unless asked to describe)


def fetch_batch(cur: StorageCursor, max_rows: int, describe: bool = True) -> Batch:
    """Pull up to ``max_rows`` rows (or ~1 MiB) from ``cur``; with ``describe``, each
    column's type code, from the first row's value, else (NULL, no rows) from the
    statement's declared types."""
    done = cur.pack(max_rows, BATCH_BYTES, describe)  # the compiled row path, if any
    if done is not None:
        return Batch(done.body, done.rows, done.more, _types(cur, done.types, describe))
    chunks: list[bytes] = []
    total = n = 0
    first: list[Any] = []
    while n < max_rows and total < BATCH_BYTES:
        # Rows may be large (a value can reach limits.max_value_bytes): fetch one first,
        # then as many as fit in the batch at the mean size seen, so a batch holds at most
        # one row beyond BATCH_BYTES (256 rows of 16 MB values took gigabytes).
        want = min(SUBCHUNK_ROWS, max_rows - n, (BATCH_BYTES - total) * n // total + 1
                   if n else 1)
        rows = cur.fetch(want)
        if rows:
            if not first:
                first = [type(v) for v in rows[0]]
            packed = codec.pack(rows)
            chunks.append(packed)
            total += len(packed)
            n += len(rows)
        if not rows or (len(rows) < want and not cur.short_fetches):
            return Batch(codec.pack_array_of_packed(chunks), n, False, _types(cur, first, describe))
    return Batch(codec.pack_array_of_packed(chunks), n, True, _types(cur, first, describe))


def _types(cur: StorageCursor, first: list[Any], describe: bool) -> list[str | None]:
    """The type codes of the first row's values (``first``: their Python types)."""
    if not describe:
        return []
    types = [None if t is type(None) or t is None else TYPE_NAMES.get(t, t.__name__)
             for t in first]
    if types and None not in types:
        return types
    declared = cur.declared_types()
    if not types:
        return declared
    return [t if t is not None else d for t, d in zip(types, declared, strict=False)]


def storage_error(e: BaseException) -> Error:
    """A failed request's exception as the coded error sent to the client (each storage
    backend has already given its engine's errors their codes: StorageError)."""
    msg = str(e)
    if isinstance(e, StorageError):
        return Error(e.message, e.code, e.hint)
    if isinstance(e, Interrupted):  # stopped without the session asking (a method's limit)
        return Error("statement interrupted", Codes.QUERY_CANCELED)
    if isinstance(e, Busy):  # met where no retry is possible (e.g. reading a later batch)
        return Error("database is busy: another session holds the write lock", Codes.BUSY,
                     "roll back and retry the transaction")
    if isinstance(e, PermissionDenied):
        hint = ("an administrator can grant it: casemate group grant TARGET GROUP TABLE RIGHT"
                if " on table " in msg else None)
        return Error(msg, Codes.INSUFFICIENT_PRIVILEGE, hint)
    if isinstance(e, ArithmeticError | ValueError):
        return Error(msg, Codes.NUMERIC_OUT_OF_RANGE if isinstance(e, OverflowError) or
                     "64 bits" in msg else Codes.DATA)
    if isinstance(e, TypeError):
        return Error(f"malformed request: {msg}", Codes.PROTOCOL_VIOLATION)
    if isinstance(e, RecursionError):
        return Error("a value is nested deeper than the server can handle (Python's recursion "
                     "limit, about 900 levels)", Codes.DATA, "flatten it, or send it as text")
    return Error(f"internal error: {type(e).__name__}: {msg}", Codes.INTERNAL)


# Request failures reported to the client as errors (the session goes on).
# RecursionError: a value nested deeper than Python's recursion limit lets some step take
# (encoding a JSON parameter, say) fails its request, not the session.
REPORTED = (Error, StorageError, PermissionDenied, Busy, Interrupted, ValueError, TypeError,
             ArithmeticError, RecursionError)


def execute_first(conn: StorageConnection, sql: str, params: tuple[Any, ...], begin: bool,
                   batch: int) -> tuple[StorageCursor, Batch | None]:
    opened = begin and not conn.in_transaction
    if begin:
        conn.begin()
    try:
        cur = conn.execute(sql, params)
        if cur.description is None:
            cur.close()
            return cur, None
        return cur, fetch_batch(cur, batch)
    except BaseException:
        if opened:  # the client never saw this transaction start: do not leave it open
            conn.rollback()
        raise


def execute_many(conn: StorageConnection, sql: str, seq: Any, begin: bool) -> int:
    if not all(isinstance(p, tuple) for p in seq):
        raise Error("executemany parameters must be a sequence of sequences", Codes.PROGRAMMING)
    if not begin and not conn.in_transaction:
        return conn.atomic_many(sql, seq)  # autocommit: each request is all or nothing
    opened = not conn.in_transaction
    conn.begin()
    try:
        return conn.executemany(sql, seq)
    except BaseException:
        if opened:
            conn.rollback()
        raise
