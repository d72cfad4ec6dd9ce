"""Storage backends behind one interface (:class:`Backend`)."""

from pathlib import Path

from .base import BUILTIN_GROUPS, Backend, Busy, StorageConnection, StorageCursor, UserRecord
from .sqlite import SQLiteBackend

__all__ = [
    "BUILTIN_GROUPS",
    "Backend",
    "Busy",
    "StorageConnection",
    "StorageCursor",
    "UserRecord",
    "SQLiteBackend",
    "open_backend",
]


def open_backend(kind: str, data_dir: Path, busy_timeout: float = 5.0) -> Backend:
    """Open the backend named in ``[storage] backend``."""
    if kind == "sqlite":
        return SQLiteBackend(data_dir, busy_timeout)
    raise ValueError(f"unknown storage backend {kind!r}")
