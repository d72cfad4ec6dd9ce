"""The ``casemate://`` dialect: SQLAlchemy's SQLite dialect over Casemate's DB-API client.

What comes from SQLAlchemy's SQLite dialect: SQL compilation, types, DDL and
reflection (``sqlite_master``, ``PRAGMA table_xinfo`` ... which the server
allows).  What is Casemate's own: the DB-API (:mod:`casemate`), connection
options, transactions (the server opens a transaction before the first
statement when ``autocommit`` is off, so the dialect never sends ``BEGIN``),
disconnect detection and ``pool_pre_ping``, and the storage backend check.

Everything the pysqlite dialect does through the local ``sqlite3`` module is
replaced here: the SQLite version comes from the server, isolation levels map
to the driver's ``autocommit`` attribute (no ``PRAGMA read_uncommitted``: the
server restricts pragmas), and no Python function is registered (``REGEXP``
would have to run on the server).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from sqlalchemy import exc, pool
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects.sqlite import base as sqlite_base
from sqlalchemy.dialects.sqlite.json import JSON as SQLiteJSON
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL

__all__ = ["CasemateDialect", "connect_kwargs", "BACKENDS", "SQLITE_VERSION_INFO"]

#: Stand-in for the server's SQLite version until the first connection reports the real
#: one (``dialect.server_version_info``).  SQLAlchemy's SQLite dialect reads
#: ``dbapi.sqlite_version_info`` when it is created, to pick SQL features; the server
#: needs SQLite 3.35 or later (RETURNING), and SQLAlchemy 2 picks nothing by a later
#: version, so that floor it is.  (Not the client's own sqlite3: the client never opens
#: SQLite, and the server's library may differ.)
SQLITE_VERSION_INFO: tuple[int, ...] = (3, 35, 0)

#: Storage backends, by the name the server reports at login (``Connection.backend``),
#: and the SQLAlchemy dialect that speaks their SQL.
#:
#: PostgreSQL hook: a PostgreSQL-storage server takes PostgreSQL's SQL (its ``?``
#: parameters are translated server-side), so its dialect would subclass
#: ``sqlalchemy.dialects.postgresql.base.PGDialect`` with ``import_dbapi()`` returning
#: :func:`casemate_dbapi`, ``default_paramstyle = "qmark"`` and the connection,
#: ping and disconnect methods of :class:`CasemateDialect`.  SQLAlchemy picks the
#: dialect class from the URL before any connection exists, so that dialect would be
#: chosen in ``CasemateDialect.get_dialect_cls(url)`` (from a URL option, or by asking
#: the server with one login) and listed here.  Until then a server whose backend is
#: not listed is refused at connect time with a clear error.
BACKENDS: dict[str, str] = {"sqlite": "casemate.sqlalchemy:CasemateDialect"}

_INT_OPTIONS = ("reconnect_attempts",)
_FLOAT_OPTIONS = ("connect_timeout", "reconnect_delay", "keepalive")
_STR_OPTIONS = ("tls_ca", "tls_cert", "tls_key", "encryption", "program")
# Codes after which the connection is unusable: lost or refused connection (08007: lost with
# a commit's outcome unknown), protocol violation, server shutdown, session dropped by an
# administrator, idle timeout, idle in a transaction.
_DISCONNECT_CODES = frozenset({"08006", "08007", "08001", "08003", "08P01", "57P01", "57P02",
                               "57P05", "25P03"})


def casemate_dbapi() -> Any:
    """The :mod:`casemate` module's PEP 249 names, plus what SQLite's dialect reads."""
    import casemate
    ns = SimpleNamespace(**{k: getattr(casemate, k) for k in casemate.__all__})
    ns.sqlite_version_info = SQLITE_VERSION_INFO
    ns.sqlite_version = ".".join(map(str, SQLITE_VERSION_INFO))
    return ns


def connect_kwargs(url: URL) -> dict[str, Any]:
    """``casemate://user:pw@host:port?opt=...`` -> keyword arguments of :func:`casemate.connect`."""
    if url.database:
        raise exc.ArgumentError(
            f"casemate URL {url.render_as_string()!r}: a Casemate server serves one database, "
            f"so the URL has no database part; remove '/{url.database}'")
    kw: dict[str, Any] = {"host": url.host or "localhost"}
    if url.port:
        kw["port"] = url.port
    if url.username:
        kw["user"] = url.username
    if url.password is not None:
        kw["password"] = str(url.password)
    for key, value in url.query.items():
        v = value[-1] if isinstance(value, tuple) else value
        try:
            if key in _INT_OPTIONS:
                kw[key] = int(v)
            elif key in _FLOAT_OPTIONS:
                kw[key] = float(v)
            elif key in _STR_OPTIONS:
                kw[key] = v
            else:
                raise exc.ArgumentError(
                    f"unknown casemate URL option {key!r}; known: "
                    + ", ".join(_INT_OPTIONS + _FLOAT_OPTIONS + _STR_OPTIONS))
        except ValueError as e:
            raise exc.ArgumentError(f"casemate URL option {key}={v!r}: {e}") from None
    return kw


def _lenient(base: type[Any]) -> type[Any]:
    """SQLAlchemy's SQLite date/time type, accepting values the server already parsed.

    Values are bound in SQLAlchemy's SQLite text format (so SQL comparisons on the
    column keep working); the server turns columns declared DATE/DATETIME/TIMESTAMP/TIME
    back into Python objects, which SQLAlchemy's string parser must then let through.
    """
    class Lenient(base):  # type: ignore[misc]
        def result_processor(self, dialect: Any, coltype: Any) -> Any:
            parse = super().result_processor(dialect, coltype)
            if parse is None:
                return None
            return lambda v: parse(v) if isinstance(v, str) else v
    Lenient.__name__ = Lenient.__qualname__ = f"Casemate{base.__name__}"
    return Lenient


def _to_float(value: Any) -> float | None:
    return None if value is None else float(value)


class CasemateNumeric(sqltypes.Numeric):  # type: ignore[type-arg]
    """NUMERIC/DECIMAL: the server hands back Decimal for these columns (pysqlite gives
    float), so ``asdecimal=False`` needs a conversion that SQLite's dialect omits."""

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        if not self.asdecimal:
            return _to_float
        return super().result_processor(dialect, coltype)  # type: ignore[no-untyped-call]


class CasemateJSON(SQLiteJSON):
    """JSON columns: the server already hands back the Python object (docs/types.md);
    an engine's own ``json_deserializer`` still gets the JSON text."""

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        custom = getattr(dialect, "_json_deserializer", None)
        if custom is None:
            return None
        return lambda v: None if v is None else custom(json.dumps(v))


# Casemate stores a DECIMAL/NUMERIC/JSON column as "DECIMAL TEXT(p,s)" (TEXT affinity keeps
# exact digits) and checks typed columns with CHECKs named "22xxx:TYPE:column"
# (storage/sqlite_types.py): reflection shows the types and constraints the user wrote.
_STORED_AS_TEXT = re.compile(r"(?i)^\s*(DECIMAL|NUMERIC|JSONB?) TEXT\b")
_TYPE_CHECK = re.compile(r"^22\w{3}:\w+:")


class CasemateExecutionContext(sqlite_base.SQLiteExecutionContext):
    def post_exec(self) -> None:
        super().post_exec()  # type: ignore[no-untyped-call]
        # Casemate's cursor forgets rowcount when closed, and SQLAlchemy reads it after
        # closing the cursor of an executemany INSERT: keep it now.
        if self.cursor.description is None and self._rowcount is None:
            self._rowcount = self.cursor.rowcount


class CasemateDialect(SQLiteDialect_pysqlite):
    """SQLite's SQL, over a Casemate connection (``casemate://``)."""

    name = "sqlite"  # SQL, types and reflection are SQLite's (dialect-specific kwargs too)
    driver = "casemate"
    supports_statement_cache = True
    casemate_backend = "sqlite"  # what the server must report at login
    execution_ctx_cls = CasemateExecutionContext

    colspecs = {
        **SQLiteDialect_pysqlite.colspecs,
        sqltypes.DateTime: _lenient(sqlite_base.DATETIME),
        sqltypes.Date: _lenient(sqlite_base.DATE),
        sqltypes.Time: _lenient(sqlite_base.TIME),
        sqltypes.TIMESTAMP: _lenient(sqlite_base.DATETIME),
        sqltypes.Numeric: CasemateNumeric,
        sqltypes.Float: sqltypes.Float,  # unchanged (a Numeric subclass in SQLAlchemy 2.0)
        sqltypes.JSON: CasemateJSON,
    }

    def _resolve_type_affinity(self, type_: str) -> Any:
        return super()._resolve_type_affinity(  # type: ignore[no-untyped-call]
            _STORED_AS_TEXT.sub(r"\1", type_))

    def get_check_constraints(self, connection: Any, table_name: str, schema: str | None = None,
                              **kw: Any) -> Any:
        found = super().get_check_constraints(  # type: ignore[no-untyped-call]
            connection, table_name, schema, **kw)
        return [c for c in found if not _TYPE_CHECK.match(c.get("name") or "")]

    @classmethod
    def import_dbapi(cls) -> Any:
        return casemate_dbapi()

    def retrieve_dbapi_version(self, dbapi: Any) -> Any:
        import casemate
        return tuple(int(p) for p in casemate.__version__.split(".") if p.isdigit())

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        return pool.QueuePool  # a network database: never SQLite's single-connection pools

    def create_connect_args(self, url: URL) -> Any:
        return [], connect_kwargs(url)

    def connect(self, *cargs: Any, **cparams: Any) -> Any:
        conn = super().connect(*cargs, **cparams)
        try:
            self.check_backend(str(conn.backend))
        except BaseException:
            conn.close()
            raise
        return conn

    def check_backend(self, backend: str) -> None:
        """Refuse a server whose storage speaks another SQL than this dialect."""
        if backend in ("", self.casemate_backend):
            return
        import casemate
        raise casemate.NotSupportedError(
            f"this Casemate server stores its data in {backend!r}, whose SQL is not "
            f"{self.casemate_backend!r}: the SQLAlchemy dialect of this Casemate version speaks "
            "SQLite's SQL only (servers with SQLite storage)", "0A000",
            "use the casemate DB-API (casemate.connect) with that server's own SQL; "
            "see docs/sqlalchemy.md")

    def _get_server_version_info(self, connection: Any) -> Any:
        if connection is None:
            return SQLITE_VERSION_INFO
        try:
            version = connection.exec_driver_sql("SELECT sqlite_version()").scalar()
        except exc.DBAPIError:
            return SQLITE_VERSION_INFO
        return tuple(int(p) for p in str(version).split(".") if p.isdigit())

    def on_connect(self) -> Callable[[Any], None] | None:  # type: ignore[override]
        # pysqlite registers regexp() and floor() in the local sqlite3 connection; the
        # SQL runs on the server here, so there is nothing to register.
        return None

    # Isolation: SQLite transactions are serializable; AUTOCOMMIT maps to the driver's
    # autocommit attribute.  No PRAGMA read_uncommitted: it has no effect without a
    # shared cache, and pragmas are restricted on the server.
    def get_isolation_level_values(self, dbapi_connection: Any) -> Any:
        return ["SERIALIZABLE", "AUTOCOMMIT"]

    def set_isolation_level(self, dbapi_connection: Any, level: Any) -> None:
        if level not in ("SERIALIZABLE", "AUTOCOMMIT"):  # SQLAlchemy checks first; be sure
            raise exc.ArgumentError(f"isolation level {level!r}: use SERIALIZABLE or AUTOCOMMIT")
        dbapi_connection.autocommit = level == "AUTOCOMMIT"

    def get_isolation_level(self, dbapi_connection: Any) -> Any:
        return "AUTOCOMMIT" if dbapi_connection.autocommit else "SERIALIZABLE"

    def detect_autocommit_setting(self, dbapi_conn: Any) -> bool:
        return bool(dbapi_conn.autocommit)

    def get_default_isolation_level(self, dbapi_conn: Any) -> Any:
        return "SERIALIZABLE"

    # Liveness: one protocol round trip, no SQL (works in any transaction state).
    def do_ping(self, dbapi_connection: Any) -> bool:
        dbapi_connection.ping()
        return True

    def is_disconnect(self, e: Any, connection: Any, cursor: Any) -> bool:
        if getattr(e, "code", None) in _DISCONNECT_CODES:
            return True
        return "connection is closed" in str(e)
