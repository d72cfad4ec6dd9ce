"""Which row path the SQLite backend runs: the compiled one (``_sqlite_rows``, built by
``pip install`` where a C compiler exists) or the pure-Python one, its twin and reference
(``sqlite3.Cursor.fetchmany`` + ``codec.pack``).

``CASEMATE_PURE=1`` in the environment forces the pure path (the test suite runs both).
The compiled path only takes what it can give exactly as the pure one would: one
read-only statement that returns rows, parameters of the types sqlite3 binds without
an adapter, no column whose declared type or name picks a converter.  Everything else,
and every statement that fails to prepare, runs through ``sqlite3`` as before.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from typing import Any

__all__ = ["COMPILED", "CONVERTERS", "ROW_PATH", "WHY_PURE", "engine_exception", "open_compiled",
           "open_statement", "statement_cache", "usable_on"]

# CPython versions whose pysqlite_Connection starts with its sqlite3* handle (checked).
_LAYOUT_VERSIONS = {(3, 11), (3, 12), (3, 13), (3, 14)}

# Python's sqlite3 error classes per primary result code (Modules/_sqlite/util.c).
_CLASSES: dict[int, type[Exception]] = {}
for _names, _cls in (
        (("INTERNAL", "NOTFOUND"), sqlite3.InternalError),
        (("ERROR", "PERM", "ABORT", "BUSY", "LOCKED", "READONLY", "INTERRUPT", "IOERR", "FULL",
          "CANTOPEN", "PROTOCOL", "EMPTY", "SCHEMA"), sqlite3.OperationalError),
        (("TOOBIG",), sqlite3.DataError),
        (("CONSTRAINT", "MISMATCH"), sqlite3.IntegrityError),
        (("MISUSE", "RANGE"), sqlite3.InterfaceError)):
    for _n in _names:
        _CLASSES[getattr(sqlite3, "SQLITE_" + _n)] = _cls
_PRIMARY = ("ABORT", "AUTH", "BUSY", "CANTOPEN", "CONSTRAINT", "CORRUPT", "EMPTY", "ERROR",
            "FORMAT", "FULL", "INTERNAL", "INTERRUPT", "IOERR", "LOCKED", "MISMATCH", "MISUSE",
            "NOLFS", "NOMEM", "NOTADB", "NOTFOUND", "PERM", "PROTOCOL", "RANGE", "READONLY",
            "SCHEMA", "TOOBIG")
_ERROR_NAMES = {getattr(sqlite3, n): n for n in dir(sqlite3)
                if n.startswith("SQLITE_") and n[7:].split("_")[0] in _PRIMARY}


def engine_exception(code: int, extended: int, message: str) -> BaseException:
    """The exception Python's sqlite3 raises for SQLite error ``code``: its class, the
    message, and ``sqlite_errorcode``/``sqlite_errorname`` (the extended code)."""
    if code == sqlite3.SQLITE_NOMEM:
        return MemoryError()
    e = _CLASSES.get(code, sqlite3.DatabaseError)(message)
    e.sqlite_errorcode = extended  # type: ignore[attr-defined]
    e.sqlite_errorname = _ERROR_NAMES.get(extended, _ERROR_NAMES.get(code, "SQLITE_UNKNOWN"))  # type: ignore[attr-defined]
    return e


def _load() -> tuple[Any, str]:
    if os.environ.get("CASEMATE_PURE", "") not in ("", "0"):
        return None, "CASEMATE_PURE is set"
    if sys.implementation.name != "cpython" or sys.version_info[:2] not in _LAYOUT_VERSIONS:
        return None, f"not built for {sys.implementation.name} {sys.version_info[:2]}"
    try:
        import _sqlite3

        from . import _sqlite_rows  # type: ignore[attr-defined]
        _sqlite_rows.configure(sqlite3.OperationalError, engine_exception, _sqlite3.__file__)
    except ImportError as e:
        return None, f"not built ({e})"
    return _sqlite_rows, ""


_compiled, WHY_PURE = _load()
COMPILED = _compiled is not None
ROW_PATH = "compiled" if COMPILED else f"pure Python: {WHY_PURE}"
# open_statement without its wrapper, for a caller that passes a tuple and CONVERTERS
# (the server's fast lane: StorageConnection.read_now); None on the pure path.
open_compiled: Any = _compiled.open_statement if COMPILED else None
CONVERTERS = sqlite3.converters  # (one dict for the process: register_converter fills it)


def usable_on(db: sqlite3.Connection, filename: str) -> bool:
    """Whether the compiled path may run statements on ``db`` (opened on ``filename``):
    the handle it reads is that connection's."""
    if _compiled is None or type(db) is not sqlite3.Connection:
        return False
    return any(_compiled.handle_matches(db, name)
               for name in {os.path.abspath(filename), os.path.realpath(filename)})


def statement_cache() -> Any:
    """A connection's cache of prepared statements for :func:`open_statement` (close it
    before the connection)."""
    return _compiled.Cache()


def open_statement(db: sqlite3.Connection, cache: Any, sql: str, params: Any) -> Any:
    """A compiled statement stepped to its first row, or None: run ``db.execute`` then
    (see the module's text).  Raises what ``db.execute`` would for an error of the
    statement's first step."""
    if type(params) is not tuple:
        params = tuple(params)
    return _compiled.open_statement(db, cache, sql, params, sqlite3.converters)
