"""SQLite's exceptions, translated where they leave the SQLite backend.

Nothing above the storage wall knows ``sqlite3`` (an import-linter contract keeps
it that way): each public method of the backend's classes is wrapped by
:func:`engine_boundary`, so a ``sqlite3`` exception leaves it as a
:class:`~casemate.storage.base.StorageError` carrying Casemate's code, as the
PostgreSQL backend's errors leave it with PostgreSQL's SQLSTATE.  What the
backend raises on purpose (Busy, PermissionDenied, a StorageError) passes
through unchanged.
"""

from __future__ import annotations

import functools
import inspect
import sqlite3
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from ..errors import Codes
from .base import StorageError

__all__ = ["engine_error", "engine_boundary", "translated", "translates_itself", "ENGINE_ERRORS"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

# SQLITE_ERROR covers many failures: only its message tells them apart, by how it
# starts or ends (never by a word anywhere in it: that may be the user's table name).
_NO_SUCH_TABLE = "no such table:"
_NEAR, _SYNTAX_ERROR = 'near "', ": syntax error"  # near "SELEC": syntax error
_INCOMPLETE = "incomplete input"
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
ENGINE_ERRORS = (sqlite3.Error, sqlite3.Warning)


def engine_error(e: sqlite3.Error | sqlite3.Warning) -> StorageError:
    """The StorageError for one of SQLite's exceptions: its message, Casemate's code."""
    msg = str(e)
    if isinstance(e, sqlite3.IntegrityError):
        return StorageError(msg, Codes.INTEGRITY)
    if isinstance(e, sqlite3.DataError):
        return StorageError(msg, Codes.DATA)
    if isinstance(e, sqlite3.OperationalError):
        return _operational(e, msg)
    if isinstance(e, sqlite3.ProgrammingError | sqlite3.Warning):
        return StorageError(msg, Codes.PROGRAMMING)
    if isinstance(e, sqlite3.NotSupportedError):
        return StorageError(msg, Codes.NOT_SUPPORTED)
    return StorageError(msg, Codes.OPERATIONAL)


def _operational(e: sqlite3.OperationalError, msg: str) -> StorageError:
    code = getattr(e, "sqlite_errorcode", 0)
    if code & 0xFF in _BUSY:
        # Met where no retry is possible: a statement meeting the write lock raises Busy
        # instead (the backend's _denied), and the session retries it.
        return StorageError("database is busy: another session holds the write lock",
                            Codes.BUSY, "roll back and retry the transaction")
    if code == sqlite3.SQLITE_AUTH:  # "not authorized"
        return StorageError(msg, Codes.INSUFFICIENT_PRIVILEGE)
    if msg.startswith(_NO_SUCH_TABLE):
        return StorageError(msg, Codes.UNDEFINED_TABLE)
    if (msg.startswith(_NEAR) and msg.endswith(_SYNTAX_ERROR)) or msg == _INCOMPLETE:
        return StorageError(msg, Codes.SYNTAX_ERROR)
    return StorageError(msg, Codes.PROGRAMMING)


def translated(fn: Callable[_P, _T]) -> Callable[_P, _T]:
    """``fn``, with SQLite's exceptions leaving it as StorageError."""
    @functools.wraps(fn)
    def call(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return fn(*args, **kwargs)
        except ENGINE_ERRORS as e:
            raise engine_error(e) from e
    return call


def translates_itself(fn: Callable[_P, _T]) -> Callable[_P, _T]:
    """Mark a method of the request path that catches SQLite's exceptions in its own body
    (``except ENGINE_ERRORS``), so :func:`engine_boundary` leaves it unwrapped: a wrapper
    is one more Python call, and a lookup makes about ten such calls."""
    fn.__casemate_translates__ = True  # type: ignore[attr-defined]
    return fn


def engine_boundary(*classes: type) -> None:
    """Wrap the constructor and every public method each class defines, so SQLite's
    exceptions leave it as StorageError (its private helpers run inside those); a method
    marked :func:`translates_itself` does it in its own body."""
    for cls in classes:
        for name, fn in list(vars(cls).items()):
            if inspect.isfunction(fn) and (name == "__init__" or not name.startswith("_")) \
                    and not getattr(fn, "__casemate_translates__", False):
                setattr(cls, name, translated(fn))
