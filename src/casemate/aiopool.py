"""A pool of asyncio connections, as asyncpg's: ``casemate.aio.create_pool(url)``.

::

    async with casemate.aio.create_pool(url, min_size=2, max_size=10) as pool:
        async with pool.acquire() as conn:          # one connection for several statements
            async with conn.transaction():
                await conn.execute("UPDATE ...")
        n = await pool.fetchval("SELECT count(*) FROM t")   # acquire, run, release

A connection returns to the pool as it was found: a transaction still open at
release is rolled back (with :class:`~casemate.errors.UncommittedWorkWarning` if it
may hold changes, so work is never lost in silence) and a broken connection is
closed and replaced on demand.  The pool's own ``execute``/``executemany`` commit,
as asyncpg's do (each runs in a ``transaction()`` block).  At most ``max_size``
connections are open; ``acquire`` waits for one (``timeout`` seconds, then
OperationalError 53P05).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

from .client.risk import warn_uncommitted
from .errors import Codes, Error, InterfaceError, OperationalError

if TYPE_CHECKING:
    from .aio import AsyncConnection

__all__ = ["AsyncPool"]


class AsyncPool:
    """Connections to one server, shared by tasks; see the module docstring."""

    def __init__(self, connect: Callable[..., Awaitable[AsyncConnection]], dsn: str | None,
                 *, min_size: int = 1, max_size: int = 10, timeout: float | None = None,
                 **kwargs: Any) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise InterfaceError(f"pool sizes: expected 0 <= min_size <= max_size and "
                                 f"max_size >= 1, got {min_size} and {max_size}")
        self._connect_fn, self._dsn, self._kwargs = connect, dsn, kwargs
        self.min_size, self.max_size, self.timeout = min_size, max_size, timeout
        self._idle: list[AsyncConnection] = []  # LIFO: the most recently used is warmest
        self._slots = asyncio.Semaphore(max_size)
        self._opened = False
        self._closed = False

    async def _connect(self) -> AsyncConnection:
        return await self._connect_fn(self._dsn, **self._kwargs)

    async def _open(self) -> AsyncPool:
        if not self._opened:
            self._opened = True
            conns = await asyncio.gather(*(self._connect() for _ in range(self.min_size)))
            self._idle.extend(conns)
        return self

    def __await__(self) -> Generator[Any, None, AsyncPool]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncPool:
        return await self._open()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- acquire and release --------------------------------------------------------
    def acquire(self, *, timeout: float | None = None) -> _Acquire:
        """``async with pool.acquire() as conn`` (released at the end), or
        ``conn = await pool.acquire()`` then ``await pool.release(conn)``."""
        return _Acquire(self, self.timeout if timeout is None else timeout)

    async def _acquire(self, timeout: float | None) -> AsyncConnection:
        if self._closed:
            raise InterfaceError("the pool is closed")
        await self._open()
        try:
            async with asyncio.timeout(timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise OperationalError(
                f"no connection free in the pool after {timeout:g} s ({self.max_size} in use)",
                Codes.POOL_TIMEOUT, "raise max_size, or release connections sooner") from None
        try:
            return self._idle.pop() if self._idle else await self._connect()
        except BaseException:
            self._slots.release()
            raise

    async def release(self, conn: AsyncConnection) -> None:
        """Give ``conn`` back: an open transaction is rolled back (with a warning if it
        may hold changes); a broken connection is closed."""
        lost = conn._core.wrote and not conn.closed
        try:
            kept = await self._reset(conn)  # rolled back here: else close() says what it lost
            lost = lost and kept
            if not kept or self._closed:
                await conn.close()
            else:
                self._idle.append(conn)
        finally:
            self._slots.release()
        if lost:  # last: a warnings filter that raises must not leak the connection
            warn_uncommitted(stacklevel=2)

    async def _reset(self, conn: AsyncConnection) -> bool:
        """Make ``conn`` fit for the next user; False if it is not."""
        if conn.closed or conn._broken or conn._peer_closed():
            return False
        conn._blocks.clear()
        conn.autocommit = False
        try:
            await conn.rollback()
        except Error:
            return False
        return True

    async def close(self) -> None:
        """Close the idle connections now; those in use are closed when released."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()

    # -- one-statement shortcuts (acquire, run, release) -------------------------------
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> str:
        """Run and commit one statement; return its status ("UPDATE 3")."""
        async with self.acquire() as conn, conn.transaction():
            return await conn.execute(sql, params)

    async def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> int:
        """Run and commit one statement for each parameter set; return the rows affected."""
        async with self.acquire() as conn, conn.transaction():
            return await conn.executemany(sql, seq)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self.acquire() as conn:
            return await conn.fetch(sql, params)

    async def fetchrow(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        async with self.acquire() as conn:
            return await conn.fetchrow(sql, params)

    async def fetchval(self, sql: str, params: Sequence[Any] = (), column: int = 0) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchval(sql, params, column)


class _Acquire:
    """What :meth:`AsyncPool.acquire` returns: awaitable, or an async context manager."""

    def __init__(self, pool: AsyncPool, timeout: float | None) -> None:
        self.pool, self.timeout = pool, timeout
        self.conn: AsyncConnection | None = None

    def __await__(self) -> Generator[Any, None, AsyncConnection]:
        return self.pool._acquire(self.timeout).__await__()

    async def __aenter__(self) -> AsyncConnection:
        self.conn = await self.pool._acquire(self.timeout)
        return self.conn

    async def __aexit__(self, *exc: Any) -> None:
        assert self.conn is not None
        conn, self.conn = self.conn, None
        await self.pool.release(conn)
