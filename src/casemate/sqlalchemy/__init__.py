"""SQLAlchemy 2.x dialects: ``casemate://`` (DB-API) and ``casemate+async://`` (asyncio).

SQL compilation, types and reflection are SQLAlchemy's own SQLite dialect
(the server runs SQLite); everything on the wire is Casemate's client::

    from sqlalchemy import create_engine
    engine = create_engine("casemate://admin:pw@db.example.com:19812?encryption=required",
                           pool_pre_ping=True)

URL query options (or ``connect_args``): ``tls_ca``, ``tls_cert``, ``tls_key``,
``encryption`` (``auto``/``required``), ``connect_timeout``,
``reconnect_attempts``, ``reconnect_delay``, ``program``.  The dialects are
registered as entry points by ``pip install casemate``.
"""

from __future__ import annotations

import sqlite3
from types import ModuleType, SimpleNamespace
from typing import Any

from sqlalchemy import exc, pool
from sqlalchemy import types as sqltypes
from sqlalchemy.connectors.asyncio import (
    AsyncAdapt_dbapi_connection,
    AsyncAdapt_dbapi_cursor,
    AsyncAdapt_dbapi_module,
)
from sqlalchemy.dialects.sqlite import base as sqlite_types
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL
from sqlalchemy.util.concurrency import await_

__all__ = ["CasemateDialect", "CasemateAsyncDialect"]

# The server's SQLite: SQLAlchemy only uses the version to pick SQL features;
# the client's own library is a stand-in of the same era (Casemate needs 3.35+).
SQLITE_VERSION_INFO = max(sqlite3.sqlite_version_info, (3, 35, 0))
_INT_OPTIONS = ("reconnect_attempts",)
_FLOAT_OPTIONS = ("connect_timeout", "reconnect_delay")
_STR_OPTIONS = ("tls_ca", "tls_cert", "tls_key", "encryption", "program")
_LOST = ("08006", "08001", "08003")


def _dbapi() -> Any:
    import casemate
    ns = SimpleNamespace(**{k: getattr(casemate, k) for k in casemate.__all__})
    ns.sqlite_version_info = SQLITE_VERSION_INFO
    ns.sqlite_version = ".".join(map(str, SQLITE_VERSION_INFO))
    ns.connect = casemate.connect
    return ns


def connect_kwargs(url: URL) -> dict[str, Any]:
    """``casemate://user:pw@host:port?opt=...`` -> keyword arguments of casemate.connect."""
    kw: dict[str, Any] = {"host": url.host or "localhost"}
    if url.port:
        kw["port"] = url.port
    if url.username:
        kw["user"] = url.username
    if url.password is not None:
        kw["password"] = str(url.password)
    for key, value in url.query.items():
        v = value[-1] if isinstance(value, tuple) else value
        if key in _INT_OPTIONS:
            kw[key] = int(v)
        elif key in _FLOAT_OPTIONS:
            kw[key] = float(v)
        elif key in _STR_OPTIONS:
            kw[key] = v
        else:
            raise exc.ArgumentError(f"unknown casemate URL option {key!r}; known: "
                                    + ", ".join(_INT_OPTIONS + _FLOAT_OPTIONS + _STR_OPTIONS))
    return kw


def _tolerant(base: type) -> type:
    """SQLAlchemy's SQLite date/time type, accepting values the server already parsed.

    Values are bound in SQLAlchemy's SQLite text format (so SQL comparisons on the
    column keep working); the server turns columns declared DATE/DATETIME/TIME back
    into Python objects, which SQLAlchemy's string parser must then let through.
    """
    class Tolerant(base):  # type: ignore[misc]
        def result_processor(self, dialect: Any, coltype: Any) -> Any:
            parse = super().result_processor(dialect, coltype)
            if parse is None:
                return None
            return lambda v: parse(v) if isinstance(v, str) else v
    Tolerant.__name__ = f"Casemate{base.__name__}"
    return Tolerant


class CasemateDialect(SQLiteDialect_pysqlite):
    """SQLite's SQL, over a Casemate connection."""

    driver = "casemate"
    supports_statement_cache = True
    colspecs = {
        **SQLiteDialect_pysqlite.colspecs,
        sqltypes.DateTime: _tolerant(sqlite_types.DATETIME),
        sqltypes.Date: _tolerant(sqlite_types.DATE),
        sqltypes.Time: _tolerant(sqlite_types.TIME),
        sqltypes.TIMESTAMP: _tolerant(sqlite_types.DATETIME),
    }

    @classmethod
    def import_dbapi(cls) -> Any:
        return _dbapi()

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        return pool.QueuePool

    def create_connect_args(self, url: URL) -> Any:
        return [], connect_kwargs(url)

    def _get_server_version_info(self, connection: Any) -> Any:
        return SQLITE_VERSION_INFO

    def on_connect(self) -> Any:
        def check_backend(conn: Any) -> None:
            backend = getattr(conn, "backend", "sqlite")
            if backend not in ("sqlite", ""):
                raise exc.ArgumentError(
                    f"this Casemate server stores its data in {backend}; the casemate:// "
                    "SQLAlchemy dialect speaks SQLite's SQL only in this version")
        return check_backend

    # Isolation: SQLite transactions are serializable; AUTOCOMMIT maps to the driver's
    # autocommit attribute (no PRAGMA: pragmas are restricted by the server).
    def get_isolation_level_values(self, dbapi_connection: Any) -> Any:
        return ["SERIALIZABLE", "AUTOCOMMIT"]

    def set_isolation_level(self, dbapi_connection: Any, level: Any) -> None:
        if level not in ("SERIALIZABLE", "AUTOCOMMIT"):
            raise exc.ArgumentError(f"isolation level {level!r}: use SERIALIZABLE or "
                                    "AUTOCOMMIT")
        dbapi_connection.autocommit = level == "AUTOCOMMIT"

    def get_isolation_level(self, dbapi_connection: Any) -> Any:
        return "AUTOCOMMIT" if dbapi_connection.autocommit else "SERIALIZABLE"

    def detect_autocommit_setting(self, dbapi_conn: Any) -> bool:
        return bool(dbapi_conn.autocommit)

    def get_default_isolation_level(self, dbapi_conn: Any) -> Any:
        return "SERIALIZABLE"

    def do_ping(self, dbapi_connection: Any) -> bool:
        dbapi_connection.ping()
        return True

    def is_disconnect(self, e: Any, connection: Any, cursor: Any) -> bool:
        code = getattr(e, "code", None)
        if code in _LOST:
            return True
        return "connection is closed" in str(e)


# -- asyncio ---------------------------------------------------------------------

class _AsyncCursor(AsyncAdapt_dbapi_cursor):
    __slots__ = ()


class _AsyncConnection(AsyncAdapt_dbapi_connection):
    __slots__ = ()
    _cursor_cls = _AsyncCursor

    @property
    def autocommit(self) -> bool:
        return bool(self._connection.autocommit)

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        if value and not self._connection.autocommit and self._connection.in_transaction:
            await_(self._connection.commit())
        self._connection.autocommit = value

    @property
    def backend(self) -> str:
        return str(self._connection.login.backend)

    def ping(self) -> None:
        await_(self._connection.ping())


class _AsyncDBAPI(AsyncAdapt_dbapi_module):
    def __init__(self, aio: ModuleType, sync: Any) -> None:
        super().__init__(aio, dbapi_module=sync)
        self.aio = aio
        self.paramstyle = "qmark"
        for name in ("Error", "Warning", "InterfaceError", "DatabaseError", "DataError",
                     "OperationalError", "IntegrityError", "InternalError",
                     "ProgrammingError", "NotSupportedError", "Binary",
                     "sqlite_version_info", "sqlite_version"):
            setattr(self, name, getattr(sync, name))

    def connect(self, *args: Any, **kw: Any) -> _AsyncConnection:
        creator = kw.pop("async_creator_fn", None)
        conn = await_((creator or self.aio.connect)(*args, **kw))
        return _AsyncConnection(self, conn)


class CasemateAsyncDialect(CasemateDialect):
    """``casemate+async://``: the same dialect over :mod:`casemate.aio`."""

    driver = "async"
    is_async = True
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> Any:
        import casemate.aio
        return _AsyncDBAPI(casemate.aio, _dbapi())

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        return pool.AsyncAdaptedQueuePool

    def get_driver_connection(self, connection: Any) -> Any:
        return connection._connection
