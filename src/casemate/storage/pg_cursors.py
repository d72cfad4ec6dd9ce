"""A session's results from PostgreSQL: rows read one by one and counted against the
per-statement limit and the server-wide budget of unread rows, and the cursors that hand
them to the session (a statement's rows at once, or a server-side cursor ``FETCH`` by
``FETCH``).

Part of the PostgreSQL backend (:mod:`casemate.storage.postgresql`).
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import uuid
import weakref
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import generators as _generators
from psycopg.adapt import Transformer
from psycopg.pq import ExecStatus

from .base import StorageCursor, StorageError
from .pg_errors import log
from .pg_pool import _Phys
from .pg_values import _TYPE_OIDS

if TYPE_CHECKING:
    from .pg_conn import _Connection

FIRST_FETCH = 64           # rows fetched with the DECLARE, in the same round trip
SWOLLEN_ROW = 4 * 1024 * 1024  # a connection that read a larger row is closed, not pooled
_cursor_ids = itertools.count(1)


class _Result:
    """The last result of a round trip, its rows read one by one (libpq's single-row mode)
    and counted: a result larger than ``limit`` bytes is cancelled as it comes, so no
    statement (``FETCH ALL``, ``EXECUTE``, a ``RETURNING``, a first ``FETCH`` of huge
    values) makes the server hold more than the limit and one row."""

    def __init__(self, p: _Phys, query: str, limit: int, budget: _Budget) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.held = 0     # bytes of those rows
        self.description: list[tuple[str, str | None]] | None = None
        self.rowcount = -1
        self.statusmessage: str | None = None
        self.widest = 0   # bytes of the largest row
        self._limit = limit
        self._budget = budget
        self._phys = p
        conn = p.conn
        pg = conn.pgconn
        self._enc = conn.info.encoding
        with conn.lock:
            pg.send_query(query.encode(self._enc))
            pg.set_single_row_mode()
            conn.wait(_generators.send(pg))
            self._read(conn)

    def _read(self, conn: psycopg.Connection[Any]) -> None:
        tx = Transformer(conn)
        fresh, held, error = True, 0, None
        pg = conn.pgconn
        while (res := (conn.wait(_generators.fetch(pg)) if pg.is_busy() else pg.get_result())
               ) is not None:  # psycopg's waiting only when libpq must wait
            status = res.status
            if status == ExecStatus.SINGLE_TUPLE:
                if fresh:  # the first row of a new result
                    self.rows, held = [], 0
                tx.set_pgresult(res, set_loaders=fresh)
                row = tx.load_rows(0, 1, tuple)[0]
                size = _row_bytes(res, row)
                if size > self.widest:
                    self.widest = size
                    self._phys.swollen |= size > SWOLLEN_ROW
                held += size
                if held > self._limit or held + self._budget.held > self._budget.limit:
                    _drain(conn)
                    raise (_too_large(self._limit) if held > self._limit
                           else self._budget.full())
                self.rows.append(row)
                self.held = held
                fresh = False
            elif status in (ExecStatus.TUPLES_OK, ExecStatus.COMMAND_OK):
                if fresh:
                    self.rows, self.held = [], 0
                fresh = True
                self.description = ([((res.fname(i) or b"").decode(self._enc),
                                      _TYPE_OIDS.get(res.ftype(i)))
                                     for i in range(res.nfields)]
                                    if status == ExecStatus.TUPLES_OK else None)
                self.rowcount = -1 if res.command_tuples is None else res.command_tuples
                status_text = res.command_status
                self.statusmessage = status_text.decode(self._enc) if status_text else None
            elif error is None and status == ExecStatus.FATAL_ERROR:
                error = psycopg.errors.error_from_result(res, encoding=self._enc)
        if error is not None:
            raise error

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows, self.rows = self.rows, []
        return rows

    def hold(self) -> _Held:
        """The rows, to wait for the client: counted in the server-wide budget."""
        return _Held(self._budget, self.fetchall(), self.held)


class _Budget:
    """Bytes of rows read from PostgreSQL that wait for their clients, server-wide: sessions
    that never read their results cannot pile up more than ``limit`` together."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.held += n

    def full(self) -> StorageError:
        return StorageError(
            f"out of memory for results: sessions' unread results hold {self.held} bytes", "53200",
            "read or close earlier results; the server holds at most storage.pool_size times "
            "limits.max_statement_result_bytes of them")


class _Held:
    """Rows waiting for the client; their bytes leave the budget once all are taken, the
    cursor is closed, or it is dropped."""

    def __init__(self, budget: _Budget, rows: list[tuple[Any, ...]], nbytes: int) -> None:
        self.rows = rows
        budget.add(nbytes)
        self.release = weakref.finalize(self, budget.add, -nbytes)

    def take(self, n: int) -> list[tuple[Any, ...]]:
        out, self.rows = self.rows[:n], self.rows[n:]
        if not self.rows:
            self.release()
        return out


def _row_bytes(res: Any, row: tuple[Any, ...]) -> int:
    """About what a row holds in Python: text and bytes by length, other values (JSON,
    arrays...) by the length of their text in the result, plus each object's overhead."""
    size = 64 + 32 * len(row)
    for i, v in enumerate(row):
        t = type(v)
        if t is str or t is bytes:
            size += len(v)
        elif t not in _SMALL_TYPES:
            size += len(res.get_value(0, i) or b"")
    return size


_SMALL_TYPES = frozenset({type(None), bool, int, float, Decimal, dt.date, dt.datetime,
                          dt.time, uuid.UUID})


def _drain(conn: psycopg.Connection[Any]) -> None:
    """Cancel the statement and read (and drop) what is still on its way."""
    try:
        conn.cancel_safe(timeout=5)
    except (psycopg.Error, OSError):
        pass
    while conn.wait(_generators.fetch(conn.pgconn)) is not None:
        pass


def _too_large(limit: int) -> StorageError:
    return StorageError(
        f"result too large: its rows exceed {limit} bytes in one fetch", "54000",
        "select fewer or smaller rows (LIMIT, a narrower column list), or an administrator "
        "raises limits.max_statement_result_bytes")


# -- cursors --------------------------------------------------------------------


class _PlainCursor(StorageCursor):
    """A statement without a server-side cursor: its rows (RETURNING...) came at once."""

    def __init__(self, result: _Result) -> None:
        self.description = result.description
        self.rowcount = result.rowcount
        self.lastrowid = None
        self._rows = result.hold()

    def fetch(self, n: int) -> list[tuple[Any, ...]]:
        return self._rows.take(n)

    def close(self) -> None:
        self._rows.rows = []
        self._rows.release()


class _ServerCursor(StorageCursor):
    """A ``DECLARE ... WITH HOLD`` cursor: rows come ``FETCH`` by ``FETCH``."""

    short_fetches = True

    def __init__(self, owner: _Cursors, phys: _Phys, name: str, depth: int,
                 first: _Result) -> None:
        self._owner = owner
        self.phys = phys
        self.name = name
        self.depth = depth          # savepoints open when it was declared (-1: outside a txn)
        d = first.description
        self.description = d or []
        self.rowcount = -1          # like SQLite: unknown for a query
        self.lastrowid = None
        self.widest = first.widest  # bytes of the largest row seen
        self._buf = first.hold()
        self.exhausted = len(self._buf.rows) < FIRST_FETCH
        self.closed = False
        self.gone = False           # PostgreSQL already dropped it (rollback)
        self.uncertain = False      # a ROLLBACK TO in SQL may have dropped it

    def fetch(self, n: int) -> list[tuple[Any, ...]]:
        out = self._buf.take(n)  # the first FETCH's rows
        if len(out) == n or self.exhausted or self.closed:
            return out
        # A FETCH sized by bytes: no more rows of the widest size seen than fit in a quarter
        # of the limit, so that large rows are not cancelled for being too many at once
        # (then fewer rows than asked come back: short_fetches).
        k = min(n - len(out), max(1, self._owner.max_result // 4 // max(1, self.widest)))
        rows, widest = self._owner.fetch(self, k)
        self.widest = max(self.widest, widest)
        if len(rows) < k:
            self.exhausted = True
            self._owner.done(self)
        return out + rows

    def close(self) -> None:
        self._buf.rows = []
        self._buf.release()
        if not self.closed:
            self.closed = True
            self._owner.close(self)


class _Cursors:
    """A session's open server-side cursors: declared, fetched from and closed on its
    connection, which stays out of the pool while one is open."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.open: dict[str, _ServerCursor] = {}

    @property
    def max_result(self) -> int:
        return self._conn._b.max_result

    def declare(self, p: _Phys, bound: str) -> _ServerCursor:
        conn = self._conn
        name = f"casemate_{next(_cursor_ids)}"
        in_txn = conn.in_transaction
        first = conn._send([f'DECLARE "{name}" NO SCROLL CURSOR WITH HOLD FOR {bound}',
                            f'FETCH FORWARD {FIRST_FETCH} FROM "{name}"'], statement=True)
        cursor = _ServerCursor(self, p, name, len(conn._savepoints) if in_txn else -1, first)
        if cursor.exhausted:
            cursor.closed = True
            p.close_all = True  # closed later with others, in a round trip made anyway
        else:
            self.open[name] = cursor
        return cursor

    def fetch(self, cursor: _ServerCursor, n: int) -> tuple[list[tuple[Any, ...]], int]:
        if not self.exists(cursor):
            raise StorageError(f"cursor {cursor.name} no longer exists (its transaction or "
                               "savepoint was rolled back)", "34000")
        try:
            res = self._conn._send([f'FETCH FORWARD {int(n)} FROM "{cursor.name}"'],
                                   prefix=False, statement=True)
        except StorageError as e:
            if e.code == "54000":  # cancelled mid-FETCH: PostgreSQL will not run it again
                cursor.gone = True
            raise
        return res.fetchall(), res.widest

    def done(self, cursor: _ServerCursor) -> None:
        """Exhausted: it stays declared until a CLOSE ALL rides along with a later statement."""
        conn = self._conn
        if self.open.pop(cursor.name, None) is not None and conn._phys is not None:
            conn._phys.close_all = True
        conn._give_back()

    def close(self, cursor: _ServerCursor) -> None:
        conn = self._conn
        if self.open.pop(cursor.name, None) is None:
            return
        if not cursor.exhausted and conn._phys is not None and self.exists(cursor):
            try:
                conn._send([f'CLOSE "{cursor.name}"'], prefix=False)
            except StorageError as e:
                if conn.in_transaction:
                    raise
                log.debug("closing cursor %s: %s", cursor.name, e.message)
        elif conn._phys is not None:
            conn._phys.close_all = True
        conn._give_back()

    def exists(self, cursor: _ServerCursor) -> bool:
        """Whether PostgreSQL still has it: a statement on a dropped cursor would abort the
        transaction."""
        if cursor.uncertain:
            found = self._conn._send([f"SELECT 1 FROM pg_cursors WHERE name = '{cursor.name}'"],
                                     prefix=False).fetchall()
            cursor.uncertain, cursor.gone = False, not found
        return not cursor.gone

    def close_all(self) -> None:
        for c in list(self.open.values()):
            c.closed = True
        self.open.clear()
        if self._conn._phys is not None:
            self._conn._phys.close_all = True
