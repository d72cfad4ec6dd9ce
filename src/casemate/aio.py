"""The asyncio client: the same operations as the DB-API module, awaitable.

::

    conn = await casemate.aio.connect("casemate://admin:pw@localhost")
    async with conn.transaction():                 # committed at the end of the block
        status = await conn.execute("UPDATE t SET n = n + 1 WHERE id = ?", (7,))  # "UPDATE 1"
    row = await conn.fetchrow("SELECT id, name FROM t WHERE id = ?", (7,))
    async with conn.cursor() as cur:               # a large result, streamed
        await cur.execute("SELECT id, name FROM t WHERE id > ?", (10,))
        async for row in cur:
            ...
    await conn.close()

The names are asyncpg's (``execute`` returns a status, ``fetch``, ``fetchrow``,
``fetchval``, ``transaction()``, :func:`create_pool`); parameters are a sequence
for ``?`` placeholders, as in the DB-API module.  Autocommit is off, as there: a
statement outside a ``transaction()`` block opens a transaction that ``commit()``
ends (``autocommit = True`` makes each statement commit by itself).

Several tasks may share one connection: their requests are pipelined and the
replies dispatched in order (the connection's transport, login and dispatch are
:class:`casemate.client.aiolink.AsyncLink`'s).  Trust rules, fallback and errors
are those of the blocking client (they share :mod:`casemate.client.core`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Any

from .aiopool import AsyncPool
from .client.aiolink import AsyncLink
from .client.cursor import DEFAULT_BATCH_ROWS, CursorAttrs, CursorState, Step
from .client.params import ConnectParams, looks_up_lan, parse_params
from .client.risk import warn_uncommitted
from .client.status import command_status
from .errors import Error, InterfaceError, OperationalError
from .protocol import Msg

__all__ = ["connect", "create_pool", "AsyncConnection", "AsyncCursor", "AsyncPool", "Transaction"]


async def connect(dsn: str | None = None, **kwargs: Any) -> AsyncConnection:
    """Open a connection (same parameters and errors as :func:`casemate.connect`)."""
    params = (await asyncio.to_thread(parse_params, dsn, **kwargs)
              if looks_up_lan(dsn, kwargs) else parse_params(dsn, **kwargs))
    conn = AsyncConnection(params)
    await conn._open()
    return conn


class AsyncConnection(AsyncLink):
    """A session on a Casemate server, for asyncio; its transport is :class:`AsyncLink`'s."""

    def __init__(self, params: ConnectParams) -> None:
        super().__init__(params)
        self.autocommit = False
        self._blocks: list[Transaction] = []  # open transaction() blocks, outermost first

    # -- public API -------------------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        return self._core.in_transaction

    @property
    def _begin(self) -> bool:
        """Whether a statement runs in a transaction: autocommit off, or inside a block."""
        return not self.autocommit or bool(self._blocks)

    @property
    def closed(self) -> bool:
        return self._writer is None

    @property
    def lost(self) -> Error | None:
        """Why the connection is gone, if the server or the network ended it (None while
        it is open, or after close())."""
        return self._broken if self._writer is None else None

    async def set_autocommit(self, value: bool) -> None:
        """Switch autocommit as the DB-API's setter does: switching it on commits an open
        transaction first, so no statement is left in limbo (setting the attribute
        directly does not commit)."""
        if value and not self.autocommit and self._writer is not None:
            await self.commit()
        self.autocommit = bool(value)

    def cursor(self) -> AsyncCursor:
        if self.closed:
            raise InterfaceError("connection is closed")
        return AsyncCursor(self)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> str:
        """Run a statement; return its status ("INSERT 0 1", "UPDATE 3", "CREATE TABLE").
        Rows of a query are read and dropped ("SELECT 5"): use :meth:`fetch` or a cursor."""
        async with self.cursor() as cur:
            await cur.execute(sql, params)
            n = cur.rowcount
            if cur.description is not None:
                n = 0
                while batch := await cur.fetchmany(DEFAULT_BATCH_ROWS):
                    n += len(batch)
            return command_status(sql, n)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query and return all its rows."""
        async with self.cursor() as cur:
            await cur.execute(sql, params)
            return await cur.fetchall()

    async def fetchrow(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """Run a query and return its first row, or None if it has none."""
        async with self.cursor() as cur:
            await cur.execute(sql, params)
            return await cur.fetchone()

    async def fetchval(self, sql: str, params: Sequence[Any] = (), column: int = 0) -> Any:
        """Run a query and return one value of its first row (None if there is no row)."""
        row = await self.fetchrow(sql, params)
        return None if row is None else row[column]

    def transaction(self) -> Transaction:
        """``async with conn.transaction():`` commits at the end of the block, or rolls
        back if it raises; a block inside another, or opened while changes made outside
        any block are uncommitted, is a savepoint, undone alone if it raises (and those
        changes stay the caller's to commit)."""
        return Transaction(self)

    async def call(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run server method ``name`` (see :meth:`casemate.Connection.call`)."""
        async with self.cursor() as cur:
            await cur._call(name, args, kwargs)
            if cur._state.scalar:
                row = await cur.fetchone()
                return row[0] if row else None
            return await cur.fetchall()

    async def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> int:
        cur = self.cursor()
        await cur.executemany(sql, seq)
        return cur.rowcount

    async def commit(self) -> None:
        if self.in_transaction:
            await self._simple(Msg.COMMIT)

    async def rollback(self) -> None:
        if self.in_transaction:
            await self._simple(Msg.ROLLBACK)

    async def ping(self) -> None:
        await self._simple(Msg.SYNC)

    def cancel(self) -> None:
        """Stop the statement (or method) this connection waits for, e.g. from another task;
        the awaiting call raises OperationalError with code 57014.  A no-op when nothing
        is waiting, and it never stops a statement sent after it."""
        frame = self._core.cancel_frame()
        if frame is not None and self._writer is not None and self._broken is None:
            self._writer.write(frame)  # out of band: no reply to wait for

    async def close(self) -> None:
        """Close; an uncommitted transaction is rolled back by the server, with an
        :class:`~casemate.errors.UncommittedWorkWarning` if it may hold changes."""
        if self._writer is None:
            return
        lost = self._core.wrote and not self._broken
        if not self._broken:
            try:
                self._writer.write(self._core.proto.send(Msg.TERMINATE))
            except (OSError, Error):
                pass
        w, self._writer = self._writer, None
        w.close()
        try:
            await w.wait_closed()
        except (OSError, ssl.SSLError):
            pass
        if lost:  # after closing: a warnings filter that raises must not leak the socket
            warn_uncommitted(stacklevel=3)

    async def __aenter__(self) -> AsyncConnection:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self._broken and self._writer is not None:
            await (self.commit() if exc_type is None else self.rollback())
        await self.close()


class AsyncCursor(CursorAttrs):
    """An asyncio cursor; rows stream in batches, one batch prefetched.  What is asked
    and kept is :class:`~casemate.client.cursor.CursorState`'s, as in the DB-API cursor."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.connection = conn
        self._state = CursorState()

    async def _send(self, step: Step | None) -> None:
        if step is not None:
            await self.connection._request(*step)
            self._state.suspended = False

    async def _run(self, step: Step) -> Any:
        await self._send(step)
        await self.connection._wait(step[0])
        return step[0]

    async def _reset(self) -> None:
        """Forget the current result, telling the server to drop it if still open."""
        st = self._state
        generation = 0
        if st.prefetch is not None and not st.prefetch.done:
            try:
                await self.connection._wait(st.prefetch)
            except Error:
                generation = -1  # the result is gone with its error
        await self._send(st.close_portal(generation))
        st.forget(0)

    async def execute(self, sql: str, params: Sequence[Any] | None = None) -> AsyncCursor:
        conn = self._check()
        step = self._state.query(sql, params, conn._begin)
        await self._reset()
        await self._send(self._state.executed(await self._run(step)))
        return self

    async def _call(self, name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        conn = self._check()
        await self._reset()
        step = self._state.call(name, args, kwargs, conn._begin)
        await self._send(self._state.executed(await self._run(step), call=True))

    async def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> None:
        conn = self._check()
        await self._reset()
        for step in self._state.executemany(sql, seq, conn._begin):
            self._state.add(await self._run(step))

    async def _fill(self) -> bool:
        """Rows are buffered (awaiting the next batch if needed); False at the end."""
        self._check()
        while (p := self._state.next_batch()) is not None:
            await self.connection._wait(p)
            try:
                await self._send(self._state.after(p))
            except OperationalError as e:  # lost: the rows that came are read first
                self._state.send_failed(e)
        return bool(self._state.rows)

    async def fetchone(self) -> tuple[Any, ...] | None:
        return self._state.rows.popleft() if await self._fill() else None

    async def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        n = self.arraysize if size is None else size
        out: list[tuple[Any, ...]] = []
        try:
            while len(out) < n and await self._fill():
                self._state.take(out, n)
        except OperationalError as e:  # rows taken before a lost connection come first
            return self._state.taken_before(out, e)
        return out

    async def fetchall(self) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        while await self._fill():
            self._state.take(out, None)
        return out

    def __aiter__(self) -> AsyncIterator[tuple[Any, ...]]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[tuple[Any, ...]]:
        rows = self._state.rows
        while await self._fill():
            while rows:
                yield rows.popleft()

    async def close(self) -> None:
        if self._state.closed:
            return
        counts = self._state.counts()
        with contextlib.suppress(Error):
            if not self.connection.closed:
                await self._reset()
        self._state.close(counts)

    async def __aenter__(self) -> AsyncCursor:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def nextset(self) -> None:
        return None

    async def setinputsizes(self, *sizes: Any) -> None:
        return None

    @property
    def lastrowid_value(self) -> int | None:
        return self.lastrowid


class Transaction:
    """A ``conn.transaction()`` block (asyncpg's): the outermost owns the transaction
    (one that only read before it is taken over), an inner one (or one opened while
    changes made outside any block are uncommitted) is a savepoint.  Also usable as
    ``tx = conn.transaction(); await tx.start(); ...; await tx.commit()``."""

    _names = itertools.count(1)

    def __init__(self, conn: AsyncConnection) -> None:
        self.connection = conn
        self.savepoint: str | None = None
        self._active = False

    async def start(self) -> None:
        conn = self.connection
        if self._active:
            raise InterfaceError("this transaction block is already started")
        if conn._blocks or conn._core.wrote:  # (a transaction that only read is taken over)
            self.savepoint = f"casemate_sp_{next(self._names)}"
        conn._blocks.append(self)
        self._active = True
        if self.savepoint is not None:
            try:
                await conn.execute(f"SAVEPOINT {self.savepoint}")
            except BaseException:
                self._end()
                raise

    def _end(self) -> None:
        blocks = self.connection._blocks
        if not self._active or blocks[-1] is not self:
            raise InterfaceError("transaction blocks must end in the reverse order of their start")
        blocks.pop()
        self._active = False

    async def commit(self) -> None:
        self._end()
        if self.savepoint is None:
            await self.connection.commit()
        else:
            await self.connection.execute(f"RELEASE SAVEPOINT {self.savepoint}")

    async def rollback(self) -> None:
        self._end()
        conn = self.connection
        if self.savepoint is None:
            await conn.rollback()
        elif conn.in_transaction:  # (a lost connection took the transaction with it)
            await conn.execute(f"ROLLBACK TO SAVEPOINT {self.savepoint}")
            await conn.execute(f"RELEASE SAVEPOINT {self.savepoint}")

    async def __aenter__(self) -> Transaction:
        await self.start()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            await self.commit()
        elif not self.connection._broken:
            await self.rollback()
        else:
            self._end()


def create_pool(dsn: str | None = None, *, min_size: int = 1, max_size: int = 10,
                **kwargs: Any) -> AsyncPool:
    """A pool of connections (asyncpg's ``create_pool``): ``pool = await create_pool(url)``
    or ``async with create_pool(url) as pool``; see :class:`AsyncPool`."""
    return AsyncPool(connect, dsn, min_size=min_size, max_size=max_size, **kwargs)
