"""The ``casemate+async://`` dialect: the same SQL over :mod:`casemate.aio`.

SQLAlchemy's asyncio extension runs the dialect's synchronous code in a
greenlet; the adapters below turn each DB-API call into an awaited call of
:class:`casemate.aio.AsyncConnection` / ``AsyncCursor`` (the pattern of
SQLAlchemy's aiosqlite dialect).  ``AsyncConnection.stream()`` uses a
server-side cursor: rows arrive batch by batch instead of all at execute time.
"""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

from sqlalchemy import pool
from sqlalchemy.connectors.asyncio import (
    AsyncAdapt_dbapi_connection,
    AsyncAdapt_dbapi_cursor,
    AsyncAdapt_dbapi_module,
    AsyncAdapt_dbapi_ss_cursor,
    AsyncAdapt_terminate,
)
from sqlalchemy.engine import URL

try:
    from sqlalchemy.util.concurrency import await_
except ImportError:  # SQLAlchemy 2.0
    from sqlalchemy.util.concurrency import await_only as await_

from .base import CasemateDialect, CasemateExecutionContext, casemate_dbapi

__all__ = ["CasemateAsyncDialect"]


class AsyncAdapt_casemate_cursor(AsyncAdapt_dbapi_cursor):  # noqa: N801 - SQLAlchemy's naming
    __slots__ = ()


class AsyncAdapt_casemate_ss_cursor(AsyncAdapt_dbapi_ss_cursor):  # noqa: N801
    __slots__ = ()


class AsyncAdapt_casemate_connection(AsyncAdapt_terminate,  # noqa: N801
                                     AsyncAdapt_dbapi_connection):
    __slots__ = ()
    _cursor_cls = AsyncAdapt_casemate_cursor
    _ss_cursor_cls = AsyncAdapt_casemate_ss_cursor

    @property
    def autocommit(self) -> bool:
        return bool(self._connection.autocommit)

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        # As the blocking client does: switching autocommit on commits an open transaction.
        if value and not self._connection.autocommit and self._connection.in_transaction:
            await_(self._connection.commit())
        self._connection.autocommit = value

    @property
    def backend(self) -> str:
        return str(self._connection.login.backend)

    @property
    def in_transaction(self) -> bool:
        return bool(self._connection.in_transaction)

    def ping(self) -> None:
        try:
            await_(self._connection.ping())
        except Exception as error:
            self._handle_exception(error)

    async def _terminate_graceful_close(self) -> None:
        await self._connection.close()

    def _terminate_force_close(self) -> None:
        # Outside any event loop (garbage collection): drop the socket without a goodbye.
        self._connection._close_transport()

    def _terminate_handled_exceptions(self) -> tuple[type[BaseException], ...]:
        import casemate
        return (asyncio.TimeoutError, asyncio.CancelledError, OSError, casemate.Error)


class AsyncAdapt_casemate_dbapi(AsyncAdapt_dbapi_module):  # noqa: N801
    """A DB-API module look-alike whose connect() awaits :func:`casemate.aio.connect`."""

    def __init__(self, aio: ModuleType, sync: Any) -> None:
        # Attributes set here rather than through __init__, whose signature differs
        # between SQLAlchemy 2.0 and 2.1 (which reads driver and dbapi_module).
        self.driver = aio
        self.dbapi_module = sync
        self.aio = aio
        self.paramstyle = "qmark"
        for name in ("Error", "Warning", "InterfaceError", "DatabaseError", "DataError",
                     "OperationalError", "IntegrityError", "InternalError",
                     "ProgrammingError", "NotSupportedError", "Binary",
                     "sqlite_version_info", "sqlite_version"):
            setattr(self, name, getattr(sync, name))

    def connect(self, *args: Any, **kw: Any) -> AsyncAdapt_casemate_connection:
        creator = kw.pop("async_creator_fn", None)
        conn = await_((creator or self.aio.connect)(*args, **kw))
        return AsyncAdapt_casemate_connection(self, conn)


class CasemateAsyncExecutionContext(CasemateExecutionContext):
    def create_server_side_cursor(self) -> Any:
        return self._dbapi_connection.cursor(server_side=True)


class CasemateAsyncDialect(CasemateDialect):
    """``casemate+async://``: the same dialect over :mod:`casemate.aio`."""

    driver = "async"
    is_async = True
    has_terminate = True
    supports_statement_cache = True
    supports_server_side_cursors = True
    execution_ctx_cls = CasemateAsyncExecutionContext

    @classmethod
    def import_dbapi(cls) -> Any:
        import casemate.aio
        return AsyncAdapt_casemate_dbapi(casemate.aio, casemate_dbapi())

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        return pool.AsyncAdaptedQueuePool

    def get_driver_connection(self, connection: Any) -> Any:
        return connection._connection

    def do_terminate(self, dbapi_connection: Any) -> None:
        dbapi_connection.terminate()
