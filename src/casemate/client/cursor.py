"""A cursor's state, shared by the DB-API and asyncio cursors, with no I/O.

What a cursor asks (QUERY, CALL, EXECUTE_MANY, the FETCH of the next batch, the
CLOSE_PORTAL of a result left open) and what it keeps (rows, description,
rowcount, lastrowid, the prefetched batch) are decided here once; the two
cursors only send the requests this class returns and wait for their replies.
So batch size, the result column of a server method, "no result set" and
"cursor is closed" cannot drift apart between the clients.
"""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import itertools
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar, cast

from ..errors import Error, InterfaceError, OperationalError, ProgrammingError
from ..protocol import Msg
from ..protocol.codec import Json
from ..protocol.messages import Call, ClosePortal, ExecuteMany, Fetch, Query
from .core import ExecRequest, Request, SimpleRequest

__all__ = ["CursorState", "Step", "CursorAttrs", "DEFAULT_BATCH_ROWS", "EXECUTEMANY_CHUNK", "RESULT_COLUMN"]

DEFAULT_BATCH_ROWS = 2000
EXECUTEMANY_CHUNK = 2000
RESULT_COLUMN = "__result__"  # a server method's single-value result (see server/calls.py)
_portal_ids = itertools.count(1)
T = TypeVar("T")

Step = tuple[Request, Msg, Any]  # a request to send: its reply handler, type and body


class StateAttr(Generic[T]):
    """A cursor attribute (``arraysize``, ``description``...) kept in its CursorState."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> T:
        return cast(T, getattr(obj._state, self.name))

    def __set__(self, obj: Any, value: T) -> None:
        setattr(obj._state, self.name, value)


class CursorAttrs:
    """What the two cursor classes share besides I/O: the PEP 249 attributes, read from
    and written to the cursor's ``_state``, and the checks before a request."""

    _state: CursorState
    connection: Any  # Connection or AsyncConnection: has ``closed`` and ``cancel()``
    arraysize: StateAttr[int] = StateAttr()
    description: StateAttr[tuple[tuple[Any, ...], ...] | None] = StateAttr()
    rowcount: StateAttr[int] = StateAttr()
    lastrowid: StateAttr[int | None] = StateAttr()

    def _check(self) -> Any:
        """The connection, if this cursor and it are open.  A connection lost (not closed
        by the program) says so, after the rows that arrived before the loss."""
        self._state.check_open()
        if self.connection.closed:
            lost = self.connection.lost
            if lost is None:
                raise InterfaceError("connection is closed")
            if not self._state.rows:
                raise lost
        return self.connection

    def cancel(self) -> None:
        """Stop the statement running on this cursor's connection (``Connection.cancel``)."""
        self.connection.cancel()


class CursorState:
    """Rows, description and counts of one cursor, and the requests that fill them."""

    def __init__(self, generation: int = 0) -> None:
        self.arraysize = 1
        self.description: tuple[tuple[Any, ...], ...] | None = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.rows: collections.deque[tuple[Any, ...]] = collections.deque()
        self.portal = next(_portal_ids)
        self.generation = generation  # the connection's, when the result was opened
        self.prefetch: ExecRequest | None = None
        self.suspended = False  # a result is open on the server and no FETCH is in flight
        self.closed = False
        self.scalar = False

    @property
    def batch(self) -> int:
        return max(self.arraysize, DEFAULT_BATCH_ROWS)

    def _sink(self, chunk: Sequence[tuple[Any, ...]]) -> None:
        self.rows.extend(chunk)

    def check_open(self) -> None:
        if self.closed:
            raise InterfaceError("cursor is closed")

    def next_batch(self) -> ExecRequest | None:
        """The prefetched batch to wait for when no row is buffered; None when rows are
        buffered or the result has ended.  Raises when there is no result to read."""
        self.check_open()
        if self.rows:
            return None
        if self.description is None:
            raise ProgrammingError("no result set: the last statement returned no rows")
        return self.prefetch

    def counts(self) -> tuple[int, int | None]:
        return self.rowcount, self.lastrowid

    def close(self, counts: tuple[int, int | None]) -> None:
        """Closed; ``rowcount`` and ``lastrowid`` stay readable, as in sqlite3."""
        self.rowcount, self.lastrowid = counts
        self.closed = True

    # -- requests -------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] | None, begin: bool) -> Step:
        if isinstance(params, dict):
            raise ProgrammingError("Casemate uses qmark parameters: pass a sequence, not a dict")
        args = tuple(params) if params is not None else ()
        if not _FLAT.issuperset(map(type, args)):
            _check_sendable(args)
        return ExecRequest(self._sink), Msg.QUERY, Query(self.portal, sql, args, begin, self.batch)

    def call(self, name: str, args: Sequence[Any], kwargs: dict[str, Any], begin: bool) -> Step:
        _check_sendable((args, kwargs))
        return ExecRequest(self._sink), Msg.CALL, Call(self.portal, name, tuple(args), kwargs,
                                                       begin, self.batch)

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]], begin: bool
                    ) -> Iterator[tuple[SimpleRequest, Msg, Any]]:
        """The EXECUTE_MANY requests, one chunk of parameters each; count with :meth:`add`."""
        self.lastrowid = None  # not the previous statement's (PEP 249 leaves it undefined)
        self.rowcount = 0
        it = iter(seq)
        while chunk := [tuple(p) for p in itertools.islice(it, EXECUTEMANY_CHUNK)]:
            if not _FLAT.issuperset(map(type, itertools.chain.from_iterable(chunk))):
                _check_sendable(chunk)
            yield SimpleRequest(), Msg.EXECUTE_MANY, ExecuteMany(sql, chunk, begin)

    def add(self, req: SimpleRequest) -> None:
        self.rowcount += max(req.rowcount, 0)

    def executed(self, req: ExecRequest, call: bool = False) -> Step | None:
        """A QUERY or CALL answered: keep what it said; returns the FETCH to send, if any."""
        step = self.after(req)
        desc = req.description
        if call or desc is not None:
            self.scalar = desc is not None and len(desc) == 1 and desc[0][0] == RESULT_COLUMN
            self.description = desc or ()
        else:
            self.rowcount, self.lastrowid = req.rowcount, req.lastrowid
        return step

    def after(self, req: ExecRequest) -> Step | None:
        """A batch arrived: the FETCH of the next one (prefetched while this one is read)."""
        self.prefetch = None
        if req.suspended:
            self.suspended = True  # until the caller has sent the FETCH
            self.prefetch = ExecRequest(self._sink)
            return self.prefetch, Msg.FETCH, Fetch(self.portal, self.batch)
        if req.description is None:
            self.rowcount = req.rowcount
        return None

    def send_failed(self, e: Error) -> None:
        """Sending the FETCH of the next batch failed (the connection is lost).  That FETCH
        carries ``e`` to every later wait for the next batch.  The rows already here are
        read first when nothing else was lost; when a transaction (or a request that may
        have committed) went with the connection, ``e`` is raised now and the rows are
        dropped: the program must learn it before it commits anything."""
        p = self.prefetch
        if p is not None and not p.done:
            p.error, p.done = e, True
        self.suspended = False  # the portal died with the connection: nothing to close
        if not self.rows or getattr(e, "transaction_lost", True):
            self.rows.clear()
            raise e

    @staticmethod
    def taken_before(out: list[tuple[Any, ...]], e: OperationalError) -> list[tuple[Any, ...]]:
        """fetchmany() met ``e`` after taking ``out``: those rows are returned and the next
        call raises ``e`` (the FETCH keeps it), unless a transaction went with the
        connection.  (fetchall() raises at once: a part must not pass for the whole.)"""
        if not out or e.transaction_lost:
            raise e
        return out

    def close_portal(self, generation: int) -> Step | None:
        """The CLOSE_PORTAL for a result still open on this connection, if there is one
        (call after the prefetch, if any, is answered; else pass another generation)."""
        p = self.prefetch
        if generation == self.generation and (self.suspended or (p is not None and p.suspended)):
            return SimpleRequest(), Msg.CLOSE_PORTAL, ClosePortal(self.portal)
        return None

    def forget(self, generation: int) -> None:
        """Forget the result (after :meth:`close_portal` was sent)."""
        self.generation = generation
        self.prefetch = None
        self.suspended = False
        self.rows.clear()
        self.description = None
        self.rowcount = -1

    def take(self, out: list[tuple[Any, ...]], n: int | None) -> None:
        """Move up to ``n`` (all if None) buffered rows to ``out``."""
        rows = self.rows
        k = len(rows) if n is None else n - len(out)
        if k >= len(rows):  # the whole batch at once
            out.extend(rows)
            rows.clear()
        else:
            out.extend([rows.popleft() for _ in range(k)])


# Parameter types that hold no dict (most rows): no need to look inside them.
_FLAT = frozenset({int, str, float, bytes, bool, type(None), bytearray, memoryview,
                   decimal.Decimal, dt.date, dt.time, dt.datetime, uuid.UUID, Json})


# Deepest nesting of a parameter: the server decodes msgpack up to 1,024 levels, the
# request's own arrays included, and would end the session over a deeper one.
MAX_NESTING = 1000


def _check_sendable(value: Any) -> None:
    """Refuse, before sending, a dict whose keys are not text or bytes: the server takes no
    other map keys from a client (their hashes can be chosen to collide: codec.unpack_wrapped),
    and would end the session, and with it the transaction, over such a request; and a
    value nested deeper than :data:`MAX_NESTING` (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            for k in v:
                if not isinstance(k, str | bytes):
                    raise ProgrammingError(
                        f"cannot send a dict with the {type(k).__name__} key {k!r:.40}: "
                        "keys of dicts sent to the server must be str (or bytes)")
            items: Any = v.values()
        elif isinstance(v, list | tuple):
            items = v
        else:
            continue
        if depth >= MAX_NESTING:
            raise ProgrammingError(f"cannot send a parameter nested deeper than {MAX_NESTING} "
                                   "levels (lists, tuples and dicts); flatten it, or send it "
                                   "as text")
        stack.extend((x, depth + 1) for x in items)
