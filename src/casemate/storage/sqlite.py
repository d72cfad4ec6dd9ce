"""The embedded storage backend: SQLite files in the database's ``Data/`` folder.

``Data/data.sqlite`` holds the user's tables (WAL journal, ``synchronous=FULL``
so an acknowledged commit survives a kill -9 or a power cut);
``Data/system.sqlite`` holds users and password verifiers, out of reach of
user SQL (ATTACH is refused by the authorizer).  Both files, and the -wal/-shm
files SQLite gives the main file's mode, are created 0600: the verifiers are
the server user's alone.  Each connection caps one value's size
(``limits.max_value_bytes``) and the process caps SQLite's heap
(``limits.max_sqlite_memory_mb``), so no statement allocates without bound.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..protocol.codec import Json
from ..settings import LimitsSettings
from . import sqlite_types
from .access import (
    PermissionDenied,
    Policy,
    authorizer_for,
    check_program,
    program_needs,
)
from .base import (
    BUILTIN_GROUPS,
    Backend,
    Busy,
    Interrupted,
    StorageConnection,
    StorageCursor,
    StorageError,
    TooLong,
    UserRecord,
    type_code,
)
from .sqlite_errors import ENGINE_ERRORS, engine_boundary, engine_error, translates_itself

__all__ = ["SQLiteBackend", "DATA_FILE", "SYSTEM_FILE"]

log = logging.getLogger("casemate.storage.sqlite")

DATA_FILE = "data.sqlite"
SYSTEM_FILE = "system.sqlite"

# How stale another process's change to users or grants may be seen (server/rights.py).
DATA_VERSION_EVERY = 0.001


def _lenient(parse: Any) -> Any:
    """A converter that hands back the stored text when it is not in the expected format
    (a column's declared type does not guarantee its contents in SQLite)."""
    def convert(b: bytes) -> Any:
        try:
            return parse(b)
        except (ValueError, ArithmeticError):
            return b.decode(errors="replace")
    return convert


def _register_types() -> None:
    # Values without a native SQLite type are stored as ISO/decimal text and
    # read back typed when the column's declared type names them.
    sqlite3.register_adapter(Decimal, str)
    sqlite3.register_adapter(dt.date, lambda v: v.isoformat())
    sqlite3.register_adapter(dt.datetime, lambda v: v.isoformat())
    sqlite3.register_adapter(dt.time, lambda v: v.isoformat())
    sqlite3.register_adapter(uuid.UUID, str)
    sqlite3.register_adapter(Json, Json.dumps)
    sqlite3.register_adapter(dict, lambda v: Json(v).dumps())
    conv_dt = lambda b: dt.datetime.fromisoformat(b.decode())  # noqa: E731
    for name, parse in {
        "DATE": lambda b: dt.date.fromisoformat(b.decode()),
        "TIME": lambda b: dt.time.fromisoformat(b.decode()),
        "DATETIME": conv_dt, "TIMESTAMP": conv_dt, "TIMESTAMPTZ": conv_dt,
        "DECIMAL": lambda b: Decimal(b.decode()), "NUMERIC": lambda b: Decimal(b.decode()),
        "BOOLEAN": lambda b: b not in (b"0", b""), "BOOL": lambda b: b not in (b"0", b""),
        "UUID": lambda b: uuid.UUID(b.decode()),
        "JSON": lambda b: Json(json.loads(b)), "JSONB": lambda b: Json(json.loads(b)),
    }.items():
        sqlite3.register_converter(name, _lenient(parse))


_register_types()


_BUSY_SNAPSHOT = 517  # SQLITE_BUSY_SNAPSHOT (not exported by Python 3.11's sqlite3)
_READONLY = 8  # SQLITE_READONLY: what query_only answers to a write lock
DEFAULT_MAX_VALUE = 16 * 1024 * 1024  # limits.max_value_bytes


def _is_busy(e: sqlite3.OperationalError) -> bool:
    return getattr(e, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _has_preupdate_hook() -> bool:
    """Whether this SQLite reports every row it overwrites to the pre-update hook
    (access.program_needs reads a REPLACE differently without it)."""
    db = sqlite3.connect(":memory:")
    try:
        return ("ENABLE_PREUPDATE_HOOK",) in db.execute("PRAGMA compile_options").fetchall()
    finally:
        db.close()


_PREUPDATE_HOOK = _has_preupdate_hook()
_BLANK = re.compile(r"\s+|--[^\n]*|/\*.*?(?:\*/|\Z)", re.S)  # one run of blanks or one comment


def _is_explain(sql: str) -> bool:
    """Whether ``sql`` is itself an EXPLAIN (after blanks and comments, as SQLite skips them)."""
    if sql[:1].isalpha() and sql[:1] not in "eE":
        return False  # most statements: their first word starts right away
    i = 0
    while (m := _BLANK.match(sql, i)) and m.end() > i:
        i = m.end()
    word = sql[i:i + 8].lower()
    return word.startswith("explain") and not (word[7:].isalnum() or word[7:] == "_")


class OutOfRange(ValueError):
    """An integer SQLite cannot store (beyond 64 bits)."""


def _big_ints(params: Sequence[Any]) -> Sequence[Any]:
    # SQLite integers are 64-bit, and it silently turns larger ones into lossy floats:
    # refuse them instead of changing the value.
    for p in params:
        if type(p) is int and not -(2**63) <= p < 2**63:
            raise OutOfRange(f"integer {p} does not fit in 64 bits, the largest integer the "
                             "SQLite storage holds; store it as text (str(value))")
        if type(p) is float and p != p:
            raise StorageError("SQLite cannot store a float NaN (it would become NULL)",
                               "22000", "store Decimal('NaN') in a DECIMAL column, or NULL")
    return params


def _leaving(e: BaseException) -> BaseException:
    """``e`` as it may leave the backend: one of SQLite's own exceptions translated (for
    the methods that translate in their own body: sqlite_errors.translates_itself)."""
    return engine_error(e) if isinstance(e, ENGINE_ERRORS) else e


def _create_private(path: Path) -> None:
    """Create an empty database file with mode 0600 if missing: SQLite would make it 0644,
    and gives its -wal and -shm files the main file's mode."""
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def _out_of_memory() -> StorageError:
    # Python's sqlite3 turns SQLITE_NOMEM (limits.max_sqlite_memory_mb reached) into
    # MemoryError: the statement fails, the session and the server go on.
    return StorageError("out of memory: the statement needs more memory than SQLite may use "
                        "(limits.max_sqlite_memory_mb, all sessions together)", "53200",
                        "select fewer or smaller values at once")


# The progress handler runs every this many virtual-machine steps (a few microseconds of
# work): often enough to stop a statement within well under a millisecond of its cut-off,
# rarely enough to cost nothing measurable (a primary-key lookup never reaches it).
PROGRESS_STEPS = 1000
# In the event loop it runs more often: one step can handle a whole value (upper() of
# INLINE_MAX_LENGTH bytes: ~0.1 ms), so a thousand such steps would overrun the cut-off
# by a tenth of a second; a hundred overrun it by ten milliseconds at most.
INLINE_PROGRESS_STEPS = 100
# The progress handler cannot stop one long step: a function building a huge value
# (randomblob(200000000): over a second).  In the event loop values are therefore held to
# this size (SQLITE_LIMIT_LENGTH; well under a millisecond of work per step); a call that
# needs more is stopped ("too big") and run again in a thread, with the connection's
# usual limit.
INLINE_MAX_LENGTH = 16 * 1024
# Functions whose one call costs more than linear in its arguments (pattern matching and
# substring search: length x pattern length; JSON with many paths: paths x elements): a
# single step of seconds on values under INLINE_MAX_LENGTH, which the progress handler
# cannot split.  A statement calling one (itself, or through a view or a trigger) never
# runs in the event loop.
_UNBOUNDED_STEPS = frozenset((
    "like", "glob", "regexp", "match", "instr", "replace", "trim", "ltrim", "rtrim",
    "json_extract", "json_set", "json_insert", "json_replace", "json_remove", "json_patch",
    "jsonb_extract", "jsonb_set", "jsonb_insert", "jsonb_replace", "jsonb_remove",
    "jsonb_patch"))
_SCHEMA_ACTIONS = frozenset((
    sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_CREATE_TRIGGER,
    sqlite3.SQLITE_CREATE_VIEW, sqlite3.SQLITE_DROP_INDEX, sqlite3.SQLITE_DROP_TABLE,
    sqlite3.SQLITE_DROP_TRIGGER, sqlite3.SQLITE_DROP_VIEW, sqlite3.SQLITE_ALTER_TABLE,
    sqlite3.SQLITE_CREATE_VTABLE, sqlite3.SQLITE_DROP_VTABLE))
_FUNCTION_OPS = ("Function", "PureFunc", "AggStep", "AggInverse", "AggValue", "AggFinal")
_TOOBIG = 18  # SQLITE_TOOBIG
_INLINE = "inline"  # _Connection._stop: the event-loop cut-off passed
_STOP = "stop"      # _Connection._stop: interrupt() was called
# SQL text -> (writes nothing, every step short) read from EXPLAIN, for read_only and
# inlinable; bounded, cleared when full.
_facts: dict[str, tuple[bool, bool]] = {}
_MAX_FACTS = 2048
# Besides a write Transaction: what clears readOnly, and what ends or starts a transaction
# or checkpoints the WAL (COMMIT of a transaction that wrote, PRAGMA wal_checkpoint): work
# that cannot be undone and run again, so never run where the inline cut-off may stop it.
_WRITE_OPS = ("Vacuum", "JournalMode", "AutoCommit", "Checkpoint")


def _program_facts(ops: list[Any]) -> tuple[bool, bool]:
    """(writes nothing, no step of unbounded cost) for an EXPLAIN listing."""
    ro = not any((op[1] == "Transaction" and op[3]) or op[1] in _WRITE_OPS for op in ops)
    short = not any(op[1] in _FUNCTION_OPS and isinstance(op[5], str)
                    and op[5].split("(", 1)[0].lower() in _UNBOUNDED_STEPS for op in ops)
    return ro, short


class _Cursor(StorageCursor):
    @translates_itself  # reads attributes only: nothing of SQLite's can fail here
    def __init__(self, cur: sqlite3.Cursor, conn: _Connection,
                 conv: list[tuple[int, Callable[[Any], Any]]] | None = None,
                 statement: tuple[str, Sequence[Any]] = ("", ())) -> None:
        self._cur = cur
        self._conn = conn
        self._conv = conv
        self._statement = statement
        d = cur.description
        self.description = [(c[0], None) for c in d] if d else None
        self.rowcount = cur.rowcount
        self.lastrowid = cur.lastrowid

    @translates_itself
    def fetch(self, n: int) -> list[tuple[Any, ...]]:
        try:
            rows = self._cur.fetchmany(n)
        except MemoryError as e:
            raise _out_of_memory() from e
        except (sqlite3.OperationalError, sqlite3.DataError) as e:
            raise _leaving(self._conn._denied(e)) from e
        except ENGINE_ERRORS as e:
            raise engine_error(e) from e
        if self._conv:  # typed parameters selected back (sqlite_types.ResultTyper)
            return sqlite_types.convert_rows(rows, self._conv)
        return rows

    def declared_types(self) -> list[str | None]:
        width = len(self.description or ())
        sql, params = self._statement
        try:
            found = self._conn._typer.declared(sql, params, type_code) if sql else None
        except sqlite3.OperationalError as e:  # stopped: as a fetch would be
            raise self._conn._denied(e) from e
        return found if found is not None and len(found) == width else [None] * width

    @translates_itself
    def close(self) -> None:
        try:
            self._cur.close()
        except ENGINE_ERRORS as e:
            raise engine_error(e) from e


class _Done(StorageCursor):
    """A write that committed though its stop was reported: no rows, its count and rowid."""

    description = None

    def __init__(self, rowcount: int, lastrowid: int | None) -> None:
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    def fetch(self, n: int) -> list[tuple[Any, ...]]:
        return []

    def close(self) -> None:
        pass


class _Connection(StorageConnection):
    def __init__(self, path: Path, busy_timeout: float, mmap_bytes: int = 0,
                 max_value_bytes: int = DEFAULT_MAX_VALUE) -> None:
        self._db = sqlite3.connect(
            # No busy handler: a blocked writer must not hold a worker thread while it waits
            # (the session retries without one; see Busy).
            path, timeout=0, isolation_level=None, check_same_thread=False,
            detect_types=sqlite3.PARSE_DECLTYPES | sqlite3.PARSE_COLNAMES,
        )
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        if mmap_bytes:
            # Pages of the data file are read in place from the OS page cache (shared by
            # every connection) instead of copied in by a read() per page: fewer system
            # calls per lookup once the table outgrows the connection's own page cache.
            self._db.execute(f"PRAGMA mmap_size={int(mmap_bytes)}")
        # One value (and one stored row) at most this big: a zeroblob() or repeat() of a
        # gigabyte is refused ("string or blob too big") instead of allocated.
        self._db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_value_bytes)
        sqlite_types.install(self._db)
        self._typer = sqlite_types.ResultTyper(self._db, self._fresh_schema)
        self.policy = Policy("readonly")
        self._query_only = False
        self._schema_changed = False  # an admin statement prepared here changes the schema
        self._schema_seen: int | None = None  # schema_version of the last _fresh_schema
        self.set_policy(self.policy)
        self._stop: str | None = None  # why the progress handler stops the running statement
        self._inline_until = 0.0  # monotonic cut-off of a call run in the event loop (0: none)
        self._lost = False  # an interrupted write took the open transaction with it
        self._length = 0  # the usual SQLITE_LIMIT_LENGTH while a call runs in the event loop
        self._db.set_progress_handler(self._progress, PROGRESS_STEPS)

    # -- stopping a running statement (cancel, statement timeout, event-loop cut-off) --
    def _progress(self) -> int:
        # Called by SQLite in the thread running the statement; non-zero stops it (it
        # fails with "interrupted" and is undone).  Unlike sqlite3_interrupt(), this stops
        # only what runs while _stop is set, never a statement started after arm().
        if self._stop is not None:
            return 1
        if self._inline_until and time.monotonic() > self._inline_until:
            self._stop = _INLINE
            return 1
        return 0

    @translates_itself
    def arm(self, inline_seconds: float = 0.0) -> None:
        self._stop = None
        limit = sqlite3.SQLITE_LIMIT_LENGTH
        try:
            if inline_seconds:
                self._inline_until = time.monotonic() + inline_seconds
                self._length = self._db.getlimit(limit)
                self._db.setlimit(limit, min(self._length, INLINE_MAX_LENGTH))
                self._db.set_progress_handler(self._progress, INLINE_PROGRESS_STEPS)
            else:
                self._inline_until = 0.0
                if self._length:
                    self._db.setlimit(limit, self._length)
                    self._db.set_progress_handler(self._progress, PROGRESS_STEPS)
                    self._length = 0
        except ENGINE_ERRORS as e:
            raise engine_error(e) from e

    def interrupt(self) -> None:
        self._stop = _STOP

    @translates_itself  # _facts answers False where SQLite fails
    def read_only(self, sql: str, params: Sequence[Any]) -> bool:
        return self._facts(sql, params)[0]

    @translates_itself
    def inlinable(self, sql: str, params: Sequence[Any]) -> bool:
        return self._facts(sql, params)[1]

    def _facts(self, sql: str, params: Sequence[Any]) -> tuple[bool, bool]:
        # EXPLAIN tells, as SQLite's own sqlite3_stmt_readonly() does (which Python does not
        # offer): a write Transaction opcode, VACUUM or a journal mode change; and which
        # functions the program calls, views and triggers included.
        facts = _facts.get(sql)
        if facts is None:
            try:
                self._fresh_schema()
                ops = self._db.execute("EXPLAIN " + sql, _big_ints(params)).fetchall()
            except (sqlite3.Error, ValueError):
                return False, False  # it fails in a thread as well, with the real error
            facts = _program_facts(ops)
            if len(_facts) >= _MAX_FACTS:
                _facts.clear()
            _facts[sql] = facts
        return facts

    def _stopped(self, was_txn: bool) -> Exception:
        why, self._stop = self._stop, None
        if why == _INLINE:
            return TooLong()
        if was_txn and not self._db.in_transaction:
            self._lost = True  # COMMIT must not report success for what SQLite undid
        return Interrupted("statement interrupted")

    def _check_lost(self, committing: bool = False) -> None:
        if self._lost:
            self._lost = not committing  # COMMIT reports it and ends the transaction
            raise StorageError(
                "the transaction was rolled back" + (", not committed" if committing else "")
                + ": a statement in it was cancelled (a cancel, a statement timeout or the "
                "session's end) while it was writing", "25P02",
                "run the transaction again" if committing
                else "roll back, then run the transaction again")

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        if policy.reads_only != self._query_only:
            # query_only makes SQLite refuse the write lock itself, so a session that may
            # not write cannot hold writers off with BEGIN IMMEDIATE/EXCLUSIVE either.
            self._db.set_authorizer(None)  # the pragma is locked for user SQL
            self._db.execute(f"PRAGMA query_only={int(policy.reads_only)}")
            self._query_only = policy.reads_only
        # Installing an authorizer also expires every cached prepared statement, so each
        # is authorized again under the new policy when it next runs.
        self._db.set_authorizer(self._authorizer(policy))

    def set_in_method(self, on: bool) -> None:
        self.policy.in_method = on
        if on:
            # SQLite authorizes a statement when it is prepared: a COMMIT cached from
            # before the method must be prepared (and refused) again.
            self._db.set_authorizer(self._authorizer(self.policy))

    def _authorizer(self, policy: Policy) -> Any:
        """The policy's authorizer; for admins (the only ones who may change the schema)
        it also forgets what EXPLAIN said of each statement when one is prepared: a view
        or trigger redefined to call LIKE makes a statement that was short unbounded."""
        check = authorizer_for(policy)
        if not policy.is_admin:
            return check

        def authorize(action: int, a1: str | None, a2: str | None, db: str | None,
                      source: str | None) -> int:
            rc: int = check(action, a1, a2, db, source)
            if action in _SCHEMA_ACTIONS and rc == sqlite3.SQLITE_OK:
                _facts.clear()
                self._schema_changed = True  # cleared again once it ran: see execute
            return rc
        return authorize

    def _fresh_schema(self) -> None:
        """Before an EXPLAIN: make its listing follow the schema as it is now.

        An EXPLAIN has no schema check of its own, so the one Python's statement cache
        keeps would go on listing the program compiled before another connection changed
        the schema: the grant check passed an INSERT whose new trigger replaces rows, and
        listing a dropped trigger's program crashed the server (SIGSEGV).  A changed
        schema_version makes this connection reload the schema (a statement that reads
        it checks the version) and recompile its cached statements (installing the
        authorizer again expires them).
        """
        version = self._db.execute("PRAGMA schema_version").fetchone()[0]
        if version != self._schema_seen:
            self._db.execute("SELECT 1 FROM sqlite_schema WHERE 0").fetchall()
            self._db.set_authorizer(self._authorizer(self.policy))
            self._schema_seen = version

    def _forget_facts(self) -> None:
        if self._schema_changed:
            self._schema_changed = False
            _facts.clear()  # another session may have read the old schema meanwhile

    def _denied(self, e: sqlite3.DatabaseError, was_txn: bool = False) -> Exception:
        code = getattr(e, "sqlite_errorcode", 0)
        if self._stop is not None and code == sqlite3.SQLITE_INTERRUPT:
            return self._stopped(was_txn)
        if self._inline_until and code == _TOOBIG:
            return TooLong()  # a value over the event loop's size: a thread may build it
        if getattr(e, "sqlite_errorcode", 0) == _BUSY_SNAPSHOT:
            # Waiting cannot help: this transaction's snapshot predates another commit.
            return StorageError(
                "could not serialize access: another session committed a write after this "
                "transaction started reading", "40001",
                "roll back and run the transaction again")
        if isinstance(e, sqlite3.OperationalError) and _is_busy(e):
            return Busy(str(e))
        if self._query_only and getattr(e, "sqlite_errorcode", 0) & 0xFF == _READONLY:
            return self.policy.refusal("taking the write lock (BEGIN IMMEDIATE or EXCLUSIVE) "
                                       "or writing: the group may only read")
        typed = sqlite_types.type_error(e)
        if typed is not None:  # a value its column's declared type refuses
            return StorageError(*typed)
        if self.policy.last_denied:  # the authorizer refused: say what, not SQLite's wording
            what, self.policy.last_denied = self.policy.last_denied, ""
            return PermissionDenied(f"permission denied for group {self.policy.group!r}: {what}")
        return e

    @property
    def in_transaction(self) -> bool:
        return self._db.in_transaction or self._lost

    @translates_itself
    def begin(self) -> None:
        self._check_lost()
        if not self._db.in_transaction:
            try:
                self._db.execute("BEGIN")
            except sqlite3.OperationalError as e:
                # a locked database becomes Busy: retried
                raise _leaving(self._denied(e)) from e
            except ENGINE_ERRORS as e:
                raise engine_error(e) from e
            self.note_transaction()

    def atomic_many(self, sql: str, seq: Sequence[Sequence[Any]]) -> int:
        """executemany outside a transaction: all rows or none."""
        self._db.execute("BEGIN")
        try:
            n = self.executemany(sql, seq)
            self.commit()
        except BaseException:
            if self._db.in_transaction:  # a stopped write has been rolled back already
                self._db.execute("ROLLBACK")
            self._lost = False
            raise
        return n

    def _check_program(self, sql: str, params: Sequence[Any]) -> None:
        """For a per-table group, refuse a statement whose compiled program deletes or
        updates rows the group may not (REPLACE, foreign-key actions: see access.py)."""
        try:
            self._fresh_schema()
            ops = self._db.execute("EXPLAIN " + sql, params).fetchall()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and _is_explain(sql) \
                    and not self.policy.last_denied:
                return  # already an EXPLAIN: it runs nothing
            raise
        check_program(self.policy, program_needs(ops, _PREUPDATE_HOOK, self._table_of_root))

    def _table_of_root(self, page: int) -> str | None:
        row = self._db.execute("SELECT name FROM sqlite_schema WHERE rootpage = ? AND "
                               "type = 'table'", (page,)).fetchone()
        return row[0] if row else None

    @translates_itself
    def execute(self, sql: str, params: Sequence[Any]) -> StorageCursor:
        self.policy.last_denied = ""
        if self._lost:
            self._check_lost()
        was_txn = self._db.in_transaction
        sql = sqlite_types.rewrite_ddl(sql)
        changes = self._db.total_changes
        try:
            try:
                if self.policy.per_table:
                    self._check_program(sql, _big_ints(params))
                elif _is_explain(sql):
                    self._fresh_schema()  # a cached EXPLAIN never notices a change by itself
                plan = self._typer.plan(sql, params)  # before the statement runs: ResultTyper
                raw = self._db.execute(sql, big := _big_ints(params))
                cur = _Cursor(raw, self, None if plan is None
                              else sqlite_types.converters_for(plan, raw.description), (sql, big))
            except sqlite3.DatabaseError as e:
                if self._committed_before_stop(e, was_txn, changes):
                    return self._done(changes)
                raise _leaving(self._denied(e, was_txn)) from e
        except ENGINE_ERRORS as e:  # besides the above: a Warning, or _done() failing
            raise engine_error(e) from e
        except MemoryError as e:
            raise _out_of_memory() from e
        if self._schema_changed:
            self._forget_facts()
        if self.txn_since is None or self.write_since is None:
            self.note_transaction(sql, self._db.total_changes != changes)
        elif not self._db.in_transaction:  # a COMMIT or ROLLBACK sent as SQL
            self.note_transaction()
        return cur

    def _committed_before_stop(self, e: sqlite3.DatabaseError, was_txn: bool,
                               changes: int) -> bool:
        """A stop (cancel, timeout, cut-off) reported by an autocommit write after its own
        commit: SQLite's last progress check comes after the Halt that commits."""
        return (self._stop is not None and getattr(e, "sqlite_errorcode", 0)
                == sqlite3.SQLITE_INTERRUPT and not was_txn and not self._db.in_transaction
                and self._db.total_changes != changes)

    def _done(self, changes: int) -> StorageCursor:
        """The statement finished and committed: report it so (never run it again)."""
        self._stop = None
        self._forget_facts()
        rowid = self._db.execute("SELECT last_insert_rowid()").fetchone()[0]
        return _Done(self._db.total_changes - changes, rowid)

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> int:
        self.policy.last_denied = ""
        self._check_lost()
        was_txn = self._db.in_transaction
        sql = sqlite_types.rewrite_ddl(sql)
        try:
            if self.policy.per_table and seq:
                self._check_program(sql, _big_ints(seq[0]))
            cur = self._db.executemany(sql, (_big_ints(p) for p in seq))
        except sqlite3.DatabaseError as e:
            raise self._denied(e, was_txn) from e
        self._forget_facts()
        n = cur.rowcount
        cur.close()
        self.note_transaction(sql, n > 0)
        return n

    def commit(self) -> None:
        self._check_lost(committing=True)
        if self._db.in_transaction:
            try:
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as e:
                raise self._denied(e) from e
            self.note_transaction()

    def rollback(self) -> None:
        self._lost = False
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
            self.note_transaction()

    def savepoint(self, name: str) -> None:
        self._db.execute(f'SAVEPOINT "{name}"')

    def release(self, name: str, undo: bool) -> None:
        if undo:
            self._db.execute(f'ROLLBACK TO "{name}"')
        self._db.execute(f'RELEASE "{name}"')

    def close(self) -> None:
        self._db.close()


class SQLiteBackend(Backend):
    name = "sqlite"
    inline_calls = True

    def __init__(self, data_dir: Path, busy_timeout: float = 5.0, mmap_bytes: int = 0,
                 limits: LimitsSettings | None = None) -> None:
        self.data_dir = data_dir
        self.mmap_bytes = mmap_bytes
        self.max_value_bytes = limits.max_value_bytes if limits else DEFAULT_MAX_VALUE
        self.data_path = data_dir / DATA_FILE
        self.system_path = data_dir / SYSTEM_FILE
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._grant_changes = 0  # changes made through this process's own connection
        self._data_version = (0, -1.0)  # (PRAGMA data_version, when read)
        for f in (self.system_path, self.data_path):
            _create_private(f)
        self._sys = self._open_system()
        db = sqlite3.connect(self.data_path)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            if limits and limits.max_sqlite_memory_mb:
                # Process-wide: the one bound on what a statement's rows and sorts allocate
                # inside SQLite (a row of two thousand maximal values, say).
                db.execute(f"PRAGMA hard_heap_limit={limits.max_sqlite_memory_mb << 20}")
        finally:
            db.close()

    @classmethod
    def create(cls, data_dir: Path) -> SQLiteBackend:
        if not data_dir.is_dir():
            data_dir.mkdir(parents=True)
            data_dir.chmod(0o700)
        return cls(data_dir)

    def _open_system(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.system_path, isolation_level=None, check_same_thread=False,
                             timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, grp TEXT NOT NULL, "
            "salt BLOB NOT NULL, stored_key BLOB NOT NULL, server_key BLOB NOT NULL, "
            "iterations INTEGER NOT NULL, created TEXT NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS groups (name TEXT PRIMARY KEY)")
        db.execute("CREATE TABLE IF NOT EXISTS grants (grp TEXT NOT NULL REFERENCES groups(name),"
                   " tbl TEXT NOT NULL, privileges TEXT NOT NULL, PRIMARY KEY (grp, tbl))")
        db.execute("CREATE TABLE IF NOT EXISTS builtin_groups (name TEXT PRIMARY KEY)")
        db.executemany("INSERT OR IGNORE INTO builtin_groups VALUES (?)",
                       [(g,) for g in BUILTIN_GROUPS])
        return db

    def check(self) -> None:
        """At server start: warn about DECIMAL columns whose values SQLite already rounded."""
        db = sqlite3.connect(f"file:{self.data_path}?mode=ro", uri=True)  # creates nothing
        try:
            found = sqlite_types.rounded_decimal_columns(db, count=False)
        finally:
            db.close()
        for table, column, _ in found:
            log.warning("column %s.%s (DECIMAL/NUMERIC, made before exact decimals) holds "
                        "values SQLite stored as numbers, possibly rounded: see casemate "
                        "check DIR and docs/types.md", table, column)

    def connect(self) -> StorageConnection:
        return _Connection(self.data_path, self.busy_timeout, self.mmap_bytes,
                           self.max_value_bytes)

    def _row(self, r: tuple[Any, ...]) -> UserRecord:
        return UserRecord(r[0], r[1], bytes(r[2]), bytes(r[3]), bytes(r[4]), r[5], r[6])

    _COLS = "name, grp, salt, stored_key, server_key, iterations, created"

    def get_user(self, name: str) -> UserRecord | None:
        with self._lock:
            r = self._sys.execute(f"SELECT {self._COLS} FROM users WHERE name=?", (name,)
                                  ).fetchone()
        return self._row(r) if r else None

    def add_user(self, record: UserRecord) -> None:
        created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with self._lock:
            try:
                self._sys.execute(
                    f"INSERT INTO users ({self._COLS}) VALUES (?,?,?,?,?,?,?)",
                    (record.name, record.group, record.salt, record.stored_key,
                     record.server_key, record.iterations, created))
            except sqlite3.IntegrityError:
                raise KeyError(record.name) from None

    def update_user(self, record: UserRecord) -> None:
        with self._lock:
            self._grant_changes += 1  # open sessions re-check their user (server/rights.py)
            cur = self._sys.execute(
                "UPDATE users SET grp=?, salt=?, stored_key=?, server_key=?, iterations=? "
                "WHERE name=?", (record.group, record.salt, record.stored_key,
                                 record.server_key, record.iterations, record.name))
        if cur.rowcount == 0:
            raise KeyError(record.name)

    def remove_user(self, name: str) -> None:
        with self._lock:
            self._grant_changes += 1
            cur = self._sys.execute("DELETE FROM users WHERE name=?", (name,))
        if cur.rowcount == 0:
            raise KeyError(name)

    def list_users(self) -> list[UserRecord]:
        with self._lock:
            rows = self._sys.execute(f"SELECT {self._COLS} FROM users ORDER BY name").fetchall()
        return [self._row(r) for r in rows]

    def add_group(self, name: str) -> None:
        if name in BUILTIN_GROUPS:
            raise KeyError(name)
        with self._lock:
            self._grant_changes += 1
            try:
                self._sys.execute("INSERT INTO groups (name) VALUES (?)", (name,))
            except sqlite3.IntegrityError:
                raise KeyError(name) from None

    def remove_group(self, name: str) -> None:
        with self._lock:
            if self._sys.execute("SELECT 1 FROM users WHERE grp=?", (name,)).fetchone():
                raise ValueError(f"group {name!r} still has users")
            self._grant_changes += 1
            self._sys.execute("DELETE FROM grants WHERE grp=?", (name,))
            if self._sys.execute("DELETE FROM groups WHERE name=?", (name,)).rowcount == 0:
                raise KeyError(name)

    def list_groups(self) -> dict[str, dict[str, frozenset[str]]]:
        out: dict[str, dict[str, frozenset[str]]] = {g: {} for g in BUILTIN_GROUPS}
        with self._lock:
            for (g,) in self._sys.execute("SELECT name FROM groups ORDER BY name"):
                out[g] = {}
            for g, t, privs in self._sys.execute("SELECT grp, tbl, privileges FROM grants"):
                out.setdefault(g, {})[t] = frozenset(privs.split(","))
        return out

    def grants_for(self, group: str) -> dict[str, frozenset[str]]:
        with self._lock:
            rows = self._sys.execute("SELECT tbl, privileges FROM grants WHERE grp=?", (group,))
            return {t: frozenset(p.split(",")) for t, p in rows}

    def grants_version(self) -> tuple[int, int]:
        # data_version moves when another connection (another process: the casemate CLI)
        # commits to system.sqlite; our own changes are counted here, at once.  Servers ask
        # before every statement: the pragma (~8 us) is read at most once a millisecond.
        now = time.monotonic()
        version, read_at = self._data_version
        if now - read_at >= DATA_VERSION_EVERY:
            with self._lock:
                version = self._sys.execute("PRAGMA data_version").fetchone()[0]
            self._data_version = (version, now)
        return version, self._grant_changes

    def set_grants(self, group: str, table: str, privileges: frozenset[str]) -> None:
        with self._lock:
            self._grant_changes += 1
            if group not in BUILTIN_GROUPS and not self._sys.execute(
                    "SELECT 1 FROM groups WHERE name=?", (group,)).fetchone():
                raise KeyError(group)
            if privileges:
                self._sys.execute("INSERT OR REPLACE INTO grants VALUES (?,?,?)",
                                  (group, table.lower(), ",".join(sorted(privileges))))
            else:
                self._sys.execute("DELETE FROM grants WHERE grp=? AND tbl=?",
                                  (group, table.lower()))

    def group_exists(self, name: str) -> bool:
        return name in self.list_groups()

    def data_size(self) -> int:
        return sum(p.stat().st_size for p in self.data_dir.glob(DATA_FILE + "*"))

    def integrity_check(self) -> str:
        db = sqlite3.connect(self.data_path)
        sqlite_types.install(db)  # CHECK constraints and collations name its functions
        try:
            rows = db.execute("PRAGMA integrity_check").fetchall()
        finally:
            db.close()
        return "; ".join(r[0] for r in rows)

    def close(self) -> None:
        with self._lock:
            self._sys.close()


# SQLite's exceptions leave these classes as StorageError (sqlite_errors.py).
engine_boundary(_Cursor, _Connection, SQLiteBackend)
