"""PostgreSQL's errors as Casemate's: a StorageError with PostgreSQL's own SQLSTATE and a
hint, and the reasons a connection could not be opened (never with the DSN's password).

Part of the PostgreSQL backend (:mod:`casemate.storage.postgresql`).
"""

from __future__ import annotations

import logging

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .base import StorageError

log = logging.getLogger("casemate.storage.postgresql")  # the backend's log, whatever module

_NO_SCHEMA_HINT = "run: casemate init DIR --storage postgresql --dsn '...' (once per database)"


def _error(e: psycopg.Error) -> StorageError:
    """psycopg's error -> StorageError carrying PostgreSQL's own SQLSTATE."""
    code = e.sqlstate
    diag = e.diag
    msg = (diag.message_primary or str(e)).strip()
    if diag.message_detail:
        msg += f" ({diag.message_detail.strip()})"
    hint = diag.message_hint
    if code is None:  # raised by psycopg itself, not by the server
        if isinstance(e, psycopg.OperationalError | psycopg.InterfaceError):
            code = "08006"
            log.warning("lost a session's connection to PostgreSQL: %s", msg)
            msg = "storage unavailable: lost the connection to the database"
            hint = _UNAVAILABLE_HINT
        elif isinstance(e, psycopg.DataError):
            code = "22000"
        elif isinstance(e, psycopg.ProgrammingError | psycopg.NotSupportedError):
            code = "42000"
        else:
            code = "58000"
    elif code == "42501":
        hint = hint or "an administrator can grant it: casemate group grant TARGET GROUP TABLE RIGHT"
    elif code == "55P03":
        hint = hint or ("another session holds a lock for longer than "
                        "storage.busy_timeout_seconds; roll back and retry")
    elif code == "25P02":
        hint = hint or "roll back: in PostgreSQL a failed statement ends the transaction"
    return StorageError(msg, code, hint)


_UNAVAILABLE_HINT = "try again later; the server's log tells its administrator why"


def _safe_dsn(dsn: str) -> str:
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(unparsable dsn)"
    parts.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in parts.items())


def _connect_error(e: psycopg.Error, dsn: str, who: str, password_hint: str) -> StorageError:
    text = " ".join(str(e).split())
    low = text.lower()
    if "password authentication failed" in low or "no password supplied" in low:
        return StorageError(f"PostgreSQL refused the password of role {who}: {text}", "28P01",
                            password_hint)
    if "does not exist" in low and "database" in low:
        return StorageError(f"cannot connect to PostgreSQL ({_safe_dsn(dsn)}): {text}", "3D000",
                            "create the database first (createdb), or fix dbname in "
                            "storage.dsn")
    if "role" in low and "does not exist" in low:
        return StorageError(f"cannot connect to PostgreSQL ({_safe_dsn(dsn)}): {text}", "28000",
                            "fix user in storage.dsn")
    if "no pg_hba.conf entry" in low:
        return StorageError(f"PostgreSQL refuses connections of role {who}: {text}", "28000",
                            "allow the role in PostgreSQL's pg_hba.conf (Casemate's group roles "
                            "log in too: see docs/postgresql.md)")
    return StorageError(f"cannot connect to PostgreSQL ({_safe_dsn(dsn)}): {text}", "08001",
                        "check that PostgreSQL runs and storage.dsn (host, port, sslmode)")
