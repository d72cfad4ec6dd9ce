"""The PEP 249 (DB-API 2.0) client: :func:`connect`, :class:`Connection`, :class:`Cursor`.

Results stream: ``execute`` returns after the first batch of rows; later
batches are requested as the cursor is read (one batch is prefetched), so a
result of any size is fetched in bounded memory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Iterator, Sequence
from typing import Any

from .client.core import ExecRequest
from .client.cursor import (
    _FLAT,
    DEFAULT_BATCH_ROWS,
    CursorAttrs,
    CursorState,
    Step,
    _check_sendable,
)
from .client.link import BlockingLink
from .client.params import ConnectParams, Security, parse_params
from .client.risk import warn_uncommitted
from .errors import Error, InterfaceError, OperationalError
from .protocol import Msg
from .protocol.messages import Admin, Query, _new

__all__ = [
    "apilevel", "threadsafety", "paramstyle", "connect", "Connection", "Cursor",
    "Date", "Time", "Timestamp", "DateFromTicks", "TimeFromTicks", "TimestampFromTicks",
    "Binary", "STRING", "BINARY", "NUMBER", "DATETIME", "ROWID",
]

apilevel = "2.0"
threadsafety = 1  # threads may share the module, not connections
paramstyle = "qmark"

Date = dt.date
Time = dt.time
Timestamp = dt.datetime
Binary = bytes


def DateFromTicks(ticks: float) -> dt.date:  # noqa: N802 - PEP 249 name
    return dt.date(*time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> dt.time:  # noqa: N802
    return dt.time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> dt.datetime:  # noqa: N802
    return dt.datetime(*time.localtime(ticks)[:6])


class _TypeObject:
    def __init__(self, *codes: str) -> None:
        self.codes = frozenset(codes)

    def __eq__(self, other: object) -> bool:
        return other in self.codes

    def __hash__(self) -> int:
        return hash(self.codes)


STRING = _TypeObject("text")
BINARY = _TypeObject("bytes")
NUMBER = _TypeObject("integer", "float", "decimal", "bool")
DATETIME = _TypeObject("date", "time", "datetime")
ROWID = _TypeObject("integer")



def connect(dsn: str | None = None, **kwargs: Any) -> Connection:
    """Open a connection: ``connect("casemate://user:pw@host:port")`` or keywords.

    Keywords: host, port, user, password, tls_ca, tls_cert, tls_key,
    encryption ("auto" or "required"), connect_timeout, program.  Raises
    OperationalError (cannot connect, bad password), SecurityError (certificate
    or downgrade refused) or InterfaceError (bad parameters).
    """
    return Connection(parse_params(dsn, **kwargs))


class Connection(BlockingLink):
    """A session on a Casemate server.  Autocommit is off, as PEP 249 says.  Requests,
    replies and reconnection are :class:`~casemate.client.link.BlockingLink`'s."""

    Error = Error
    from .errors import (  # noqa: E402 - PEP 249 optional extension: errors on the connection
        DatabaseError,
        DataError,
        IntegrityError,
        InterfaceError,
        InternalError,
        NotSupportedError,
        OperationalError,
        ProgrammingError,
        Warning,
    )

    def __init__(self, params: ConnectParams) -> None:
        super().__init__(params)
        self._autocommit = False

    # -- properties ---------------------------------------------------------
    @property
    def autocommit(self) -> bool:
        """Off by default (PEP 249).  Switching it on commits an open transaction first,
        as the standard library's sqlite3 does, so no statement is left in limbo."""
        return self._autocommit

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        if value and not self._autocommit and self._chan is not None and self.in_transaction:
            self.commit()
        self._autocommit = bool(value)

    @property
    def security(self) -> Security:
        """How this connection is protected (plain / encrypted, verified or not)."""
        return self._channel.security

    @property
    def session_id(self) -> int:
        return self._channel.login.session_id

    @property
    def server_version(self) -> str:
        return self._channel.login.server_version

    @property
    def backend(self) -> str:
        return self._channel.login.backend

    @property
    def in_transaction(self) -> bool:
        return self._channel.core.in_transaction

    @property
    def notices(self) -> list[tuple[str, str]]:
        """The last 100 notices (code, text), including those that preceded a reconnection."""
        return list(self._notices)

    @property
    def closed(self) -> bool:
        return self._chan is None

    @property
    def lost(self) -> None:
        """Always None: a lost link stays this connection's (it reports the loss, or
        reconnects) until close(), after which the connection is closed, not lost."""
        return None

    # -- PEP 249 ------------------------------------------------------------
    def cursor(self) -> Cursor:
        if self._chan is None:
            raise InterfaceError("connection is closed")
        return Cursor(self)

    def commit(self) -> None:
        if self.in_transaction:
            self._simple(Msg.COMMIT)

    def rollback(self) -> None:
        if self.in_transaction:
            self._simple(Msg.ROLLBACK)

    def ping(self) -> None:
        """One round trip; raises OperationalError if the connection is gone."""
        self._simple(Msg.SYNC)

    def cancel(self) -> None:
        """Stop the statement (or method) this connection waits for; call it from another
        thread.  The waiting call raises OperationalError with code 57014.  A no-op when
        nothing is waiting, and it never stops a statement sent after it."""
        chan = self._chan
        if chan is not None:
            chan.cancel()

    def admin(self, command: str, **args: Any) -> list[tuple[Any, ...]]:
        """Run an administration command (admin group only); return its rows.

        Commands: status, sessions, drop, message, accept, reject (the running
        server) and user_*/group_*/grant/revoke (see :mod:`casemate.admin`).
        """
        return self.admin_table(command, **args)[1]

    def admin_table(self, command: str, **args: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Like :meth:`admin`, with the column names."""
        rows: list[tuple[Any, ...]] = []
        req = ExecRequest(rows.extend)
        self._send(req, Msg.ADMIN, Admin(command, args))
        self._wait(req)
        return [c[0] for c in req.description or ()], rows

    def close(self) -> None:
        """Close; an uncommitted transaction is rolled back by the server, with an
        :class:`~casemate.errors.UncommittedWorkWarning` if it may hold changes.

        Closing twice raises :class:`~casemate.errors.InterfaceError`, as any other use of
        a closed connection does (PEP 249); a ``with`` block, the pool and the
        SQLAlchemy dialect close only what is still open."""
        chan, self._chan = self._chan, None
        if chan is None:
            raise InterfaceError("connection is already closed")
        lost = chan.core.wrote and not chan.broken
        if not chan.broken:
            try:
                chan.send(chan.core.proto.send(Msg.TERMINATE))
            except Error:
                pass
        chan.close()
        if lost:  # after closing: a warnings filter that raises must not leak the socket
            warn_uncommitted(stacklevel=3)

    def call(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run server method ``name`` in this session and transaction; return its result.

        A method declared ``-> Rows`` returns a list of rows here (iterate
        ``cursor.callproc`` to stream them instead).  Raises ProgrammingError for
        an unknown method or wrong arguments, DatabaseError (code P0001) when the
        method raised, OperationalError (57014) when it ran over its time limit.
        """
        cur = self.cursor()
        try:
            cur._call(name, args, kwargs)
            if cur._state.scalar:
                row = cur.fetchone()
                return row[0] if row else None
            return cur.fetchall()
        finally:
            cur.close()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Shortcut: a new cursor, executed."""
        cur = self.cursor()
        cur.execute(sql, params)
        return cur

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._chan is not None and not self._chan.broken:
            if exc_type is None:
                self.commit()
            else:
                self.rollback()
        if self._chan is not None:  # closed inside the block: nothing left to close
            self.close()


class Cursor(CursorAttrs):
    """A PEP 249 cursor.  Rows arrive in batches as they are read; what is asked and kept
    is :class:`~casemate.client.cursor.CursorState`'s, shared with the asyncio cursor."""

    def __init__(self, conn: Connection) -> None:
        self.connection = conn
        self._state = CursorState(conn.generation)

    def _send(self, step: Step | None) -> None:
        if step is not None:
            self.connection._send(*step)
            self._state.suspended = False

    def _run(self, step: Step) -> Any:
        self._send(step)
        self.connection._wait(step[0])
        # Sending may have reconnected (a new link, a new generation): the result opened
        # now lives on that link, and the next _reset must see it as this link's.
        self._state.generation = self.connection.generation
        return step[0]

    def _reset(self) -> None:
        """Forget the current result, telling the server to drop it if still open."""
        conn, st = self.connection, self._state
        generation = conn.generation  # another: the result died with the old link
        if st.generation == generation and st.prefetch is not None and not st.prefetch.done:
            try:
                conn._wait(st.prefetch)
            except Error:
                generation = -1
        self._send(st.close_portal(generation))
        st.forget(conn.generation)

    def execute(self, operation: str, parameters: Sequence[Any] | None = None) -> Cursor:
        # The lane: this cursor's last result is complete (nothing to close on the server
        # or to wait for) and the channel idle: the general path's steps, without its
        # layers (a lookup is mostly these layers on the client).  Any other case, and a
        # channel that is not idle and up (``exchange`` sends nothing then), takes the
        # general path, which the twin tests hold this one to.
        st = self._state
        conn = self.connection
        chan = conn._chan
        if (chan is not None and st.prefetch is None and not st.suspended and not st.closed
                and not isinstance(parameters, dict)):
            args = tuple(parameters) if parameters is not None else ()
            if not _FLAT.issuperset(map(type, args)):
                _check_sendable(args)
            st.generation = conn.generation  # forget the last result (st.forget)
            st.rows.clear()
            st.description = None
            st.rowcount = -1
            req = ExecRequest(st.rows.extend)
            body = _new(Query, (st.portal, operation, args, not conn._autocommit,
                                max(st.arraysize, DEFAULT_BATCH_ROWS)))  # (st.query's)
            if chan.exchange(req, Msg.QUERY, body):
                step = st.executed(req)
                if step is not None:  # a result left open: prefetch its next batch
                    self._send(step)
                return self
            parameters = args  # (an iterator of parameters is used up: pass what it gave)
        return self._execute(operation, parameters)

    def _execute(self, operation: str, parameters: Sequence[Any] | None) -> Cursor:
        """``execute``'s general path."""
        conn = self._check()
        step = self._state.query(operation, parameters, not conn.autocommit)
        self._reset()
        self._send(self._state.executed(self._run(step)))
        return self

    def executemany(self, operation: str, seq_of_parameters: Sequence[Sequence[Any]]) -> None:
        conn = self._check()
        self._reset()
        for step in self._state.executemany(operation, seq_of_parameters, not conn.autocommit):
            self._state.add(self._run(step))

    def _fill(self) -> bool:
        """Rows are buffered (waiting for the next batch if needed); False at the end."""
        self._check()
        while (p := self._state.next_batch()) is not None:
            self.connection._wait(p)
            try:
                self._send(self._state.after(p))
            except OperationalError as e:  # lost: the rows that came are read first
                self._state.send_failed(e)
        return bool(self._state.rows)

    def fetchone(self) -> tuple[Any, ...] | None:
        rows = self._state.rows
        if rows and not self._state.closed and self.connection._chan is not None:
            return rows.popleft()  # buffered: what _fill checks holds
        return rows.popleft() if self._fill() else None

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        n = self.arraysize if size is None else size
        out: list[tuple[Any, ...]] = []
        try:
            while len(out) < n and self._fill():
                self._state.take(out, n)
        except OperationalError as e:  # rows taken before a lost connection come first
            return self._state.taken_before(out, e)
        return out

    def fetchall(self) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        while self._fill():
            self._state.take(out, None)
        return out

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        rows = self._state.rows  # (cleared in place if the cursor runs another statement)
        while self._fill():  # checks, waits for the next batch
            while rows:  # this batch without the checks per row
                yield rows.popleft()

    def close(self) -> None:
        if self._state.closed:
            return
        counts = self._state.counts()
        with contextlib.suppress(Error):
            if not self.connection.closed:
                self._reset()
        self._state.close(counts)

    def setinputsizes(self, sizes: Any) -> None:
        pass

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        pass

    def callproc(self, procname: str, parameters: Sequence[Any] = ()) -> Sequence[Any]:
        """PEP 249: call server method ``procname``; its result rows (or its single value,
        as one row) are then read with fetch*/iteration.  Returns ``parameters``."""
        self._call(procname, tuple(parameters), {})
        return parameters

    def _call(self, name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        conn = self._check()
        self._reset()
        step = self._state.call(name, args, kwargs, not conn.autocommit)
        self._send(self._state.executed(self._run(step), call=True))

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
