"""Storage backends behind one interface (:class:`Backend`)."""

import importlib
from pathlib import Path

from ..settings import LimitsSettings, StorageSettings
from .base import (
    BUILTIN_GROUPS,
    Backend,
    Busy,
    Interrupted,
    StorageConnection,
    StorageCursor,
    StorageError,
    TooLong,
    UserRecord,
)
from .sqlite import SQLiteBackend

__all__ = [
    "BUILTIN_GROUPS",
    "Backend",
    "Busy",
    "Interrupted",
    "TooLong",
    "StorageError",
    "StorageConnection",
    "StorageCursor",
    "UserRecord",
    "SQLiteBackend",
    "open_backend",
]


def open_backend(settings: StorageSettings, data_dir: Path,
                 limits: LimitsSettings | None = None) -> Backend:
    """Open the backend named in ``[storage] backend``; raises StorageError if it cannot."""
    if settings.backend == "sqlite":
        return SQLiteBackend(data_dir, settings.busy_timeout_seconds,
                             settings.sqlite_mmap_mb * 1024 * 1024, limits)
    if settings.backend == "postgresql":
        try:
            module = importlib.import_module("casemate.storage.postgresql")
        except ImportError as e:
            raise StorageError(f"the postgresql storage backend is not available: {e}",
                               "0A000", "install it with: pip install 'casemate[postgresql]'"
                               ) from e
        backend: Backend = module.PostgreSQLBackend(settings, limits)
        return backend
    raise ValueError(f"unknown storage backend {settings.backend!r}")
