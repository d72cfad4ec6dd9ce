"""Casemate: a client/server database for Python, with one-setting TLS encryption.

This package is a PEP 249 (DB-API 2.0) module::

    import casemate
    with casemate.connect("casemate://admin:secret@localhost:19812") as conn:
        cur = conn.cursor()
        cur.execute("SELECT ?", (42,))
        print(cur.fetchone())
"""

__version__ = "0.1.0"

from .client.params import Security  # noqa: E402
from .dbapi import (  # noqa: E402
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
from .errors import (  # noqa: E402
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
from .protocol.codec import Json  # noqa: E402

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
