"""The service role of the PostgreSQL backend: the role of ``storage.dsn``, whose password
Casemate reads from the environment or a private file (never from casemate.toml).  It reads
users and grants and manages the group roles over a small pool of its own; it never runs a
client's SQL.  Every connection of the backend, the groups' too, is opened here.

Part of the PostgreSQL backend (:mod:`casemate.storage.postgresql`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.string import TextLoader

from ..settings import StorageSettings
from .base import StorageError
from .pg_errors import _NO_SCHEMA_HINT, _UNAVAILABLE_HINT, _connect_error, _error, log
from .pg_pool import _Pool
from .pg_values import _TEXT_TYPES, _DictDumper, _Float8Dumper, _NumericDumper


def check_dsn(dsn: str) -> None:
    """Refuse a DSN that carries a password: it would sit in casemate.toml, readable by anyone
    who can read the folder."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:
        return  # reported, with libpq's reason, where the DSN is used
    if parts.get("password"):
        raise StorageError(
            "storage.dsn contains a password; Casemate does not keep passwords in casemate.toml",
            "28P01", "remove password= (or user:password@) from the DSN and put the password in "
            "$CASEMATE_PG_PASSWORD, or in a file named by storage.password_file (chmod 600)")


def _check_private(path: Path) -> None:
    """A password file must belong to the server's user and be closed to everyone else."""
    try:
        st = path.stat()
    except OSError:
        return  # reported when it is read
    if st.st_mode & 0o077 or st.st_uid != os.geteuid():
        raise StorageError(
            f"storage.password_file {path} is not private (mode {st.st_mode & 0o777:04o}, owner "
            f"uid {st.st_uid}): the server refuses to start", "F0000",
            f"chmod 600 {path} and make it belong to the user the server runs as")


class _Service:
    """Connections of the service role, and the opening of every connection."""

    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        self._secret = self._read_password()
        try:
            self.dsn_parts = conninfo_to_dict(settings.dsn)
        except psycopg.Error as e:
            raise StorageError(f"storage.dsn is not a valid PostgreSQL connection string: {e}",
                               "08001") from e
        options = str(self.dsn_parts.get("options", "") or "")
        lock_ms = max(1, int(settings.busy_timeout_seconds * 1000))
        self.group_options = f"{options} -c lock_timeout={lock_ms}".strip()
        # The service role resolves names in pg_catalog only: an admin's function or operator
        # in public (an exact match for oid = regclass, say) would otherwise run as the service
        # role, which reads every group's password and may be a superuser.
        self._service_options = f"{options} -c search_path=pg_catalog,pg_temp".strip()
        self.serving = False  # after check(): connection errors go to the log, not to users
        self._sys = _Pool(2, 30.0, self.connect, "service connections", reset=False)
        self._sys.put(self._sys.get(""))  # fail now, clearly, if PostgreSQL is unreachable

    def _read_password(self) -> str | None:
        s = self.settings
        check_dsn(s.dsn)
        if s.password_env and os.environ.get(s.password_env):
            return os.environ[s.password_env]
        if s.password_file:
            _check_private(Path(s.password_file).expanduser())
            try:
                lines = Path(s.password_file).expanduser().read_text().splitlines()
            except OSError as e:
                raise StorageError(f"cannot read storage.password_file {s.password_file}: "
                                   f"{e.strerror or e}", "28P01") from e
            return lines[0].strip() if lines else ""
        return None

    def _password_hint(self) -> str:
        s = self.settings
        return (f"put the password of the PostgreSQL role in ${s.password_env}"
                + (f" or in {s.password_file}" if s.password_file else
                   " or in a file named by storage.password_file"))

    def open(self, conninfo: str, who: str) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(conninfo, autocommit=True, prepare_threshold=None)
        except psycopg.Error as e:
            err = _connect_error(e, self.settings.dsn, who, self._password_hint())
            if not self.serving:  # casemate init, serve's start, the CLI: its administrator
                raise err from None
            log.error("cannot connect to PostgreSQL: %s (%s)", err.message, err.hint)
            raise StorageError("storage unavailable: the server cannot reach its database",
                               err.code, _UNAVAILABLE_HINT) from None
        for t in _TEXT_TYPES:
            try:
                conn.adapters.register_loader(t, TextLoader)
            except psycopg.Error:
                pass
        conn.adapters.register_dumper(dict, _DictDumper)
        conn.adapters.register_dumper(float, _Float8Dumper)
        conn.adapters.register_dumper(Decimal, _NumericDumper)
        return conn

    def connect(self, _key: str, tcp: dict[str, Any] | None = None) -> psycopg.Connection[Any]:
        extra: dict[str, Any] = {"application_name": "casemate (service)",
                                 "options": self._service_options}
        extra.update({k: v for k, v in (tcp or {}).items() if k not in self.dsn_parts})
        if "connect_timeout" not in self.dsn_parts:
            extra["connect_timeout"] = 10
        if self._secret is not None:
            extra["password"] = self._secret
        return self.open(make_conninfo(self.settings.dsn, **extra),
                          str(self.dsn_parts.get("user") or "(default user)"))

    def q(self, query: str | pgsql.Composable, params: Sequence[Any] | None = None,
          fetch: bool = True) -> list[tuple[Any, ...]]:
        """One statement on a service connection (autocommit)."""
        p = self._sys.get("")
        try:
            cur = p.conn.execute(query, params)  # type: ignore[arg-type]
            rows = list(cur.fetchall()) if fetch and cur.description else []
        except psycopg.Error as e:
            self._sys.put(p)
            raise self.schema_error(e) from e
        self._sys.put(p)
        return rows

    def txn(self, work: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        """Several statements on a service connection, in one transaction."""
        p = self._sys.get("")
        try:
            with p.conn.transaction():
                return work(p.conn)
        except psycopg.Error as e:
            raise self.schema_error(e) from e
        finally:
            self._sys.put(p)

    @staticmethod
    def schema_error(e: psycopg.Error) -> StorageError:
        err = _error(e)
        if err.code in ("3F000", "42P01") and ('"casemate.' in err.message
                                                or 'schema "casemate"' in err.message):
            return StorageError("this PostgreSQL database has no Casemate schema", "3F000",
                                _NO_SCHEMA_HINT)
        return err

    def close(self) -> None:
        self._sys.close()
