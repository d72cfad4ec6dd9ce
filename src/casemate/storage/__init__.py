"""Storage backends behind one interface (:class:`Backend`)."""

from pathlib import Path

from ..settings import StorageSettings
from .base import (
    BUILTIN_GROUPS,
    Backend,
    Busy,
    StorageConnection,
    StorageCursor,
    StorageError,
    UserRecord,
)
from .sqlite import SQLiteBackend

__all__ = [
    "BUILTIN_GROUPS",
    "Backend",
    "Busy",
    "StorageError",
    "StorageConnection",
    "StorageCursor",
    "UserRecord",
    "SQLiteBackend",
    "open_backend",
]


def open_backend(settings: StorageSettings, data_dir: Path) -> Backend:
    """Open the backend named in ``[storage] backend``; raises StorageError if it cannot."""
    if settings.backend == "sqlite":
        return SQLiteBackend(data_dir, settings.busy_timeout_seconds)
    if settings.backend == "postgresql":
        from .postgresql import PostgreSQLBackend
        return PostgreSQLBackend(settings)
    raise ValueError(f"unknown storage backend {settings.backend!r}")
