"""The storage backend interface: everything the server stores goes through it.

A backend stores the data and the users.  The server calls these methods from
worker threads (they may block), or, for a backend whose ``inline_calls`` is
true (SQLite), directly from the event loop when a call has been seen to be
short (``casemate.server.inline``); one :class:`StorageConnection` is used by
one session at a time.  SQLite implements it today; the interface leaves room for
PostgreSQL (transactions map one to one, users live in the same database).
"""

from __future__ import annotations

import abc
import datetime as dt
import re
import time
import uuid
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

from ..protocol.codec import Json
from .access import Policy

__all__ = ["BUILTIN_GROUPS", "Busy", "Interrupted", "TooLong", "StorageError", "UserRecord", "StorageCursor",
           "LaneRead", "Packed", "StorageConnection", "Backend", "TYPE_NAMES", "type_code"]

# The type codes of cursor.description (docs/protocol.md, docs/types.md), by Python type.
TYPE_NAMES = {int: "integer", float: "float", str: "text", bytes: "bytes", bool: "bool",
              Decimal: "decimal", dt.date: "date", dt.time: "time", dt.datetime: "datetime",
              uuid.UUID: "uuid", Json: "json", dict: "json"}


def type_code(v: Any) -> str | None:
    """The description type code of one value; None for NULL."""
    return None if v is None else TYPE_NAMES.get(type(v), type(v).__name__)


class StorageError(Exception):
    """An error from a backend, already carrying its stable code (SQLSTATE style).

    Backends other than SQLite translate their driver's errors into this (the
    PostgreSQL backend passes PostgreSQL's own SQLSTATE through), so nothing
    above the storage layer knows the driver.
    """

    def __init__(self, message: str, code: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.hint = message, code, hint


class Busy(Exception):
    """Another session holds the write lock; the statement changed nothing and may be retried.

    Backends raise it at once instead of blocking a worker thread: the session
    waits (without holding a thread) and retries until the busy timeout.
    """


class Interrupted(Exception):
    """The running statement was stopped by :meth:`StorageConnection.interrupt` (a cancel,
    a statement timeout, the session's end).  The statement left nothing behind; an
    explicit transaction it ran in may be rolled back with it (then ``COMMIT`` says so)."""


class TooLong(Exception):
    """A call run in the event loop went past its cut-off (:meth:`StorageConnection.arm`)
    and was stopped.  It left nothing behind (no row sent, the statement undone): the
    caller runs it again in a worker thread."""


BUILTIN_GROUPS = ("admin", "readwrite", "readonly")
# Statements that never write: a transaction that ran only these holds no write lock.
_READS = re.compile(r"\s*(select|values|explain|show|fetch|pragma|begin|start|savepoint|"
                    r"release|set|declare|close)\b", re.I)


@dataclass(frozen=True)
class UserRecord:
    """A user and its SCRAM-SHA-256 verifier (never the password)."""

    name: str
    group: str
    salt: bytes
    stored_key: bytes
    server_key: bytes
    iterations: int
    created: str = ""


# What StorageConnection.read_now gives: (cursor, description, types, body, rows, more,
# lastrowid).
LaneRead = tuple[Any, Sequence[Any], list[Any], bytes, int, bool, Any]


class Packed(NamedTuple):
    """Rows a cursor encoded itself (:meth:`StorageCursor.pack`)."""

    body: bytes  # a msgpack array of row arrays (any number of them), as a ROWS body holds
    rows: int
    more: bool  # the statement may have more rows
    types: list[type | None]  # the Python types of the first row's values ([] unless asked)


class StorageCursor(abc.ABC):
    """The result of one statement; rows are pulled in batches, never all at once."""

    description: Sequence[tuple[str, str | None]] | None
    rowcount: int
    lastrowid: int | None
    cost_key: Hashable | None = None  # set by the server: the kind of call its fetches are
    # fetch() may give fewer rows than asked before the end (sized by bytes); only an empty
    # fetch then means the result is exhausted.
    short_fetches = False

    @abc.abstractmethod
    def fetch(self, n: int) -> list[tuple[Any, ...]]:
        """Up to ``n`` more rows; fewer (possibly none) when the result is exhausted."""

    def pack(self, max_rows: int, max_bytes: int, describe: bool) -> Packed | None:
        """Up to ``max_rows`` rows (stopping after the one that passes ``max_bytes``),
        already encoded, where the backend can do that without Python objects; None: it
        cannot, use :meth:`fetch`."""
        return None

    def declared_types(self) -> list[str | None]:
        """Each result column's type code as the statement declares it (a table column's
        declared type, a typed parameter), None where unknown; called from the thread that
        may use the connection, only when the first row cannot tell."""
        return [d[1] for d in self.description or ()]

    @abc.abstractmethod
    def close(self) -> None: ...


class StorageConnection(abc.ABC):
    """One session's handle on the data, with at most one open transaction."""

    policy: Policy
    # What ``policy`` was built from (group, grants version); the server skips rebuilding
    # it when the next session using this connection has the same.
    policy_key: Hashable | None = None
    # Wall-clock times (casemate sessions): the open transaction's start, and its first
    # write (SQLite: when it took the database's one write lock).  None when there is none.
    txn_since: float | None = None
    write_since: float | None = None

    @property
    @abc.abstractmethod
    def in_transaction(self) -> bool: ...

    @property
    def holds_shared(self) -> bool:
        """True while the session, idle, keeps what other sessions may wait for: its open
        transaction's locks, or (a pooled backend) a connection held for an unread cursor."""
        return self.in_transaction

    def note_transaction(self, sql: str = "", changed: bool = False) -> None:
        """After a statement (``sql``; ``changed``: it changed rows) or a transaction's
        start or end: keep :attr:`txn_since` and :attr:`write_since` true."""
        if not self.in_transaction:
            self.txn_since = self.write_since = None
            return
        if self.txn_since is None:
            self.txn_since = time.time()
        if self.write_since is None and (changed or (sql and not _READS.match(sql))):
            self.write_since = time.time()

    @abc.abstractmethod
    def begin(self) -> None: ...

    @abc.abstractmethod
    def execute(self, sql: str, params: Sequence[Any]) -> StorageCursor: ...

    @abc.abstractmethod
    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> int:
        """Run ``sql`` once per parameter set; return the total row count."""

    def atomic_many(self, sql: str, seq: Sequence[Sequence[Any]]) -> int:
        """executemany outside a transaction, all rows or none (autocommit mode)."""
        self.begin()
        try:
            n = self.executemany(sql, seq)
            self.commit()
        except BaseException:
            self.rollback()
            raise
        return n

    @abc.abstractmethod
    def savepoint(self, name: str) -> None:
        """Start a savepoint (and a transaction, if none is open)."""

    @abc.abstractmethod
    def release(self, name: str, undo: bool) -> None:
        """End a savepoint, undoing its changes first if ``undo``."""

    @abc.abstractmethod
    def interrupt(self) -> None:
        """Abort the statement running in another thread (thread-safe); it raises
        :class:`Interrupted` or a StorageError with code 57014.  Stays in force until the
        next :meth:`arm`, so a cancel never reaches a later call."""

    def arm(self, inline_seconds: float = 0.0) -> None:  # noqa: B027 - only SQLite inlines
        """A new call starts: forget an earlier :meth:`interrupt`.  With ``inline_seconds``
        (a call in the event loop), stop it with :class:`TooLong` once it has run that long."""

    def disarm(self) -> None:
        """A call in the event loop has ended (run, stopped or failed).  The next call
        starts with :meth:`arm`, which a backend may leave to restore what an inline call
        changed (SQLite keeps its inline limits until a call runs in a thread)."""
        self.arm()

    def read_now(self, sql: str, params: Sequence[Any], max_rows: int, max_bytes: int
                 ) -> LaneRead | None:
        """The server's fast lane: run ``sql``, known to write nothing, and pack its first
        rows as :meth:`execute` then :meth:`StorageCursor.pack` would, in one call; None,
        with nothing run or changed that a caller sees, where this backend does not (the
        caller then runs it through :meth:`execute`).  Called between :meth:`arm` and
        :meth:`disarm`; a stop at the cut-off raises :class:`TooLong`.  The result:
        ``(cursor, description, types, body, rows, more, lastrowid)``: ``cursor`` has
        ``close()``, and is a StorageCursor to keep for the next rows when ``more``."""
        return None

    def read_only(self, sql: str, params: Sequence[Any]) -> bool:
        """Whether ``sql`` writes nothing (False when unknown).  Stopping a statement that
        writes can undo more than the statement (SQLite: the whole transaction, and the
        connection's other open cursors), so only these may be cut off part-way and run
        again once a transaction or a cursor is open."""
        return False

    def inlinable(self, sql: str, params: Sequence[Any]) -> bool:
        """Whether every step of ``sql`` is short enough for the event loop's cut-off to
        stop it in time (False when unknown): one call of a function quadratic in its
        arguments (LIKE, instr) is a single step nothing can interrupt."""
        return False

    def may_cut(self, sql: str, params: Sequence[Any], learn: bool = True) -> bool | None:
        """:meth:`inlinable` and :meth:`read_only`: ``sql`` may run in the event loop,
        where it is stopped at the cut-off and run again.  ``learn=False`` (asked in the
        event loop): None where working it out would take a step nothing can stop (SQLite:
        compiling an EXPLAIN), which a worker thread then does with ``learn=True``."""
        return self.inlinable(sql, params) and self.read_only(sql, params)

    @abc.abstractmethod
    def set_policy(self, policy: Policy) -> None:
        """Enforce ``policy`` (the session's rights) on every following statement."""

    def set_in_method(self, on: bool) -> None:
        """A server method starts (True) or ends: while it runs, statements may not begin
        or end the caller's transaction."""
        self.policy.in_method = on

    @abc.abstractmethod
    def commit(self) -> None: ...

    @abc.abstractmethod
    def rollback(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class Backend(abc.ABC):
    """A storage engine: data connections plus the user store."""

    name: str
    # True when calls are CPU work in this process (SQLite): short ones may then run in
    # the event loop.  A backend that waits on the network keeps every call in a thread.
    inline_calls = False
    # How result rows become wire bytes: "compiled" (SQLite, storage/_sqlite_rows.pyx) or
    # the driver's Python objects packed by msgpack; logged at start, in `casemate status`.
    row_path = "driver rows packed by msgpack"

    def initialize(self) -> None:  # noqa: B027 - optional hook; SQLite needs nothing more
        """Create what the backend needs in a new database (``casemate init``)."""

    def check(self) -> None:  # noqa: B027 - optional hook
        """At server start: raise StorageError if the database is not usable by this version."""

    @abc.abstractmethod
    def connect(self) -> StorageConnection: ...

    @abc.abstractmethod
    def get_user(self, name: str) -> UserRecord | None: ...

    @abc.abstractmethod
    def add_user(self, record: UserRecord) -> None:
        """Raises KeyError if the user exists."""

    @abc.abstractmethod
    def update_user(self, record: UserRecord) -> None:
        """Raises KeyError if the user does not exist."""

    @abc.abstractmethod
    def remove_user(self, name: str) -> None:
        """Raises KeyError if the user does not exist."""

    @abc.abstractmethod
    def list_users(self) -> list[UserRecord]: ...

    @abc.abstractmethod
    def add_group(self, name: str) -> None:
        """Create a custom group; raises KeyError if it exists."""

    @abc.abstractmethod
    def remove_group(self, name: str) -> None:
        """Remove a custom group and its grants; raises KeyError if unknown, ValueError if in use."""

    @abc.abstractmethod
    def list_groups(self) -> dict[str, dict[str, frozenset[str]]]:
        """Every group (built-in ones included) with its per-table grants."""

    @abc.abstractmethod
    def set_grants(self, group: str, table: str, privileges: frozenset[str]) -> None:
        """Replace the grants of a custom ``group`` on ``table``; raises KeyError if unknown."""

    def grants_for(self, group: str) -> dict[str, frozenset[str]]:
        return self.list_groups().get(group, {})

    def grants_version(self) -> Hashable | None:
        """A value that changes whenever any grant may have changed (in this process or
        another), or None when unknown: then grants are read again at every use."""
        return None

    # Several servers over one database (PostgreSQL) list and drop each other's sessions.
    shares_sessions = False

    def share_sessions(self, server: str, rows: list[dict[str, Any]]) -> list[tuple[int, str]]:
        """Publish ``server``'s sessions to the other servers over this database; return the
        drops they asked of it, as (session id, reason)."""
        return []

    def other_sessions(self, server: str) -> list[dict[str, Any]]:
        """Sessions of the other live servers over this database (each with its "server")."""
        return []

    def request_drop(self, server: str, session: int, reason: str) -> None:
        """Ask another server over this database to drop one of its sessions (KeyError if
        no such server is alive)."""
        raise KeyError(server)

    def watch_rights(self) -> None:  # noqa: B027 - optional hook: SQLite needs nothing
        """Start noticing other processes' user and grant changes (a server, at start)."""

    @abc.abstractmethod
    def data_size(self) -> int:
        """Bytes used by the data on disk."""

    @abc.abstractmethod
    def integrity_check(self) -> str:
        """``"ok"`` or a description of the damage."""

    @abc.abstractmethod
    def close(self) -> None: ...
