"""Whole SQLite database files, handled outside a running server.

``casemate backup`` copies ``Data/*.sqlite`` with SQLite's online backup API and
checks the copy; ``casemate check`` reads a data file for rounded decimals.  That
work opens the engine directly, so it lives here, in the only part that imports
``sqlite3`` (docs/architecture.md); the CLI keeps the folders, the progress bar
and the messages.  SQLite's exceptions leave this module as StorageError.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from . import sqlite_types
from .sqlite_errors import engine_boundary, translated

__all__ = ["Snapshot", "integrity_of_file", "rounded_decimal_columns_of_file"]

PAGES_PER_STEP = 256


class Snapshot:
    """One read transaction on a database file, copied out while clients keep reading
    and writing: the copy is consistent, and writers never restart it."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            self._db.execute("BEGIN")
            self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes it
            self.pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        except BaseException:
            self._db.close()
            raise

    def copy_to(self, path: Path, progress: Callable[[int], None] = lambda done: None) -> None:
        """Write the snapshot to a new file ``path`` (one self-contained file, no WAL);
        ``progress(pages copied)`` is called as it goes."""
        dst = sqlite3.connect(path)
        try:
            self._db.backup(dst, pages=PAGES_PER_STEP,
                            progress=lambda status, remaining, total: progress(total - remaining))
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()

    def close(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("COMMIT")
        finally:
            self._db.close()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@translated
def integrity_of_file(path: Path) -> str:
    """``"ok"`` or the damage SQLite finds in a file no one writes (a backup); reads it
    as it is, creating no -wal/-shm files beside it."""
    db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    sqlite_types.install(db)  # the typed columns' CHECKs and collation name its functions
    try:
        return "; ".join(r[0] for r in db.execute("PRAGMA integrity_check").fetchall())
    except sqlite3.DatabaseError as e:
        return str(e)
    finally:
        db.close()


@translated
def rounded_decimal_columns_of_file(path: Path) -> list[tuple[str, str, int]]:
    """:func:`sqlite_types.rounded_decimal_columns` of a data file, opened read-only
    (it creates nothing)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return sqlite_types.rounded_decimal_columns(db)
    finally:
        db.close()


engine_boundary(Snapshot)  # SQLite's exceptions leave it as StorageError
