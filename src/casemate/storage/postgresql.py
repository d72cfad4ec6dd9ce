"""The PostgreSQL storage backend: several Casemate servers over one PostgreSQL database.

Data, users, groups and grants live in PostgreSQL: users, groups and grant
rows in the ``casemate`` schema, which no Casemate session can reach, so
every Casemate server over the same database agrees on them.

Grants are enforced by PostgreSQL itself.  Each Casemate group has its own
PostgreSQL *login* role (``casemate_<db>_admin``, ``..._readwrite``,
``..._readonly``, ``..._g_<name>``) with a generated password kept in the
``casemate`` schema, and a session's statements run on a connection opened
*as its group's role*.  (A ``SET ROLE`` on a shared login role would not be
strict: any statement could undo it with ``RESET ROLE`` or
``set_config('role', ...)``.)  Tables belong to the admin role; default
privileges give readwrite and readonly their rights; a custom group's grants
are ``GRANT ... ON TABLE`` to its role.  The role of the DSN (the *service*
role) reads users and grants and manages the group roles; it never runs a
client's SQL.

Each Casemate transaction is one PostgreSQL transaction on one pooled
connection.  Query results come through server-side cursors (``DECLARE ...
WITH HOLD``), so a large result never sits whole in the Casemate server, and
every result is read row by row and counted: one round trip brings in at most
``limits.max_statement_result_bytes`` (``FETCH ALL`` and ``EXECUTE`` in SQL,
``RETURNING``, huge values), else it is cancelled.
Clients' ``?`` parameters are found by PostgreSQL's own lexer and every
statement is parsed before it is sent (:mod:`casemate.storage.pg_sql`): one
statement per execute, and a guard refuses what would change the roles
Casemate connects with or reach other sessions.  A connection is reset
(``DISCARD ALL``) every time it goes back to the pool, since what a
statement leaves behind cannot be told from its text.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import itertools
import logging
import os
import re
import secrets
import select
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import ClientCursor
from psycopg import generators as _generators
from psycopg import sql as pgsql
from psycopg.adapt import Transformer
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import ExecStatus, TransactionStatus
from psycopg.types.json import Jsonb, JsonbDumper, JsonbLoader, JsonLoader
from psycopg.types.numeric import DecimalDumper, FloatDumper
from psycopg.types.string import TextLoader

from ..protocol.codec import Json
from ..settings import LimitsSettings, StorageSettings
from .access import METHOD_PREFIX, Policy
from .base import BUILTIN_GROUPS, Backend, StorageConnection, StorageCursor, StorageError, UserRecord
from .pg_sql import SQLTextError, Statement, analyze, refusal, translate_qmarks

__all__ = ["PostgreSQLBackend", "SCHEMA_VERSION", "translate_qmarks"]

log = logging.getLogger("casemate.storage.postgresql")
T = TypeVar("T")

SCHEMA_VERSION = 1
FIRST_FETCH = 64           # rows fetched with the DECLARE, in the same round trip
DEFAULT_MAX_RESULT = 64 * 1024 * 1024  # limits.max_statement_result_bytes
SWOLLEN_ROW = 4 * 1024 * 1024  # a connection that read a larger row is closed, not pooled
GRANTS_CACHE_SECONDS = 1.0  # how stale another server's method grants may be seen
IDLE_LIFETIME = 300.0      # idle pooled connections older than this are closed
CANCEL_RETRY = 0.1         # an interrupted statement still running is cancelled again after
RESET_WAIT = 10.0          # a pooled connection whose DISCARD ALL takes longer is closed
RIGHTS_CHANNEL = "casemate_rights"  # NOTIFY channel: users, groups or grants changed
LISTEN_PING = 30.0         # the LISTEN connection runs SELECT 1 this often (seconds)
# libpq options of the LISTEN connection (unless the DSN sets them): a dead peer is noticed
# within about a minute (keepalives; tcp_user_timeout, in ms, for unacknowledged sends)
LISTEN_TCP = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
              "keepalives_count": 3, "tcp_user_timeout": 60000}
_INIT_LOCK = 0x6361736D    # pg_advisory_xact_lock key serializing `casemate init`s
INIT_LOCK_SECONDS = 30.0   # longest wait for that lock (another init, or a session holding it)
_cursor_ids = itertools.count(1)
_IDLE, _INTRANS, _INERROR = (TransactionStatus.IDLE, TransactionStatus.INTRANS,
                             TransactionStatus.INERROR)

# Values psycopg would load as Python types the Casemate wire format has no
# encoding for: they arrive as PostgreSQL's text form instead.
_TEXT_TYPES = ("interval", "inet", "cidr", "macaddr", "macaddr8", "int4range",
               "int8range", "numrange", "daterange", "tsrange", "tstzrange", "int4multirange",
               "int8multirange", "nummultirange", "datemultirange", "tsmultirange",
               "tstzmultirange")


# -- errors -------------------------------------------------------------------
def _error(e: psycopg.Error) -> StorageError:
    """psycopg's error -> StorageError carrying PostgreSQL's own SQLSTATE."""
    code = e.sqlstate
    diag = e.diag
    msg = (diag.message_primary or str(e)).strip()
    if diag.message_detail:
        msg += f" ({diag.message_detail.strip()})"
    hint = diag.message_hint
    if code is None:  # raised by psycopg itself, not by the server
        if isinstance(e, psycopg.OperationalError | psycopg.InterfaceError):
            code = "08006"
            log.warning("lost a session's connection to PostgreSQL: %s", msg)
            msg = "storage unavailable: lost the connection to the database"
            hint = _UNAVAILABLE_HINT
        elif isinstance(e, psycopg.DataError):
            code = "22000"
        elif isinstance(e, psycopg.ProgrammingError | psycopg.NotSupportedError):
            code = "42000"
        else:
            code = "58000"
    elif code == "42501":
        hint = hint or "an administrator can grant it: casemate group grant TARGET GROUP TABLE RIGHT"
    elif code == "55P03":
        hint = hint or ("another session holds a lock for longer than "
                        "storage.busy_timeout_seconds; roll back and retry")
    elif code == "25P02":
        hint = hint or "roll back: in PostgreSQL a failed statement ends the transaction"
    return StorageError(msg, code, hint)


_UNAVAILABLE_HINT = "try again later; the server's log tells its administrator why"


def _safe_dsn(dsn: str) -> str:
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(unparsable dsn)"
    parts.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in parts.items())


def _connect_error(e: psycopg.Error, dsn: str, who: str, password_hint: str) -> StorageError:
    text = " ".join(str(e).split())
    low = text.lower()
    if "password authentication failed" in low or "no password supplied" in low:
        return StorageError(f"PostgreSQL refused the password of role {who}: {text}", "28P01",
                            password_hint)
    if "does not exist" in low and "database" in low:
        return StorageError(f"cannot connect to PostgreSQL ({_safe_dsn(dsn)}): {text}", "3D000",
                            "create the database first (createdb), or fix dbname in "
                            "storage.dsn")
    if "role" in low and "does not exist" in low:
        return StorageError(f"cannot connect to PostgreSQL ({_safe_dsn(dsn)}): {text}", "28000",
                            "fix user in storage.dsn")
    if "no pg_hba.conf entry" in low:
        return StorageError(f"PostgreSQL refuses connections of role {who}: {text}", "28000",
                            "allow the role in PostgreSQL's pg_hba.conf (Casemate's group roles "
                            "log in too: see docs/postgresql.md)")
    return StorageError(f"cannot connect to PostgreSQL ({_safe_dsn(dsn)}): {text}", "08001",
                        "check that PostgreSQL runs and storage.dsn (host, port, sslmode)")


# -- the connection pool --------------------------------------------------------
class _Phys:
    """One PostgreSQL connection, opened as one role."""

    __slots__ = ("conn", "mog", "key", "resetting", "close_all", "idle_since", "swollen")

    def __init__(self, conn: psycopg.Connection[Any], key: str) -> None:
        self.conn = conn
        self.mog = ClientCursor(conn)  # binds parameters client-side (libpq's escaping)
        self.key = key            # the Casemate group ("" for the service role)
        self.resetting = False    # a DISCARD ALL was sent; its result is not read yet
        self.close_all = False    # exhausted cursors wait for a CLOSE ALL
        self.idle_since = time.monotonic()
        self.swollen = False      # libpq grew its buffer for a large row: close, do not pool

    @property
    def usable(self) -> bool:
        return not self.conn.closed and not self.conn.broken

    def alive(self) -> bool:
        """Usable, and no unread data while idle: a restarted or stopped PostgreSQL sends a
        goodbye (and closes), which would otherwise fail the next statement."""
        if not self.usable:
            return False
        try:
            readable, _, _ = select.select([self.conn.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def start_reset(self) -> bool:
        """Send ``DISCARD ALL`` without waiting: settings, temporary tables, cursors, prepared
        statements, LISTENs and advisory locks go at once (a lock must not outlive its
        session), and the result is read when the connection is next taken."""
        try:
            self.conn.pgconn.send_query(b"DISCARD ALL")
        except psycopg.Error:
            return False
        self.resetting = True
        self.close_all = False
        return True

    def ready(self) -> bool:
        """The reset went through and the connection is alive (else: discard it)."""
        if self.resetting:
            self.resetting = False
            if not self._reset_done():
                return False
        return self.alive()

    def _reset_done(self) -> bool:
        pg = self.conn.pgconn
        try:
            deadline = time.monotonic() + RESET_WAIT
            pg.consume_input()
            while pg.is_busy():  # wait in select (no GIL held), not inside libpq
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([pg.socket], [], [], left)[0]:
                    return False
                pg.consume_input()
            ok = True
            while (res := pg.get_result()) is not None:
                ok = ok and res.status == ExecStatus.COMMAND_OK
        except (psycopg.Error, OSError):
            return False
        return ok and pg.transaction_status == _IDLE


class _Pool:
    """Connections for several roles under one limit, reused per role.

    ``psycopg_pool`` keeps one pool per connection string; here each Casemate
    group logs in as its own role, and ``storage.pool_size`` bounds them all
    together: an idle connection of one role is closed to open one for
    another when the limit is reached.
    """

    def __init__(self, limit: int, timeout: float, connect: Callable[[str], psycopg.Connection[Any]],
                 what: str, reset: bool = True) -> None:
        self.limit = limit
        self._reset = reset  # sessions' connections: reset before another session gets one
        self.timeout = timeout
        self._connect = connect
        self._what = what
        self._idle: collections.OrderedDict[int, _Phys] = collections.OrderedDict()
        self._open = 0
        self._cond = threading.Condition()
        self._closed = False

    def get(self, key: str) -> _Phys:
        while True:
            p = self._get(key)
            if p.ready():
                return p
            self.discard(p)

    def _get(self, key: str) -> _Phys:
        deadline = time.monotonic() + self.timeout
        victim: _Phys | None = None
        with self._cond:
            while True:
                if self._closed:
                    raise StorageError("the storage is closed", "08003")
                found = self._take_idle(key)
                if found is not None:
                    return found
                if self._open < self.limit:
                    self._open += 1
                    break
                if self._idle:  # replace another role's idle connection
                    _, victim = self._idle.popitem(last=False)
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StorageError(
                        f"all {self.limit} PostgreSQL connections of this Casemate server "
                        f"are in use ({self._what}); waited {self.timeout:g} s", "53300",
                        "raise storage.pool_size (and PostgreSQL's max_connections), or end "
                        "long transactions sooner")
                self._cond.wait(left)
        if victim is not None:
            victim.conn.close()
        try:
            return _Phys(self._connect(key), key)
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def _take_idle(self, key: str) -> _Phys | None:
        now = time.monotonic()
        for ident, p in list(self._idle.items()):
            if now - p.idle_since > IDLE_LIFETIME or not p.usable:
                del self._idle[ident]
                self._open -= 1
                p.conn.close()
        for ident, p in reversed(self._idle.items()):  # most recently used first
            if p.key == key:
                del self._idle[ident]
                return p
        return None

    def put(self, p: _Phys) -> None:
        ok = p.usable and p.conn.info.transaction_status == _IDLE and not p.swollen
        if ok and self._reset:  # whatever the statements did: no classifier decides this
            ok = p.start_reset()
        if not ok:
            self.discard(p)
            return
        p.idle_since = time.monotonic()
        with self._cond:
            if self._closed:
                self._open -= 1
                p.conn.close()
                return
            self._idle[id(p)] = p
            self._cond.notify()

    def discard(self, p: _Phys) -> None:
        try:
            p.conn.close()
        finally:
            with self._cond:
                self._open -= 1
                self._cond.notify()

    def drop_key(self, key: str) -> None:
        with self._cond:
            for ident, p in list(self._idle.items()):
                if p.key == key:
                    del self._idle[ident]
                    self._open -= 1
                    p.conn.close()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = list(self._idle.values()), collections.OrderedDict()
            self._open -= len(idle)
            self._cond.notify_all()
        for p in idle:
            p.conn.close()


# -- results ----------------------------------------------------------------------
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
# PostgreSQL type OIDs (pg_type) -> description type codes (docs/types.md); libpq
# reports them even for an empty result.
_TYPE_OIDS = {16: "bool", 17: "bytes", 18: "text", 19: "text", 20: "integer", 21: "integer",
              23: "integer", 25: "text", 26: "integer", 114: "json", 700: "float",
              701: "float", 1042: "text", 1043: "text", 1082: "date", 1083: "time",
              1114: "datetime", 1184: "datetime", 1266: "time", 1700: "decimal",
              2950: "uuid", 3802: "json"}


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

    def __init__(self, owner: _Connection, phys: _Phys, name: str, depth: int,
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
        k = min(n - len(out), max(1, self._owner._b.max_result // 4 // max(1, self.widest)))
        rows, widest = self._owner._fetch(self, k)
        self.widest = max(self.widest, widest)
        if len(rows) < k:
            self.exhausted = True
            self._owner._cursor_done(self)
        return out + rows

    def close(self) -> None:
        self._buf.rows = []
        self._buf.release()
        if not self.closed:
            self.closed = True
            self._owner._cursor_closed(self)


# -- one session's connection ---------------------------------------------------------
class _Connection(StorageConnection):
    """A session's handle: a PostgreSQL connection of its group's role, taken from the
    pool for a transaction or while cursors are open, and given back in between.

    Statements go out with client-side parameter binding over the simple query
    protocol, so what is owed to the connection (a deferred ``BEGIN``, a
    ``CLOSE ALL``) and a cursor's ``DECLARE`` and first ``FETCH`` travel in the
    same round trip as the statement.
    """

    def __init__(self, backend: PostgreSQLBackend) -> None:
        self._b = backend
        self.policy = Policy("readonly")
        self._phys: _Phys | None = None
        self._begin_pending = False
        self._lost: StorageError | None = None   # the connection died inside a transaction
        self._cursors: dict[str, _ServerCursor] = {}
        self._savepoints: list[str] = []
        self._cancelling = threading.Lock()
        # interrupt() picks the connection to cancel and marks the cancel under this lock, and
        # _give_back() detaches the connection under it: a cancel never targets a connection
        # already on its way to the pool (and another session's statement).
        self._handoff = threading.Lock()
        self._stopped = False  # interrupt() until the next arm(): nothing more goes out
        self._round_trip: _Phys | None = None  # the connection a statement is on its way on

    # -- state --
    @property
    def in_transaction(self) -> bool:
        if self._begin_pending or self._lost is not None:
            return True
        p = self._phys
        return p is not None and p.conn.info.transaction_status in (_INTRANS, _INERROR)

    @property
    def holds_shared(self) -> bool:
        return self.in_transaction or self._phys is not None  # a pooled connection

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        p = self._phys
        if p is not None and p.key != policy.group and not self.in_transaction:
            self._close_cursors()
            self._give_back(force=True)

    def _settle(self) -> None:
        """Wait for a cancel request still on its way (interrupt), so that it never reaches
        a later statement of this session or, once the connection is back in the pool,
        of another."""
        if self._cancelling.locked():
            with self._cancelling:
                pass

    def _take(self) -> _Phys:
        self._settle()
        if self._lost is not None:
            raise self._lost
        if self._phys is None:
            self._phys = self._b._pool.get(self.policy.group)
        return self._phys

    def _give_back(self, force: bool = False) -> None:
        with self._handoff:
            p = self._phys
            if p is None or (not force and (self._cursors or self.in_transaction)):
                return
            self._phys = None
        self._settle()
        self._savepoints.clear()
        self._b._pool.put(p)

    def _broken(self, p: _Phys) -> None:
        """The connection is unusable: drop it; an open transaction is lost."""
        was_txn = self._begin_pending or p.conn.info.transaction_status != _IDLE
        self._phys = None
        for c in self._cursors.values():
            c.gone = c.closed = True
        self._cursors.clear()
        self._b._pool.discard(p)
        self._begin_pending = False
        if was_txn:
            self._lost = StorageError(
                "the connection to PostgreSQL was lost; the transaction was rolled back",
                "08006", "roll back, then run the transaction again")

    def _prefix(self, p: _Phys) -> list[str]:
        """Statements owed to the connection, sent ahead of the next one (same round trip)."""
        pre = []
        if p.close_all and not self._cursors:
            pre.append("CLOSE ALL")
            p.close_all = False
        if self._begin_pending:
            pre.append("BEGIN")
            self._begin_pending = False
        return pre

    def arm(self, inline_seconds: float = 0.0) -> None:
        with self._handoff:
            self._stopped = False

    def _guard(self, p: _Phys, work: Callable[[], T], statement: bool = False) -> T:
        """Run ``work`` (a round trip on ``p``): PostgreSQL's errors as StorageError; a
        ``statement`` interrupted before it went out does not start."""
        with self._handoff:
            if statement and self._stopped:
                self._stopped = False  # this statement was the one to stop
                raise StorageError("canceling statement due to user request", "57014")
            self._round_trip = p
        try:
            return work()
        except psycopg.Error as e:
            err = _error(e)
            if not p.usable or err.code.startswith("08"):
                self._broken(p)
            raise err from e
        except BaseException:
            if not p.usable or p.conn.info.transaction_status == TransactionStatus.ACTIVE:
                self._broken(p)  # interrupted mid round trip (a method over its time limit)
            raise
        finally:
            with self._handoff:
                self._round_trip = None
                if statement:
                    self._stopped = False

    def _send(self, statements: list[str], prefix: bool = True, statement: bool = False
              ) -> _Result:
        """Run ``statements`` in one round trip (the simple query protocol); return the last
        result."""
        p = self._take()
        pre = self._prefix(p) if prefix else []
        query = "\n;".join(pre + statements)  # "\n": a statement may end in a -- comment
        return self._guard(p, lambda: _Result(p, query, self._b.max_result, self._b.budget), statement)

    def _bind(self, p: _Phys, st: Statement, params: Sequence[Any]) -> str:
        _check_lexing(p)
        return self._guard(p, lambda: p.mog.mogrify(st.text, _params(params)))

    def _statement(self, sql: str) -> Statement:
        """The statement read by PostgreSQL's parser, or StorageError if the session may not
        run it (docs/postgresql.md, "What sessions may run")."""
        try:
            st = analyze(sql)
        except SQLTextError as e:
            raise StorageError(e.message, e.code) from None
        why = refusal(st, self.policy.is_admin)
        if why is not None:
            raise StorageError(why, "42501", _REFUSAL_HINT)
        return st

    # -- transactions --
    def begin(self) -> None:
        if not self.in_transaction:
            self._begin_pending = True
            self.note_transaction()

    def commit(self) -> None:
        self._end("COMMIT")

    def rollback(self) -> None:
        self._end("ROLLBACK")

    def _end(self, what: str) -> None:
        try:
            self._finish(what)
        except Exception:
            self._give_back()  # a failed COMMIT (a deferred constraint) ended the transaction
            raise
        finally:
            self.note_transaction()

    def _finish(self, what: str) -> None:
        if self._lost is not None:
            err, self._lost = self._lost, None
            if what == "COMMIT":
                raise err
            return
        if self._begin_pending:  # BEGIN goes out with the first statement: none was sent
            self._begin_pending = False
            self._give_back()
            return
        p = self._phys
        if p is None or p.conn.info.transaction_status == _IDLE:
            return
        cur = self._send([what])
        self._savepoints.clear()
        if what == "ROLLBACK":
            for c in list(self._cursors.values()):
                if c.depth >= 0:  # declared in the transaction: PostgreSQL dropped it
                    c.gone = True
                    self._cursors.pop(c.name, None)
        self._give_back()
        if what == "COMMIT" and cur.statusmessage == "ROLLBACK":
            raise StorageError("the transaction was rolled back, not committed: a statement "
                               "in it had failed", "25P02",
                               "in PostgreSQL a failed statement ends the transaction; roll "
                               "back after an error and run the transaction again")

    def savepoint(self, name: str) -> None:
        self.begin()
        self._send([f"SAVEPOINT {_ident(name)}"])
        self._savepoints.append(name)

    def release(self, name: str, undo: bool) -> None:
        ident = _ident(name)
        self._send(([f"ROLLBACK TO SAVEPOINT {ident}"] if undo else [])
                   + [f"RELEASE SAVEPOINT {ident}"], prefix=False)
        depth = self._savepoints.index(name) if name in self._savepoints else len(self._savepoints)
        del self._savepoints[depth:]
        if undo:  # cursors opened since the savepoint are gone with it
            for c in list(self._cursors.values()):
                if c.depth > depth:
                    c.gone = True
                    self._cursors.pop(c.name, None)

    # -- statements --
    def execute(self, sql: str, params: Sequence[Any]) -> StorageCursor:
        try:
            return self._execute(sql, params)
        except Exception:
            self._give_back()  # outside a transaction a failed statement keeps no connection
            raise

    def _execute(self, sql: str, params: Sequence[Any]) -> StorageCursor:
        kind = self._statement(sql)
        p = self._take()
        bound = self._bind(p, kind, params)
        if kind.cursor:
            cursor = self._declare(p, bound)
            self.note_transaction(sql)
            self._give_back()
            return cursor
        if kind.no_transaction_block:  # VACUUM & co. must be alone in their query
            owed = self._prefix(p)
            if owed:
                self._send(owed, prefix=False)
        result = _PlainCursor(self._send([bound], statement=True))
        self.note_transaction(sql, result.rowcount > 0)
        if p.conn.info.transaction_status == _IDLE:  # a COMMIT or ROLLBACK sent as SQL
            self._savepoints.clear()
        if kind.undoes_savepoint:  # ROLLBACK (TO) or COMMIT in SQL: some cursors may be gone
            for c in self._cursors.values():
                if c.depth >= 0:
                    c.uncertain = True
        self._give_back()
        return result

    def _declare(self, p: _Phys, bound: str) -> _ServerCursor:
        name = f"casemate_{next(_cursor_ids)}"
        in_txn = self.in_transaction
        first = self._send([f'DECLARE "{name}" NO SCROLL CURSOR WITH HOLD FOR {bound}',
                            f'FETCH FORWARD {FIRST_FETCH} FROM "{name}"'], statement=True)
        cursor = _ServerCursor(self, p, name, len(self._savepoints) if in_txn else -1, first)
        if cursor.exhausted:
            cursor.closed = True
            p.close_all = True  # closed later with others, in a round trip made anyway
        else:
            self._cursors[name] = cursor
        return cursor

    def _fetch(self, cursor: _ServerCursor, n: int) -> tuple[list[tuple[Any, ...]], int]:
        if not self._exists(cursor):
            raise StorageError(f"cursor {cursor.name} no longer exists (its transaction or "
                               "savepoint was rolled back)", "34000")
        try:
            res = self._send([f'FETCH FORWARD {int(n)} FROM "{cursor.name}"'], prefix=False,
                             statement=True)
        except StorageError as e:
            if e.code == "54000":  # cancelled mid-FETCH: PostgreSQL will not run it again
                cursor.gone = True
            raise
        return res.fetchall(), res.widest

    def _cursor_done(self, cursor: _ServerCursor) -> None:
        """Exhausted: it stays declared until a CLOSE ALL rides along with a later statement."""
        if self._cursors.pop(cursor.name, None) is not None and self._phys is not None:
            self._phys.close_all = True
        self._give_back()

    def _cursor_closed(self, cursor: _ServerCursor) -> None:
        if self._cursors.pop(cursor.name, None) is None:
            return
        if not cursor.exhausted and self._phys is not None and self._exists(cursor):
            try:
                self._send([f'CLOSE "{cursor.name}"'], prefix=False)
            except StorageError as e:
                if self.in_transaction:
                    raise
                log.debug("closing cursor %s: %s", cursor.name, e.message)
        elif self._phys is not None:
            self._phys.close_all = True
        self._give_back()

    def _exists(self, cursor: _ServerCursor) -> bool:
        """Whether PostgreSQL still has it: a statement on a dropped cursor would abort the
        transaction."""
        if cursor.uncertain:
            found = self._send([f"SELECT 1 FROM pg_cursors WHERE name = '{cursor.name}'"],
                               prefix=False).fetchall()
            cursor.uncertain, cursor.gone = False, not found
        return not cursor.gone

    def _close_cursors(self) -> None:
        for c in list(self._cursors.values()):
            c.closed = True
        self._cursors.clear()
        if self._phys is not None:
            self._phys.close_all = True

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> int:
        try:
            return self._executemany(sql, seq)
        except Exception:
            self._give_back()
            raise

    def _executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> int:
        st = self._statement(sql)
        if not seq:
            return 0
        p = self._take()
        if st.rows:  # psycopg would take each result whole: one by one, counted
            return self._each(p, sql, st, seq)
        text = st.text
        rows = [_params(p) for p in seq]
        owed = self._prefix(p)

        def run() -> int:
            with p.conn.cursor() as cur:  # server-side binding, pipelined by psycopg
                if owed:
                    with p.conn.pipeline():
                        for s in owed:
                            p.conn.execute(s)
                        cur.executemany(text, rows)
                else:
                    cur.executemany(text, rows)
                return max(cur.rowcount, 0)
        n = self._guard(p, run, statement=True)
        self.note_transaction(sql, n > 0)
        self._give_back()
        return n

    def _each(self, p: _Phys, sql: str, st: Statement, seq: Sequence[Sequence[Any]]) -> int:
        """executemany of a statement that may return rows (ignored): one round trip each,
        read like any result."""
        n = 0
        for params in seq:
            n += max(self._send([self._bind(p, st, params)], statement=True).rowcount, 0)
        self.note_transaction(sql, n > 0)
        self._give_back()
        return n

    def interrupt(self) -> None:
        """Cancel the running statement (from another thread; never blocks the caller)."""
        with self._handoff:
            self._stopped = True
            p = self._phys
            if p is None or not self._cancelling.acquire(blocking=False):
                return

        def cancel() -> None:
            try:
                while True:  # PostgreSQL ignores a cancel that comes before the statement
                    p.conn.cancel_safe(timeout=5)
                    time.sleep(CANCEL_RETRY)
                    with self._handoff:
                        if self._round_trip is not p or not self._stopped:
                            break
            except (psycopg.Error, OSError):
                pass
            finally:
                self._cancelling.release()
        threading.Thread(target=cancel, name="casemate-pg-cancel", daemon=True).start()

    def close(self) -> None:
        self._close_cursors()
        self._lost = None
        p = self._phys
        if p is None:
            self._begin_pending = False
            return
        try:
            if self.in_transaction and not self._begin_pending:
                p.conn.execute("ROLLBACK")
        except psycopg.Error:
            pass
        self._begin_pending = False
        self._give_back(force=True)


_REFUSAL_HINT = ("Casemate refused it before PostgreSQL saw it; docs/postgresql.md, \"What "
                 "sessions may run\", lists what is refused and why")


def _check_lexing(p: _Phys) -> None:
    """Placeholders were found by a lexer that reads strings as standard-conforming: refuse
    to bind on a connection where a SET changed that (a literal would be misread)."""
    if p.conn.info.parameter_status("standard_conforming_strings") != "on":
        raise StorageError("standard_conforming_strings is off on this session: parameters "
                           "cannot be bound safely", "42601",
                           "leave standard_conforming_strings on (RESET it)")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Float8Dumper(FloatDumper):
    """Floats bound client-side as float8, as server-side binding types them (not numeric)."""

    def quote(self, obj: float) -> bytes:
        return b"'" + bytes(self.dump(obj) or b"") + b"'::float8"


class _NumericDumper(DecimalDumper):
    """Decimals bound client-side as numeric: a bare ``5`` would be an integer to
    PostgreSQL, and ``SELECT ?`` would give back an int for Decimal("5")."""

    def quote(self, obj: Any) -> bytes:
        value = bytes(super().quote(obj)).strip()
        return value if value.endswith(b"::numeric") else b"'" + value + b"'::numeric"


def _param(v: Any) -> Any:
    if isinstance(v, tuple | list):  # the wire's arrays arrive as tuples: PostgreSQL arrays
        return [_param(x) for x in v]
    if isinstance(v, Json):  # casemate.Json(...): jsonb, whatever the value inside
        return Jsonb(v.obj)
    return v


class _JsonLoader(JsonLoader):
    """json values come back wrapped, so they travel as JSON (a list is no array)."""

    def load(self, data: Any) -> Any:
        return Json(super().load(data))


class _JsonbLoader(JsonbLoader):
    def load(self, data: Any) -> Any:
        return Json(super().load(data))


def _client_loaders(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """Clients' connections: JSON comes back as Json (the service's own reads stay plain)."""
    conn.adapters.register_loader("json", _JsonLoader)
    conn.adapters.register_loader("jsonb", _JsonbLoader)
    return conn


def _params(params: Sequence[Any]) -> list[Any]:
    return [_param(v) for v in params]


# -- schema ----------------------------------------------------------------------
_SCHEMA = [
    "CREATE SCHEMA IF NOT EXISTS casemate",
    "REVOKE ALL ON SCHEMA casemate FROM PUBLIC",
    "CREATE TABLE IF NOT EXISTS casemate.meta (schema_version integer NOT NULL, "
    "role_prefix text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS casemate.users (name text PRIMARY KEY, grp text NOT NULL, "
    "salt bytea NOT NULL, stored_key bytea NOT NULL, server_key bytea NOT NULL, "
    "iterations integer NOT NULL, created text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS casemate.groups (name text PRIMARY KEY, role text UNIQUE NOT "
    "NULL, password text NOT NULL, builtin boolean NOT NULL DEFAULT false)",
    "CREATE TABLE IF NOT EXISTS casemate.grants (grp text NOT NULL REFERENCES casemate.groups "
    "(name) ON DELETE CASCADE, tbl text NOT NULL, privileges text NOT NULL, "
    "PRIMARY KEY (grp, tbl))",
]
# Added after schema version 1 shipped: created by init and at server start if missing.
_SHARED_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS casemate.servers (server text PRIMARY KEY, seen timestamptz "
    "NOT NULL, sessions jsonb NOT NULL)",
    "CREATE TABLE IF NOT EXISTS casemate.drops (server text NOT NULL, session integer NOT NULL, "
    "reason text NOT NULL, PRIMARY KEY (server, session))",
]
SERVER_ALIVE_SECONDS = 10  # a server that has not published its sessions for this long is gone
_ROLE_ATTRS = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"
_NO_SCHEMA_HINT = "run: casemate init DIR --storage postgresql --dsn '...' (once per database)"


def _verifier(conn: psycopg.Connection[Any], role: str, password: str) -> str:
    """The SCRAM verifier of ``password``: PostgreSQL never sees the password itself."""
    return conn.pgconn.encrypt_password(password.encode(), role.encode(),
                                        b"scram-sha-256").decode()


def check_dsn(dsn: str) -> None:
    """Refuse a DSN that carries a password: it would sit in casemate.toml, readable by anyone
    who can read the folder."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:
        return  # reported, with libpq's reason, where the DSN is used
    if parts.get("password"):
        raise StorageError(
            "storage.dsn contains a password; Casemate does not keep passwords in casemate.toml",
            "28P01", "remove password= (or user:password@) from the DSN and put the password in "
            "$CASEMATE_PG_PASSWORD, or in a file named by storage.password_file (chmod 600)")


def _check_private(path: Path) -> None:
    """A password file must belong to the server's user and be closed to everyone else."""
    try:
        st = path.stat()
    except OSError:
        return  # reported when it is read
    if st.st_mode & 0o077 or st.st_uid != os.geteuid():
        raise StorageError(
            f"storage.password_file {path} is not private (mode {st.st_mode & 0o777:04o}, owner "
            f"uid {st.st_uid}): the server refuses to start", "F0000",
            f"chmod 600 {path} and make it belong to the user the server runs as")


def _sanitize(name: str, width: int) -> str:
    s = re.sub(r"[^a-z0-9_]", "_", name.lower())[:width]
    return s or "x"


class PostgreSQLBackend(Backend):
    name = "postgresql"

    def __init__(self, settings: StorageSettings, limits: LimitsSettings | None = None) -> None:
        self.settings = settings
        self.max_result = limits.max_statement_result_bytes if limits else DEFAULT_MAX_RESULT
        self._secret = self._read_password()
        try:
            self._dsn_parts = conninfo_to_dict(settings.dsn)
        except psycopg.Error as e:
            raise StorageError(f"storage.dsn is not a valid PostgreSQL connection string: {e}",
                               "08001") from e
        options = str(self._dsn_parts.get("options", "") or "")
        lock_ms = max(1, int(settings.busy_timeout_seconds * 1000))
        self._group_options = f"{options} -c lock_timeout={lock_ms}".strip()
        # The service role resolves names in pg_catalog only: an admin's function or operator
        # in public (an exact match for oid = regclass, say) would otherwise run as the service
        # role, which reads every group's password and may be a superuser.
        self._service_options = f"{options} -c search_path=pg_catalog,pg_temp".strip()
        self._roles: dict[str, tuple[str, str]] = {}   # group -> (role, password)
        self._roles_lock = threading.Lock()
        self._serving = False  # after check(): connection errors go to the log, not to users
        self._grants_cache: dict[str, tuple[float, int, dict[str, frozenset[str]]]] = {}
        self._changes = itertools.count(1)  # next() is atomic: the listener thread bumps it
        self._rights_version = 0
        self._listening = False
        self._listener: psycopg.Connection[Any] | None = None  # the LISTEN connection
        self._closing = threading.Event()
        self._sys = _Pool(2, 30.0, self._service_connect, "service connections", reset=False)
        self._sys.put(self._sys.get(""))  # fail now, clearly, if PostgreSQL is unreachable
        self.budget = _Budget(settings.pool_size * self.max_result)
        self._pool = _Pool(settings.pool_size, max(0.5, settings.busy_timeout_seconds),
                           self._group_connect, "storage.pool_size")

    # -- connections --
    def _read_password(self) -> str | None:
        s = self.settings
        check_dsn(s.dsn)
        if s.password_env and os.environ.get(s.password_env):
            return os.environ[s.password_env]
        if s.password_file:
            _check_private(Path(s.password_file).expanduser())
            try:
                lines = Path(s.password_file).expanduser().read_text().splitlines()
            except OSError as e:
                raise StorageError(f"cannot read storage.password_file {s.password_file}: "
                                   f"{e.strerror or e}", "28P01") from e
            return lines[0].strip() if lines else ""
        return None

    def _password_hint(self) -> str:
        s = self.settings
        return (f"put the password of the PostgreSQL role in ${s.password_env}"
                + (f" or in {s.password_file}" if s.password_file else
                   " or in a file named by storage.password_file"))

    def _open(self, conninfo: str, who: str) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(conninfo, autocommit=True, prepare_threshold=None)
        except psycopg.Error as e:
            err = _connect_error(e, self.settings.dsn, who, self._password_hint())
            if not self._serving:  # casemate init, serve's start, the CLI: its administrator
                raise err from None
            log.error("cannot connect to PostgreSQL: %s (%s)", err.message, err.hint)
            raise StorageError("storage unavailable: the server cannot reach its database",
                               err.code, _UNAVAILABLE_HINT) from None
        for t in _TEXT_TYPES:
            try:
                conn.adapters.register_loader(t, TextLoader)
            except psycopg.Error:
                pass
        conn.adapters.register_dumper(dict, JsonbDumper)
        conn.adapters.register_dumper(float, _Float8Dumper)
        conn.adapters.register_dumper(Decimal, _NumericDumper)
        return conn

    def _service_connect(self, _key: str, tcp: dict[str, Any] | None = None
                         ) -> psycopg.Connection[Any]:
        extra: dict[str, Any] = {"application_name": "casemate (service)",
                                 "options": self._service_options}
        extra.update({k: v for k, v in (tcp or {}).items() if k not in self._dsn_parts})
        if "connect_timeout" not in self._dsn_parts:
            extra["connect_timeout"] = 10
        if self._secret is not None:
            extra["password"] = self._secret
        return self._open(make_conninfo(self.settings.dsn, **extra),
                          str(self._dsn_parts.get("user") or "(default user)"))

    def _group_connect(self, group: str) -> psycopg.Connection[Any]:
        for attempt in (0, 1):
            role, password = self._role(group, refresh=attempt == 1)
            extra: dict[str, Any] = {"user": role, "password": password,
                                     "options": self._group_options,
                                     "application_name": f"casemate ({group})"}
            if "connect_timeout" not in self._dsn_parts:
                extra["connect_timeout"] = 10
            try:
                return _client_loaders(self._open(make_conninfo(self.settings.dsn, **extra), role))
            except StorageError as e:
                if e.code != "28P01" or attempt == 1:
                    raise
                log.warning("PostgreSQL refused the password of role %s (group %s): it was "
                            "changed outside Casemate; setting it back", role, group)
                self.repair_roles(group)
        raise AssertionError("unreachable")

    def _role(self, group: str, refresh: bool = False) -> tuple[str, str]:
        with self._roles_lock:
            if not refresh and group in self._roles:
                return self._roles[group]
        rows = self._q("SELECT name, role, password FROM casemate.groups")
        with self._roles_lock:
            self._roles = {g: (r, pw) for g, r, pw in rows}
            if group in self._roles:
                return self._roles[group]
        raise StorageError(f"group {group!r} has no PostgreSQL role in this database", "42704",
                           "recreate the group (casemate group add), or run casemate init "
                           "again for the built-in groups")

    def _q(self, query: str | pgsql.Composable, params: Sequence[Any] | None = None,
           fetch: bool = True) -> list[tuple[Any, ...]]:
        """One statement on a service connection (autocommit)."""
        p = self._sys.get("")
        try:
            cur = p.conn.execute(query, params)  # type: ignore[arg-type]
            rows = list(cur.fetchall()) if fetch and cur.description else []
        except psycopg.Error as e:
            self._sys.put(p)
            raise self._schema_error(e) from e
        self._sys.put(p)
        return rows

    def _txn(self, work: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        """Several statements on a service connection, in one transaction."""
        p = self._sys.get("")
        try:
            with p.conn.transaction():
                return work(p.conn)
        except psycopg.Error as e:
            raise self._schema_error(e) from e
        finally:
            self._sys.put(p)

    @staticmethod
    def _schema_error(e: psycopg.Error) -> StorageError:
        err = _error(e)
        if err.code in ("3F000", "42P01") and ('"casemate.' in err.message
                                                or 'schema "casemate"' in err.message):
            return StorageError("this PostgreSQL database has no Casemate schema", "3F000",
                                _NO_SCHEMA_HINT)
        return err

    # -- setup --
    def initialize(self) -> None:
        """Create the casemate schema and one login role per built-in group.

        Needs a role that may create schemas in the database (its owner) and
        roles (CREATEROLE), or a superuser.  Idempotent: a second ``casemate
        init`` over the same database keeps its users, groups and roles.
        """
        try:
            self._txn(self._initialize)
        except StorageError as e:
            if e.code == "42501":
                raise StorageError(
                    f"the PostgreSQL role {self._dsn_parts.get('user', '')!s} lacks rights "
                    f"to set Casemate up: {e.message}", "42501",
                    "run casemate init with a role that owns the database and has CREATEROLE "
                    "(ALTER ROLE ... CREATEROLE), or as a superuser; the servers can then use "
                    "the same role") from e
            raise
        self.check()

    def _initialize(self, conn: psycopg.Connection[Any]) -> None:
        # Any role may take any advisory lock: never wait for one without end.
        conn.execute(f"SET LOCAL lock_timeout = '{int(INIT_LOCK_SECONDS * 1000)}ms'")
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INIT_LOCK,))
        except psycopg.errors.LockNotAvailable:
            raise StorageError("another session holds Casemate's setup lock in this database",
                               "55P03", f"find it with SELECT pid, usename, application_name "
                               f"FROM pg_locks JOIN pg_stat_activity USING (pid) WHERE "
                               f"locktype = 'advisory' AND objid = {_INIT_LOCK}; run casemate "
                               "init again when it is gone") from None
        conn.execute("RESET lock_timeout")
        found = conn.execute("SELECT to_regclass('casemate.meta')").fetchone()
        if found and found[0] is not None:
            row = conn.execute("SELECT schema_version, role_prefix FROM casemate.meta").fetchone()
            if row is not None and row[0] != SCHEMA_VERSION:
                raise StorageError(*self._version_error(row[0]))
        for stmt in _SCHEMA + _SHARED_SCHEMA:
            conn.execute(stmt)
        row = conn.execute("SELECT role_prefix FROM casemate.meta").fetchone()
        if row is None:
            db = conn.execute("SELECT current_database()").fetchone()
            prefix = f"casemate_{_sanitize(str(db[0] if db else ''), 20)}_"
            conn.execute("INSERT INTO casemate.meta VALUES (%s, %s)", (SCHEMA_VERSION, prefix))
        else:
            prefix = row[0]
        known = {g: (r, pw) for g, r, pw in conn.execute(
            "SELECT name, role, password FROM casemate.groups").fetchall()}
        for g in BUILTIN_GROUPS:
            role, pw = known.get(g, (prefix + g, secrets.token_urlsafe(24)))
            self._ensure_role(conn, role, pw, reset=g not in known)
            if g not in known:
                conn.execute("INSERT INTO casemate.groups VALUES (%s, %s, %s, true)", (g, role, pw))
        for g, (role, pw) in known.items():
            if g not in BUILTIN_GROUPS:
                self._ensure_role(conn, role, pw, reset=False)
        admin, rw, ro = (pgsql.Identifier(known.get(g, (prefix + g, ""))[0])
                         for g in BUILTIN_GROUPS)
        for stmt in (
            "GRANT USAGE, CREATE ON SCHEMA public TO {admin}",
            "GRANT USAGE ON SCHEMA public TO {rw}, {ro}",
            "ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA public "
            "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {rw}",
            "ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA public "
            "GRANT SELECT ON TABLES TO {ro}",
            "ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA public "
            "GRANT USAGE, SELECT ON SEQUENCES TO {rw}",
        ):
            conn.execute(pgsql.SQL(stmt).format(admin=admin, rw=rw, ro=ro))
        try:  # PostgreSQL 15's default; older databases may still let everyone create tables
            with conn.transaction():
                conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        except psycopg.errors.InsufficientPrivilege:
            log.warning("could not revoke CREATE on schema public from PUBLIC; other roles "
                        "may create tables there")

    @staticmethod
    def _ensure_role(conn: psycopg.Connection[Any], role: str, password: str,
                     reset: bool) -> None:
        """The login role of one group: no special rights; the service role manages it."""
        ident = pgsql.Identifier(role)
        verifier = _verifier(conn, role, password)
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if exists is None:
            conn.execute(pgsql.SQL("CREATE ROLE {} " + _ROLE_ATTRS + " PASSWORD {}").format(
                ident, pgsql.Literal(verifier)))
        elif reset:  # left over from an earlier database of the same name: take it over
            other = conn.execute(
                "SELECT d.datname FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid "
                "WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = "
                "(SELECT oid FROM pg_roles WHERE rolname = %s) AND d.datname <> "
                "current_database() LIMIT 1", (role,)).fetchone()
            if other is not None:
                raise StorageError(
                    f"PostgreSQL role {role} already serves another database ({other[0]}) of "
                    "this cluster", "42710", "roles are shared by a cluster's databases: give "
                    "this database another name (Casemate names its roles after it)")
            conn.execute(pgsql.SQL("ALTER ROLE {} " + _ROLE_ATTRS + " PASSWORD {}").format(
                ident, pgsql.Literal(verifier)))
        member = conn.execute("SELECT pg_has_role(current_user, %s, 'USAGE')", (role,)).fetchone()
        if not (member and member[0]):
            conn.execute(pgsql.SQL("GRANT {} TO CURRENT_USER").format(ident))

    @staticmethod
    def _version_error(found: object) -> tuple[str, str, str]:
        return (f"the Casemate schema in this PostgreSQL database has version {found}; this "
                f"Casemate needs version {SCHEMA_VERSION}", "0A000",
                "run the same Casemate version on every server over this database "
                "(and upgrade the schema with that version)")

    def check(self) -> None:
        """Raise StorageError unless the schema exists with this version; load the roles."""
        rows = self._q("SELECT schema_version FROM casemate.meta")
        if not rows:
            raise StorageError("the Casemate schema in this PostgreSQL database is incomplete",
                               "3F000", _NO_SCHEMA_HINT)
        if rows[0][0] != SCHEMA_VERSION:
            raise StorageError(*self._version_error(rows[0][0]))
        for stmt in _SHARED_SCHEMA:
            self._q(stmt, fetch=False)
        self.repair_roles()
        for g in BUILTIN_GROUPS:
            self._role(g, refresh=g == BUILTIN_GROUPS[0])
        self._serving = True

    def repair_roles(self, group: str | None = None) -> None:
        """Put the group roles (or ``group``'s) back as Casemate made them: attributes, the
        password kept in casemate.groups, no settings of their own.  Sessions cannot change
        them (the guard refuses role statements), but a direct login, a DBA or an admin's
        function could; this runs at every server start and when a password is refused."""
        try:
            self._txn(lambda conn: self._repair(conn, group))
        except StorageError as e:
            log.warning("could not check Casemate's PostgreSQL roles: %s", e.message)

    @classmethod
    def _repair(cls, conn: psycopg.Connection[Any], group: str | None) -> None:
        rows = conn.execute(
            "SELECT g.name, g.role, g.password, r.rolconfig, (SELECT s.setconfig FROM "
            "pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE "
            "s.setrole = r.oid AND d.datname = current_database()) FROM casemate.groups g "
            "JOIN pg_roles r ON r.rolname = g.role WHERE %s::text IS NULL OR g.name = %s",
            (group, group)).fetchall()
        for name, role, password, settings, db_settings in rows:
            ident = pgsql.Identifier(role)
            conn.execute(pgsql.SQL("ALTER ROLE {} " + _ROLE_ATTRS + " PASSWORD {}").format(
                ident, pgsql.Literal(_verifier(conn, role, password))))
            if settings or db_settings:
                log.warning("PostgreSQL role %s (group %s) had settings of its own (%s): "
                            "removed", role, name, ", ".join((settings or []) + (db_settings or [])))
                conn.execute(pgsql.SQL("ALTER ROLE {} RESET ALL").format(ident))
                conn.execute(pgsql.SQL("ALTER ROLE {} IN DATABASE {} RESET ALL").format(
                    ident, pgsql.Identifier(str(conn.info.dbname))))

    def connect(self) -> StorageConnection:
        return _Connection(self)

    # -- users --
    _COLS = "name, grp, salt, stored_key, server_key, iterations, created"

    @staticmethod
    def _user(r: tuple[Any, ...]) -> UserRecord:
        return UserRecord(r[0], r[1], bytes(r[2]), bytes(r[3]), bytes(r[4]), r[5], r[6])

    def get_user(self, name: str) -> UserRecord | None:
        rows = self._q(f"SELECT {self._COLS} FROM casemate.users WHERE name = %s", (name,))
        return self._user(rows[0]) if rows else None

    def add_user(self, record: UserRecord) -> None:
        created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        rows = self._q(f"INSERT INTO casemate.users ({self._COLS}) VALUES (%s, %s, %s, %s, %s, "
                       "%s, %s) ON CONFLICT (name) DO NOTHING RETURNING name",
                       (record.name, record.group, record.salt, record.stored_key,
                        record.server_key, record.iterations, created))
        if not rows:
            raise KeyError(record.name)

    def update_user(self, record: UserRecord) -> None:
        rows = self._q("UPDATE casemate.users SET grp = %s, salt = %s, stored_key = %s, "
                       "server_key = %s, iterations = %s WHERE name = %s RETURNING name",
                       (record.group, record.salt, record.stored_key, record.server_key,
                        record.iterations, record.name))
        if not rows:
            raise KeyError(record.name)
        self._changed()

    def remove_user(self, name: str) -> None:
        if not self._q("DELETE FROM casemate.users WHERE name = %s RETURNING name", (name,)):
            raise KeyError(name)
        self._changed()

    def list_users(self) -> list[UserRecord]:
        return [self._user(r) for r in self._q(
            f"SELECT {self._COLS} FROM casemate.users ORDER BY name")]

    # -- groups and grants --
    def add_group(self, name: str) -> None:
        if name in BUILTIN_GROUPS:
            raise KeyError(name)

        def work(conn: psycopg.Connection[Any]) -> None:
            if conn.execute("SELECT 1 FROM casemate.groups WHERE name = %s", (name,)).fetchone():
                raise KeyError(name)
            prefix = conn.execute("SELECT role_prefix FROM casemate.meta").fetchone()
            base = f"{prefix[0] if prefix else 'casemate_'}g_{_sanitize(name, 20)}"
            role = base
            if (role.removeprefix(str(prefix[0] if prefix else "")) != f"g_{name}"
                    or conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                    (role,)).fetchone()):
                role = f"{base}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
            password = secrets.token_urlsafe(24)
            self._ensure_role(conn, role, password, reset=True)
            conn.execute("INSERT INTO casemate.groups VALUES (%s, %s, %s, false)",
                         (name, role, password))
            conn.execute(pgsql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(
                pgsql.Identifier(role)))
        self._txn(work)

    def remove_group(self, name: str) -> None:
        if name in BUILTIN_GROUPS:
            raise ValueError(f"{name!r} is a built-in group")

        def work(conn: psycopg.Connection[Any]) -> None:
            row = conn.execute("SELECT role FROM casemate.groups WHERE name = %s AND NOT builtin",
                               (name,)).fetchone()
            if row is None:
                raise KeyError(name)
            if conn.execute("SELECT 1 FROM casemate.users WHERE grp = %s", (name,)).fetchone():
                raise ValueError(f"group {name!r} still has users")
            role = pgsql.Identifier(row[0])
            conn.execute("DELETE FROM casemate.groups WHERE name = %s", (name,))
            self._changed(conn)
            conn.execute(pgsql.SQL("DROP OWNED BY {}").format(role))  # its privileges here
            conn.execute(pgsql.SQL("DROP ROLE {}").format(role))
        self._txn(work)
        self._pool.drop_key(name)
        self._grants_cache.pop(name, None)
        with self._roles_lock:
            self._roles.pop(name, None)

    def list_groups(self) -> dict[str, dict[str, frozenset[str]]]:
        out: dict[str, dict[str, frozenset[str]]] = {g: {} for g in BUILTIN_GROUPS}
        for (g,) in self._q("SELECT name FROM casemate.groups ORDER BY name"):
            out.setdefault(g, {})
        for g, t, p in self._q("SELECT grp, tbl, privileges FROM casemate.grants"):
            out.setdefault(g, {})[t] = frozenset(p.split(","))
        return out

    def grants_for(self, group: str) -> dict[str, frozenset[str]]:
        # Read at every storage acquisition (for server-method rights; PostgreSQL enforces
        # table rights itself), so cached briefly, and only while no change was notified.
        now, version = time.monotonic(), self._rights_version
        hit = self._grants_cache.get(group)
        if hit is not None and now - hit[0] < GRANTS_CACHE_SECONDS and hit[1] == version:
            return hit[2]
        grants = {t: frozenset(p.split(",")) for t, p in self._q(
            "SELECT tbl, privileges FROM casemate.grants WHERE grp = %s", (group,))}
        self._grants_cache[group] = (now, version, grants)
        return grants

    # -- noticing changes made by other processes (server/rights.py) --
    def grants_version(self) -> int | None:
        # Our own changes move it at once, other processes' through their NOTIFY; before
        # watch_rights() (the CLI) it is unknown.
        return self._rights_version if self._listening else None

    def _bump(self) -> None:
        self._rights_version = next(self._changes)

    def _changed(self, conn: psycopg.Connection[Any] | None = None) -> None:
        """Tell every server on this database that users, groups or grants changed."""
        notify = pgsql.SQL("NOTIFY {}").format(pgsql.Identifier(RIGHTS_CHANNEL))
        if conn is not None:
            conn.execute(notify)  # inside the change's transaction: sent at its commit
        else:
            self._q(notify, fetch=False)
        self._bump()

    def watch_rights(self) -> None:
        """LISTEN for other processes' changes (a server calls this once, at start)."""
        conn = self._listen_connect()
        self._listening = True
        threading.Thread(target=self._listen, args=(conn,), name="casemate-rights",
                         daemon=True).start()

    def _listen_connect(self) -> psycopg.Connection[Any]:
        """The LISTEN connection.  It only reads, so a half-open TCP connection (PostgreSQL's
        host gone, a firewall dropping state) would never fail on its own: TCP keepalives,
        a user timeout and a periodic ``SELECT 1`` make it fail, and the listener reconnect."""
        conn = self._service_connect("", LISTEN_TCP)
        conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(RIGHTS_CHANNEL)))
        self._listener = conn
        return conn

    def _listen(self, conn: psycopg.Connection[Any] | None) -> None:
        pinged = time.monotonic()
        while not self._closing.is_set():
            try:
                if conn is None:
                    conn = self._listen_connect()
                    self._bump()  # a change may have been missed while not listening
                for _ in conn.notifies(timeout=0.5):
                    self._bump()
                if time.monotonic() - pinged >= LISTEN_PING:
                    conn.execute("SELECT 1")
                    pinged = time.monotonic()
            except (psycopg.Error, StorageError) as e:
                log.warning("lost the rights notifications connection, reconnecting: %s", e)
                self._bump()
                if conn is not None:
                    conn.close()
                conn = None
                self._closing.wait(1.0)
        if conn is not None:
            conn.close()

    def set_grants(self, group: str, table: str, privileges: frozenset[str]) -> None:
        table = table.lower()

        def work(conn: psycopg.Connection[Any]) -> None:
            row = conn.execute("SELECT role, builtin FROM casemate.groups WHERE name = %s",
                               (group,)).fetchone()
            if row is None:
                raise KeyError(group)
            role, builtin = pgsql.Identifier(row[0]), row[1]
            if privileges:
                conn.execute("INSERT INTO casemate.grants VALUES (%s, %s, %s) ON CONFLICT "
                             "(grp, tbl) DO UPDATE SET privileges = EXCLUDED.privileges",
                             (group, table, ",".join(sorted(privileges))))
            else:
                conn.execute("DELETE FROM casemate.grants WHERE grp = %s AND tbl = %s",
                             (group, table))
            self._changed(conn)
            if table.startswith(METHOD_PREFIX) or builtin:
                return  # method rights are Casemate's; built-in groups' table rights are fixed
            tbl = pgsql.Identifier(*(table.split(".", 1) if "." in table else ("public", table)))
            conn.execute(pgsql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(tbl, role))
            table_privs = sorted(privileges & {"SELECT", "INSERT", "UPDATE", "DELETE"})
            if table_privs:
                conn.execute(pgsql.SQL("GRANT {} ON TABLE {} TO {}").format(
                    pgsql.SQL(", ").join(pgsql.SQL(p) for p in table_privs), tbl, role))
            # serial columns: INSERT needs their sequences
            seqs = conn.execute(
                "SELECT s.oid::regclass::text FROM pg_depend d JOIN pg_class s ON s.oid = d.objid "
                "WHERE d.refobjid = %s::regclass AND d.classid = 'pg_class'::regclass "
                "AND s.relkind = 'S' AND d.deptype = 'a'", (tbl.as_string(conn),)).fetchall()
            for (seq,) in seqs:
                conn.execute(pgsql.SQL("REVOKE ALL ON SEQUENCE {} FROM {}").format(
                    pgsql.SQL(seq), role))
                if "INSERT" in privileges:
                    conn.execute(pgsql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(
                        pgsql.SQL(seq), role))
        self._txn(work)
        self._grants_cache.pop(group, None)

    # -- sessions of every server over the database --
    shares_sessions = True

    def share_sessions(self, server: str, rows: list[dict[str, Any]]) -> list[tuple[int, str]]:
        def work(conn: psycopg.Connection[Any]) -> list[tuple[int, str]]:
            conn.execute("INSERT INTO casemate.servers VALUES (%s, now(), %s) ON CONFLICT "
                         "(server) DO UPDATE SET seen = now(), sessions = EXCLUDED.sessions",
                         (server, Jsonb(rows)))
            conn.execute("DELETE FROM casemate.servers WHERE seen < now() - interval '1 day'")
            return [(int(i), str(r)) for i, r in conn.execute(
                "DELETE FROM casemate.drops WHERE server = %s RETURNING session, reason",
                (server,)).fetchall()]
        result: list[tuple[int, str]] = self._txn(work)
        return result

    def other_sessions(self, server: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name, sessions in self._q(
                "SELECT server, sessions FROM casemate.servers WHERE server <> %s AND seen > "
                f"now() - interval '{SERVER_ALIVE_SECONDS} seconds' ORDER BY server", (server,)):
            out.extend({**row, "server": name} for row in sessions)
        return out

    def request_drop(self, server: str, session: int, reason: str) -> None:
        if not self._q("INSERT INTO casemate.drops SELECT server, %s, %s FROM casemate.servers "
                       "WHERE server = %s AND seen > now() - interval "
                       f"'{SERVER_ALIVE_SECONDS} seconds' ON CONFLICT (server, session) DO "
                       "UPDATE SET reason = EXCLUDED.reason RETURNING server",
                       (session, reason, server)):
            raise KeyError(server)

    # -- housekeeping --
    def data_size(self) -> int:
        return int(self._q("SELECT pg_database_size(current_database())")[0][0])

    def integrity_check(self) -> str:
        """B-tree checks with amcheck when installed; PostgreSQL checks its pages itself."""
        found = self._q("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = "
                        "e.extnamespace WHERE e.extname = 'amcheck'")
        if not found:
            return "ok"
        check = pgsql.Identifier(found[0][0], "bt_index_check")  # its schema: not on our path
        try:
            self._q(pgsql.SQL("SELECT {}(c.oid::regclass) FROM pg_index i JOIN pg_class c ON "
                    "c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE a.amname = 'btree' AND n.nspname IN "
                    "('public', 'casemate') AND c.relpersistence <> 't' AND i.indisvalid"
                    ).format(check))
        except StorageError as e:
            if e.code == "42501":
                log.info("integrity check: amcheck not permitted for this role: %s", e.message)
                return "ok"
            return e.message
        return "ok"

    def close(self) -> None:
        self._closing.set()
        self._pool.close()
        self._sys.close()
