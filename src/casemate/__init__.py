"""Casemate: a client/server database for Python, with one-setting TLS encryption.

This package is a PEP 249 (DB-API 2.0) module::

    import casemate
    with casemate.connect("casemate://admin:secret@localhost:19812") as conn:
        cur = conn.cursor()
        cur.execute("SELECT ?", (42,))
        print(cur.fetchone())

The DB-API names are loaded on first use (PEP 562), not when the package is: the
server, the storage backends and the protocol are parts of this package too, and
importing one of them must not load the client, TLS and settings above it (the
walls of docs/architecture.md, checked by ``lint-imports``).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from .version import __version__

# Each public name -> the module that defines it, imported when the name is first used.
_EXPORTS = {
    **dict.fromkeys(
        ("apilevel", "threadsafety", "paramstyle", "connect", "Connection", "Cursor",
         "Date", "Time", "Timestamp", "DateFromTicks", "TimeFromTicks", "TimestampFromTicks",
         "Binary", "STRING", "BINARY", "NUMBER", "DATETIME", "ROWID"), "dbapi"),
    "Security": "client.params",
    "Json": "protocol.codec",
    **dict.fromkeys(
        ("Warning", "Error", "InterfaceError", "DatabaseError", "DataError",
         "OperationalError", "IntegrityError", "InternalError", "ProgrammingError",
         "NotSupportedError", "ProtocolError", "SecurityError"), "errors"),
}
# Subpackages an eager ``import casemate`` used to load, so ``casemate.errors`` (say)
# still works after a bare ``import casemate``.
_SUBMODULES = frozenset({"dbapi", "errors", "client", "protocol", "tls", "settings",
                         "keepalive"})

__all__ = [
    "__version__",
    "apilevel",
    "threadsafety",
    "paramstyle",
    "connect",
    "Connection",
    "Cursor",
    "Security",
    "Json",
    "Warning",
    "Error",
    "InterfaceError",
    "DatabaseError",
    "DataError",
    "OperationalError",
    "IntegrityError",
    "InternalError",
    "ProgrammingError",
    "NotSupportedError",
    "ProtocolError",
    "SecurityError",
    "Date",
    "Time",
    "Timestamp",
    "DateFromTicks",
    "TimeFromTicks",
    "TimestampFromTicks",
    "Binary",
    "STRING",
    "BINARY",
    "NUMBER",
    "DATETIME",
    "ROWID",
]

if TYPE_CHECKING:  # what type checkers see; not imported at run time
    from . import client, dbapi, errors, keepalive, protocol, settings, tls  # noqa: F401
    from .client.params import Security
    from .dbapi import (
        BINARY,
        DATETIME,
        NUMBER,
        ROWID,
        STRING,
        Binary,
        Connection,
        Cursor,
        Date,
        DateFromTicks,
        Time,
        TimeFromTicks,
        Timestamp,
        TimestampFromTicks,
        apilevel,
        connect,
        paramstyle,
        threadsafety,
    )
    from .errors import (
        DatabaseError,
        DataError,
        Error,
        IntegrityError,
        InterfaceError,
        InternalError,
        NotSupportedError,
        OperationalError,
        ProgrammingError,
        ProtocolError,
        SecurityError,
        Warning,
    )
    from .protocol.codec import Json


def __getattr__(name: str) -> object:
    """Load a public name (or one of the old eagerly loaded subpackages) on first use."""
    if name in _SUBMODULES:  # also asked by ``from .. import tls`` before it imports tls
        return importlib.import_module(f"{__name__}.{name}")
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_source(where), name)
    globals()[name] = value  # later uses find it without this hook
    return value


def _source(where: str) -> ModuleType:
    # Import statements, not importlib: lint-imports reads them, so the contracts see
    # that the root reaches the client, and refuse it to any part below the clients.
    # (``import casemate.x``, not ``from . import x``: that form asks __getattr__
    # whether the package already has ``x``.)
    if where == "dbapi":
        import casemate.dbapi
        return casemate.dbapi
    if where == "client.params":
        import casemate.client.params
        return casemate.client.params
    if where == "protocol.codec":
        import casemate.protocol.codec
        return casemate.protocol.codec
    import casemate.errors
    return casemate.errors


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})
