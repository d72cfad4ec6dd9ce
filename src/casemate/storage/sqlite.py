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

import logging
import os
import re
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..settings import LimitsSettings
from .access import PermissionDenied, Policy
from .base import (
    _READS,
    TYPE_NAMES,
    Backend,
    Busy,
    Interrupted,
    LaneRead,
    StorageConnection,
    StorageCursor,
    StorageError,
    TooLong,
    UserRecord,
)
from .sqlite_cursor import _Cursor, _Done, _leaving, _out_of_memory, _Packed, packed_failure
from .sqlite_ddl import rewrite_ddl, type_error
from .sqlite_errors import ENGINE_ERRORS, engine_boundary, engine_error, translates_itself
from .sqlite_programs import Programs, is_explain
from .sqlite_rows import (
    CONVERTERS,
    ROW_PATH,
    open_compiled,
    open_statement,
    statement_cache,
    usable_on,
)
from .sqlite_system import UserStore
from .sqlite_typer import TYPED_PARAMETER_TYPES, ResultTyper, converters_for, has_typed_result
from .sqlite_types import big_ints, install, register_types, rounded_decimal_columns

__all__ = ["SQLiteBackend", "DATA_FILE", "SYSTEM_FILE"]

log = logging.getLogger("casemate.storage.sqlite")

DATA_FILE = "data.sqlite"
SYSTEM_FILE = "system.sqlite"

register_types()

_BUSY_SNAPSHOT = 517  # SQLITE_BUSY_SNAPSHOT (not exported by Python 3.11's sqlite3)
_READONLY = 8  # SQLITE_READONLY: what query_only answers to a write lock
DEFAULT_MAX_VALUE = 16 * 1024 * 1024  # limits.max_value_bytes
# Statement texts (each under 4 KiB: the cost model's) whose read_now facts a connection keeps.
_LANE_TEXTS = 256
_TYPE_NAME = TYPE_NAMES.get  # a Python type's description code; None for None
# A result read through ResultTyper's plan when a parameter has one of these types.
_TYPED_PARAMS = TYPED_PARAMETER_TYPES


def _is_busy(e: sqlite3.OperationalError) -> bool:
    return getattr(e, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _create_private(path: Path) -> None:
    """Create an empty database file with mode 0600 if missing: SQLite would make it 0644,
    and gives its -wal and -shm files the main file's mode."""
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


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
_TOOBIG = 18  # SQLITE_TOOBIG
# A statement that ends the transaction by committing it (past leading comments).
_ENDS_TXN = re.compile(r"(?:\s|--[^\n]*\n|/\*.*?\*/)*(?:COMMIT|END)\b", re.IGNORECASE | re.DOTALL)
_INLINE = "inline"  # _Connection._stop: the event-loop cut-off passed
_STOP = "stop"      # _Connection._stop: interrupt() was called


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
        install(self._db)
        self._programs = Programs(self._db)  # what EXPLAIN says (sqlite_programs.py)
        self._typer = ResultTyper(self._db, self._programs.fresh_schema)
        self.policy = Policy("readonly")
        self._query_only = False
        self.set_policy(self.policy)
        self._stop: str | None = None  # why the progress handler stops the running statement
        self._inline_until = 0.0  # monotonic cut-off of a call run in the event loop (0: none)
        self._lost = False  # an interrupted write took the open transaction with it
        self._length = 0  # the usual SQLITE_LIMIT_LENGTH while a call runs in the event loop
        self._db.set_progress_handler(self._progress, PROGRESS_STEPS)
        # Read-only statements' rows go from SQLite to msgpack in compiled code where it
        # was built (sqlite_rows.py); all else, and everywhere else, through sqlite3.
        self._compiled = usable_on(self._db, str(path))
        self._stmts = statement_cache() if self._compiled else None
        # read_now's facts of a statement's text: whether the lane may take it (no EXPLAIN,
        # no DDL rewrite, no decimal_* call) and whether it only reads (note_transaction).
        self._lane: dict[str, tuple[bool, bool]] = {}

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
                if not self._length:  # else still in place from the last call (disarm)
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

    @translates_itself  # sets two attributes: nothing of SQLite's runs
    def disarm(self) -> None:
        # The inline value limit and progress interval stay for the next call in the event
        # loop (most calls are: five fewer calls into SQLite per request); arm() puts the
        # usual ones back before a call runs in a worker thread, the only other way a
        # statement runs (server/runner.py).
        self._stop = None
        self._inline_until = 0.0

    def interrupt(self) -> None:
        self._stop = _STOP

    @translates_itself  # Programs.facts answers False where SQLite fails
    def read_only(self, sql: str, params: Sequence[Any]) -> bool:
        return self._programs.facts(sql, params)[0]

    @translates_itself
    def inlinable(self, sql: str, params: Sequence[Any]) -> bool:
        return self._programs.facts(sql, params)[1]

    @translates_itself
    def may_cut(self, sql: str, params: Sequence[Any], learn: bool = True) -> bool | None:
        facts = self._programs.facts(sql, params, learn)
        return None if facts is None else facts == (True, True)  # (one lookup, not two)

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
        self._programs.authorize(policy)  # expires every cached prepared statement

    def set_in_method(self, on: bool) -> None:
        self.policy.in_method = on
        if on:
            # SQLite authorizes a statement when it is prepared: a COMMIT cached from
            # before the method must be prepared (and refused) again.
            self._programs.authorize(self.policy)

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
        typed = type_error(e)
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

    @translates_itself
    def execute(self, sql: str, params: Sequence[Any]) -> StorageCursor:
        self.policy.last_denied = ""
        if self._lost:
            self._check_lost()
        was_txn = self._db.in_transaction
        sql = rewrite_ddl(sql)
        changes = self._db.total_changes
        try:
            try:
                if self.policy.per_table:
                    self._programs.check(sql, big_ints(params))
                elif is_explain(sql):
                    self._programs.fresh_schema()  # a cached EXPLAIN never notices a change by itself
                plan = self._typer.plan(sql, params)  # before the statement runs: ResultTyper
                big = big_ints(params)
                st = (open_statement(self._db, self._stmts, sql, big)  # compiled path?
                      if plan is None and self._stmts is not None else None)
                if st is not None:
                    cur: StorageCursor = _Packed(st, self, (sql, big))
                else:
                    raw = self._db.execute(sql, big)
                    cur = _Cursor(raw, self, None if plan is None
                                  else converters_for(plan, raw.description), (sql, big))
            except sqlite3.DatabaseError as e:
                if self._committed_before_stop(e, was_txn, changes):
                    return self._done()
                if was_txn and _ENDS_TXN.match(sql) and self._committed_anyway(e):
                    self.note_transaction()
                    return _Done(0, None)  # COMMIT/END sent as SQL: its stop came too late
                raise _leaving(self._denied(e, was_txn)) from e
        except ENGINE_ERRORS as e:  # besides the above: a Warning, or _done() failing
            raise engine_error(e) from e
        except MemoryError as e:
            raise _out_of_memory() from e
        if self._programs.schema_changed:
            self._programs.forget()
        if self.txn_since is None or self.write_since is None:
            self.note_transaction(sql, self._db.total_changes != changes)
        elif not self._db.in_transaction:  # a COMMIT or ROLLBACK sent as SQL
            self.note_transaction()
        return cur

    @translates_itself
    def read_now(self, sql: str, params: Sequence[Any], max_rows: int, max_bytes: int
                 ) -> LaneRead | None:
        # execute() then pack() for the statements the compiled row path takes with
        # nothing else to do, in one call: what execute() works out from the statement's
        # text (EXPLAIN, a DDL rewrite, a typed result, whether it only reads) is kept per
        # text, what depends on the parameters is checked on each call.  Declines (None,
        # nothing run) the rest: per-table groups, a lost transaction, parameters that a
        # typed result or an error of execute() would follow.  Runs between arm() and
        # disarm(): the column types asked from the schema too.
        facts = self._lane.get(sql)
        if facts is None:
            facts = self._lane_facts(sql)
        if not facts[0] or self._lost or self.policy.per_table:
            return None
        for p in params:  # ResultTyper.plan's and big_ints' checks, in one pass
            t = type(p)
            if t is int:
                if not -9223372036854775808 <= p <= 9223372036854775807:
                    return None  # execute() reports it
            elif t is float:
                if p != p:
                    return None  # a NaN: execute() reports it
            elif t in _TYPED_PARAMS:
                return None  # a typed result: execute() reads it through its plan
        self.policy.last_denied = ""
        db = self._db
        was_txn = db.in_transaction
        try:
            try:
                st = open_compiled(db, self._stmts, sql,
                                   params if type(params) is tuple else tuple(params),
                                   CONVERTERS)
            except sqlite3.DatabaseError as e:
                raise _leaving(self._denied(e, was_txn)) from e
        except ENGINE_ERRORS as e:
            raise engine_error(e) from e
        except MemoryError as e:
            raise _out_of_memory() from e
        if st is None:
            return None  # (nothing run: execute() runs it through sqlite3)
        lastrowid = st.lastrowid
        try:
            try:
                first = st.first_types()
                body, n, more = st.pack(max_rows, max_bytes)
            except Exception as e:
                raise packed_failure(self, e) from e
            # (first_types gives int, float, str, bytes or None: TYPE_NAMES has them all)
            types = list(map(_TYPE_NAME, first))
            cur: Any = st
            if more or not types or None in types:
                cur = _Packed(st, self, (sql, params))
                if not types or None in types:  # NULLs or no row: the declared types
                    declared = cur.declared_types()
                    types = declared if not types else [
                        t if t is not None else d for t, d in zip(types, declared, strict=False)]
        except BaseException:
            st.close()
            raise
        if self._programs.schema_changed:
            self._programs.forget()
        if db.in_transaction:  # note_transaction(sql), without the call
            if self.txn_since is None:
                self.txn_since = time.time()
            if self.write_since is None and not facts[1]:
                self.write_since = time.time()
        else:
            self.txn_since = self.write_since = None
        return cur, st.description, types, body, n, more, lastrowid

    def _lane_facts(self, sql: str) -> tuple[bool, bool]:
        facts = (self._stmts is not None and not is_explain(sql) and rewrite_ddl(sql) is sql
                 and not has_typed_result(sql), bool(_READS.match(sql)))
        if len(self._lane) >= _LANE_TEXTS:
            self._lane.clear()
        self._lane[sql] = facts
        return facts

    def _committed_before_stop(self, e: sqlite3.DatabaseError, was_txn: bool,
                               changes: int) -> bool:
        """A stop (cancel, timeout, cut-off) reported by an autocommit write after its own
        commit: SQLite's last progress check comes after the Halt that commits."""
        return (self._stop is not None and getattr(e, "sqlite_errorcode", 0)
                == sqlite3.SQLITE_INTERRUPT and not was_txn and not self._db.in_transaction
                and self._db.total_changes != changes)

    def _committed_anyway(self, e: sqlite3.DatabaseError) -> bool:
        """A stop reported by a COMMIT: SQLite's only progress check in a COMMIT comes after
        the Halt that commits, so no transaction left means it committed (a COMMIT that
        failed, e.g. busy, leaves the transaction open).  The stop is spent."""
        if (self._stop is not None and getattr(e, "sqlite_errorcode", 0)
                == sqlite3.SQLITE_INTERRUPT and not self._db.in_transaction):
            self._stop = None
            return True
        return False

    def _done(self) -> StorageCursor:
        """The statement finished and committed: report it so (never run it again)."""
        self._stop = None
        self._programs.forget()
        # changes(): the rows of the statement itself, as its cursor would say (trigger
        # rows are counted by total_changes only).
        count, rowid = self._db.execute("SELECT changes(), last_insert_rowid()").fetchone()
        return _Done(count, rowid)

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> int:
        self.policy.last_denied = ""
        self._check_lost()
        was_txn = self._db.in_transaction
        sql = rewrite_ddl(sql)
        try:
            if self.policy.per_table and seq:
                self._programs.check(sql, big_ints(seq[0]))
            cur = self._db.executemany(sql, (big_ints(p) for p in seq))
        except sqlite3.DatabaseError as e:
            raise self._denied(e, was_txn) from e
        self._programs.forget()
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
                if not self._committed_anyway(e):
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
        if self._stmts is not None:
            self._stmts.close()
        self._db.close()


class SQLiteBackend(Backend):
    name = "sqlite"
    inline_calls = True
    row_path = ROW_PATH

    def __init__(self, data_dir: Path, busy_timeout: float = 5.0, mmap_bytes: int = 0,
                 limits: LimitsSettings | None = None) -> None:
        self.data_dir = data_dir
        self.mmap_bytes = mmap_bytes
        self.max_value_bytes = limits.max_value_bytes if limits else DEFAULT_MAX_VALUE
        self.data_path = data_dir / DATA_FILE
        self.system_path = data_dir / SYSTEM_FILE
        self.busy_timeout = busy_timeout
        for f in (self.system_path, self.data_path):
            _create_private(f)
        self._users = UserStore(self.system_path)  # users, groups, grants (sqlite_system.py)
        # Asked before every request (server/rights.py): the store's own method, not a call
        # through ours (which stays, for the interface and the pure reading).
        self.grants_version = self._users.grants_version  # type: ignore[method-assign]
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

    def check(self) -> None:
        """At server start: warn about DECIMAL columns whose values SQLite already rounded."""
        db = sqlite3.connect(f"file:{self.data_path}?mode=ro", uri=True)  # creates nothing
        try:
            found = rounded_decimal_columns(db, count=False)
        finally:
            db.close()
        for table, column, _ in found:
            log.warning("column %s.%s (DECIMAL/NUMERIC, made before exact decimals) holds "
                        "values SQLite stored as numbers, possibly rounded: see casemate "
                        "check DIR and docs/types.md", table, column)

    def connect(self) -> StorageConnection:
        return _Connection(self.data_path, self.busy_timeout, self.mmap_bytes,
                           self.max_value_bytes)

    # -- users, groups and grants: the store translates SQLite's exceptions itself --------
    @translates_itself
    def get_user(self, name: str) -> UserRecord | None:
        return self._users.get_user(name)

    @translates_itself
    def add_user(self, record: UserRecord) -> None:
        self._users.add_user(record)

    @translates_itself
    def update_user(self, record: UserRecord) -> None:
        self._users.update_user(record)

    @translates_itself
    def remove_user(self, name: str) -> None:
        self._users.remove_user(name)

    @translates_itself
    def list_users(self) -> list[UserRecord]:
        return self._users.list_users()

    @translates_itself
    def add_group(self, name: str) -> None:
        self._users.add_group(name)

    @translates_itself
    def remove_group(self, name: str) -> None:
        self._users.remove_group(name)

    @translates_itself
    def list_groups(self) -> dict[str, dict[str, frozenset[str]]]:
        return self._users.list_groups()

    @translates_itself
    def grants_for(self, group: str) -> dict[str, frozenset[str]]:
        return self._users.grants_for(group)

    @translates_itself  # asked before every statement (server/rights.py)
    def grants_version(self) -> tuple[int, int]:
        return self._users.grants_version()

    @translates_itself
    def set_grants(self, group: str, table: str, privileges: frozenset[str]) -> None:
        self._users.set_grants(group, table, privileges)

    def group_exists(self, name: str) -> bool:
        return name in self.list_groups()

    def data_size(self) -> int:
        return sum(p.stat().st_size for p in self.data_dir.glob(DATA_FILE + "*"))

    def integrity_check(self) -> str:
        db = sqlite3.connect(self.data_path)
        install(db)  # CHECK constraints and collations name its functions
        try:
            rows = db.execute("PRAGMA integrity_check").fetchall()
        finally:
            db.close()
        return "; ".join(r[0] for r in rows)

    def close(self) -> None:
        self._users.close()


# SQLite's exceptions leave these classes as StorageError (sqlite_errors.py).
engine_boundary(_Connection, SQLiteBackend)  # _Cursor: sqlite_cursor.py
