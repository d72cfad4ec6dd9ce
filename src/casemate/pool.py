"""A pool of blocking connections for threads, as psycopg_pool's ``ConnectionPool``.

::

    from casemate.pool import ConnectionPool

    pool = ConnectionPool("casemate://app:pw@db:19812", min_size=2, max_size=10)
    with pool.connection() as conn:        # committed at the end, rolled back on error
        conn.execute("INSERT INTO t (v) VALUES (?)", (1,))
    pool.close()

A DB-API connection serves one thread at a time (``threadsafety = 1``); the pool
lends each thread its own.  ``connection()`` ends the block's transaction as
psycopg_pool does (commit, or rollback if the block raised); ``getconn()`` /
``putconn()`` leave it to the caller, and a connection given back with a
transaction open is rolled back (with :class:`~casemate.errors.UncommittedWorkWarning`
if it may hold changes).  A broken connection is closed, and replaced on demand.
At most ``max_size`` are open; a thread waits ``timeout`` seconds for one, then
gets OperationalError 53P05.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from .client.risk import warn_uncommitted
from .dbapi import Connection, connect
from .errors import Codes, Error, InterfaceError, OperationalError

__all__ = ["ConnectionPool"]


class ConnectionPool:
    """Connections to one server, lent to threads; see the module docstring."""

    def __init__(self, conninfo: str | None = None, *, min_size: int = 1,
                 max_size: int | None = None, timeout: float = 30.0,
                 kwargs: dict[str, Any] | None = None) -> None:
        max_size = min_size if max_size is None else max_size
        if not 0 <= min_size <= max_size or max_size < 1:
            raise InterfaceError(f"pool sizes: expected 0 <= min_size <= max_size and "
                                 f"max_size >= 1, got {min_size} and {max_size}")
        self.conninfo, self.kwargs = conninfo, dict(kwargs or {})
        self.min_size, self.max_size, self.timeout = min_size, max_size, timeout
        self._idle: list[Connection] = []  # LIFO: the most recently used is warmest
        self._slots = threading.BoundedSemaphore(max_size)
        self._lock = threading.Lock()
        self._closed = False
        self._idle.extend(self._new() for _ in range(min_size))

    def _new(self) -> Connection:
        return connect(self.conninfo, **self.kwargs)

    @property
    def closed(self) -> bool:
        return self._closed

    def getconn(self, timeout: float | None = None) -> Connection:
        """A connection for this thread; give it back with :meth:`putconn`."""
        if self._closed:
            raise InterfaceError("the pool is closed")
        wait = self.timeout if timeout is None else timeout
        if not self._slots.acquire(timeout=wait):
            raise OperationalError(
                f"no connection free in the pool after {wait:g} s ({self.max_size} in use)",
                Codes.POOL_TIMEOUT, "raise max_size, or give connections back sooner")
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            return conn if conn is not None else self._new()
        except BaseException:
            self._slots.release()
            raise

    def putconn(self, conn: Connection) -> None:
        """Give ``conn`` back: an open transaction is rolled back (with a warning if it
        may hold changes); a broken connection is closed."""
        lost = False
        try:
            lost = not conn.closed and conn._channel.core.wrote
            kept = self._reset(conn)  # rolled back here: else close() says what it lost
            lost = lost and kept
            if kept and not self._closed:
                with self._lock:
                    self._idle.append(conn)
            elif not conn.closed:  # the borrower may have closed it already
                conn.close()
        finally:
            self._slots.release()
        if lost:  # last: a warnings filter that raises must not leak the connection
            warn_uncommitted(stacklevel=2)

    def _reset(self, conn: Connection) -> bool:
        """Make ``conn`` fit for the next thread; False if it is not."""
        if conn.closed or not conn._channel.poll_alive():
            return False
        try:
            conn.rollback()
            conn.autocommit = False
        except Error:
            return False
        return True

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Connection]:
        """``with pool.connection() as conn``: committed at the end of the block, rolled
        back if it raised, then given back."""
        conn = self.getconn(timeout)
        try:
            yield conn
            if not conn.closed:
                conn.commit()
        except BaseException:
            if not conn.closed:
                with contextlib.suppress(Error):
                    conn.rollback()
            raise
        finally:
            self.putconn(conn)

    def close(self) -> None:
        """Close the idle connections now; those lent out are closed when given back."""
        self._closed = True
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> ConnectionPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
