"""The cursors of the SQLite backend's connections (:mod:`casemate.storage.sqlite`): a
statement's rows, fetched in batches and converted where its parameters were typed,
and the result of a write that committed though its stop was reported.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .base import Packed, StorageCursor, StorageError, type_code
from .sqlite_errors import ENGINE_ERRORS, engine_boundary, engine_error, translates_itself
from .sqlite_typer import convert_rows

if TYPE_CHECKING:
    from .sqlite import _Connection

__all__ = ["_Cursor", "_Done", "_Packed", "packed_failure"]


def _leaving(e: BaseException) -> BaseException:
    """``e`` as it may leave the backend: one of SQLite's own exceptions translated (for
    the methods that translate in their own body: sqlite_errors.translates_itself)."""
    return engine_error(e) if isinstance(e, ENGINE_ERRORS) else e


def _out_of_memory() -> StorageError:
    # Python's sqlite3 turns SQLITE_NOMEM (limits.max_sqlite_memory_mb reached) into
    # MemoryError: the statement fails, the session and the server go on.
    return StorageError("out of memory: the statement needs more memory than SQLite may use "
                        "(limits.max_sqlite_memory_mb, all sessions together)", "53200",
                        "select fewer or smaller values at once")


class _Declared(StorageCursor):
    _conn: _Connection
    _statement: tuple[str, Sequence[Any]]

    def declared_types(self) -> list[str | None]:
        width = len(self.description or ())
        sql, params = self._statement
        try:
            found = self._conn._typer.declared(sql, params, type_code,
                                               bool(self._conn._inline_until)) if sql else None
        except (sqlite3.OperationalError, sqlite3.DataError) as e:  # as a fetch would be:
            # stopped, or (DataError) a schema text over the event loop's value size
            # (TooLong: a thread reads it)
            raise _leaving(self._conn._denied(e)) from e
        return found if found is not None and len(found) == width else [None] * width


class _Cursor(_Declared):
    @translates_itself  # reads attributes only: nothing of SQLite's can fail here
    def __init__(self, cur: sqlite3.Cursor, conn: _Connection,
                 conv: list[tuple[int, Callable[[Any], Any]]] | None = None,
                 statement: tuple[str, Sequence[Any]] = ("", ())) -> None:
        self._cur = cur
        self._conn = conn
        self._conv = conv
        self._statement = statement
        d = cur.description
        self.description = [(c[0], None) for c in d] if d else None
        self.rowcount = cur.rowcount
        self.lastrowid = cur.lastrowid

    @translates_itself
    def fetch(self, n: int) -> list[tuple[Any, ...]]:
        try:
            rows = self._cur.fetchmany(n)
        except MemoryError as e:
            raise _out_of_memory() from e
        except (sqlite3.OperationalError, sqlite3.DataError) as e:
            raise _leaving(self._conn._denied(e)) from e
        except ENGINE_ERRORS as e:
            raise engine_error(e) from e
        if self._conv:  # typed parameters selected back (sqlite_types.ResultTyper)
            return convert_rows(rows, self._conv)
        return rows

    @translates_itself
    def close(self) -> None:
        try:
            self._cur.close()
        except ENGINE_ERRORS as e:
            raise engine_error(e) from e


class _Packed(_Declared):
    """A read-only statement run by the compiled row path (sqlite_rows.py): its rows go
    from SQLite into msgpack without Python objects (``pack``); ``fetch`` gives tuples,
    as ``_Cursor`` does, for the callers that want values."""

    @translates_itself  # reads attributes only
    def __init__(self, st: Any, conn: _Connection, statement: tuple[str, Sequence[Any]]) -> None:
        self._st = st
        self._conn = conn
        self._statement = statement
        self.description = [(c[0], None) for c in st.description]
        self.rowcount = -1
        self.lastrowid = st.lastrowid

    @translates_itself
    def fetch(self, n: int) -> list[tuple[Any, ...]]:
        try:
            return self._st.rows(n)  # type: ignore[no-any-return]
        except Exception as e:
            raise self._failed(e) from e

    @translates_itself
    def pack(self, max_rows: int, max_bytes: int, describe: bool) -> Packed:
        try:
            types = self._st.first_types() if describe else []
            body, n, more = self._st.pack(max_rows, max_bytes)
        except Exception as e:
            raise self._failed(e) from e
        return Packed(body, n, more, types)

    def _failed(self, e: Exception) -> BaseException:
        return packed_failure(self._conn, e)

    @translates_itself  # finalizing cannot fail
    def close(self) -> None:
        self._st.close()


def packed_failure(conn: _Connection, e: Exception) -> BaseException:
    """What a compiled statement's failure while it steps or packs leaves the backend as."""
    if isinstance(e, MemoryError):
        return _out_of_memory()
    if isinstance(e, sqlite3.OperationalError | sqlite3.DataError):
        return _leaving(conn._denied(e))
    return engine_error(e) if isinstance(e, ENGINE_ERRORS) else e


class _Done(StorageCursor):
    """A write that committed though its stop was reported: no rows, its count and rowid."""

    description = None

    def __init__(self, rowcount: int, lastrowid: int | None) -> None:
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    def fetch(self, n: int) -> list[tuple[Any, ...]]:
        return []

    def close(self) -> None:
        pass


# SQLite's exceptions leave it as StorageError (sqlite_errors.py).
engine_boundary(_Cursor)
engine_boundary(_Packed)
