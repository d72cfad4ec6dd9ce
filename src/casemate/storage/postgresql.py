"""The PostgreSQL storage backend: several Casemate servers over one PostgreSQL database.

Data, users, groups and grants live in PostgreSQL (users, groups and grant
rows in the ``casemate`` schema, which no Casemate session can reach), so
every Casemate server over the same database agrees on them.  Grants are
enforced by PostgreSQL itself: one NOLOGIN role per Casemate group, and each
session's connection does ``SET ROLE`` to its group's role.  Each Casemate
transaction is one PostgreSQL transaction on one pooled connection.

Clients send PostgreSQL's SQL; their ``?`` parameters are translated to
``%s`` here (outside string literals, quoted identifiers, comments and
dollar-quoted strings).
"""

from __future__ import annotations

import itertools
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg_pool import ConnectionPool, PoolTimeout

from ..settings import StorageSettings
from .access import METHOD_PREFIX, Policy
from .base import BUILTIN_GROUPS, Backend, StorageConnection, StorageCursor, StorageError, UserRecord

__all__ = ["PostgreSQLBackend", "translate_qmarks", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
_TOKENS = re.compile(r"""('(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|/\*.*?\*/|"""
                     r"""\$([A-Za-z_]\w*|)\$.*?\$\2\$|\?|%)""", re.S)
_ROWS = re.compile(r"^\s*(\(\s*)*(SELECT|WITH|VALUES|TABLE)\b", re.I)
_ids = itertools.count(1)


def translate_qmarks(sql: str) -> str:
    """``?`` -> ``%s`` and ``%`` -> ``%%`` outside literals, identifiers, comments."""
    def sub(m: re.Match[str]) -> str:
        tok = m.group(1)
        return "%s" if tok == "?" else "%%" if tok == "%" else tok
    return _TOKENS.sub(sub, sql)


def role_for(group: str) -> str:
    if group in BUILTIN_GROUPS:
        return f"casemate_{group}"
    return "casemate_g_" + re.sub(r"[^a-z0-9_]", "_", group.lower())


def _error(e: psycopg.Error) -> StorageError:
    code = e.sqlstate or "58000"
    msg = (e.diag.message_primary or str(e)).strip()
    hint = e.diag.message_hint
    if code == "42501":
        hint = hint or "an administrator can grant it: casemate group grant TARGET GROUP TABLE RIGHT"
    return StorageError(msg, code, hint)


class _Cursor(StorageCursor):
    def __init__(self, cur: Any, named: bool) -> None:
        self._cur = cur
        self._named = named
        d = cur.description
        self.description = [(c.name, None) for c in d] if d else None
        self.rowcount = cur.rowcount if not named else -1
        self.lastrowid = None

    def fetch(self, n: int) -> list[tuple[Any, ...]]:
        try:
            return list(self._cur.fetchmany(n))
        except psycopg.Error as e:
            raise _error(e) from e

    def close(self) -> None:
        try:
            self._cur.close()
        except psycopg.Error:
            pass


class _Connection(StorageConnection):
    def __init__(self, backend: PostgreSQLBackend, conn: psycopg.Connection[Any]) -> None:
        self._b = backend
        self._db = conn
        self._in_txn = False

    @property
    def in_transaction(self) -> bool:
        return self._in_txn

    def _run(self, sql: str | pgsql.Composable, params: Sequence[Any] | None = None) -> Any:
        try:
            return self._db.execute(sql, params)  # type: ignore[arg-type]
        except psycopg.Error as e:
            raise _error(e) from e

    def begin(self) -> None:
        if not self._in_txn:
            self._run("BEGIN")
            self._in_txn = True

    def execute(self, sql: str, params: Sequence[Any]) -> StorageCursor:
        text = translate_qmarks(sql)
        try:
            if _ROWS.match(sql):
                # A server-side cursor: a big result never sits whole in this server.
                cur = self._db.cursor(name=f"casemate_{next(_ids)}",
                                      withhold=not self._in_txn)
                cur.execute(text, tuple(params))
                return _Cursor(cur, True)
            cur2 = self._db.cursor()
            cur2.execute(text, tuple(params))
            return _Cursor(cur2, False)
        except psycopg.Error as e:
            raise _error(e) from e

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> int:
        try:
            with self._db.cursor() as cur:
                cur.executemany(translate_qmarks(sql), [tuple(p) for p in seq])
                return max(cur.rowcount, 0)
        except psycopg.Error as e:
            raise _error(e) from e

    def commit(self) -> None:
        if self._in_txn:
            self._in_txn = False
            self._run("COMMIT")

    def rollback(self) -> None:
        if self._in_txn:
            self._in_txn = False
            self._run("ROLLBACK")

    def savepoint(self, name: str) -> None:
        self.begin()
        self._run(pgsql.SQL("SAVEPOINT {}").format(pgsql.Identifier(name)))

    def release(self, name: str, undo: bool) -> None:
        ident = pgsql.Identifier(name)
        if undo:
            self._run(pgsql.SQL("ROLLBACK TO SAVEPOINT {}").format(ident))
        self._run(pgsql.SQL("RELEASE SAVEPOINT {}").format(ident))

    def interrupt(self) -> None:
        try:
            self._db.cancel()
        except psycopg.Error:
            pass

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        self._run(pgsql.SQL("SET ROLE {}").format(pgsql.Identifier(role_for(policy.group))))

    def close(self) -> None:
        try:
            if self._in_txn:
                self._db.execute("ROLLBACK")
            self._db.execute("RESET ROLE")
        except psycopg.Error:
            pass
        self._b.pool.putconn(self._db)


_SCHEMA = [
    "CREATE SCHEMA IF NOT EXISTS casemate",
    "REVOKE ALL ON SCHEMA casemate FROM PUBLIC",
    "CREATE TABLE IF NOT EXISTS casemate.meta (schema_version integer NOT NULL)",
    "CREATE TABLE IF NOT EXISTS casemate.users (name text PRIMARY KEY, grp text NOT NULL, "
    "salt bytea NOT NULL, stored_key bytea NOT NULL, server_key bytea NOT NULL, "
    "iterations integer NOT NULL, created text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS casemate.groups (name text PRIMARY KEY)",
    "CREATE TABLE IF NOT EXISTS casemate.grants (grp text NOT NULL, tbl text NOT NULL, "
    "privileges text NOT NULL, PRIMARY KEY (grp, tbl))",
]


class PostgreSQLBackend(Backend):
    name = "postgresql"

    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        kwargs: dict[str, Any] = {"autocommit": True}
        password = self._password()
        if password:
            kwargs["password"] = password
        lock_ms = int(settings.busy_timeout_seconds * 1000)
        kwargs["options"] = f"-c lock_timeout={lock_ms}"
        self.pool = ConnectionPool(settings.dsn, kwargs=kwargs, min_size=1,
                                   max_size=settings.pool_size, open=False, timeout=30)
        try:
            self.pool.open(wait=True, timeout=15)
        except PoolTimeout as e:
            self.pool.close()
            raise self._connect_error() from e

    def _password(self) -> str | None:
        s = self.settings
        if s.password_env and os.environ.get(s.password_env):
            return os.environ[s.password_env]
        if s.password_file:
            try:
                return Path(s.password_file).read_text().splitlines()[0].strip()
            except (OSError, IndexError) as e:
                raise StorageError(f"cannot read storage.password_file {s.password_file}: {e}",
                                   "58000") from e
        return None

    def _connect_error(self) -> StorageError:
        try:
            psycopg.connect(self.settings.dsn, password=self._password() or None,
                            connect_timeout=5).close()
        except psycopg.OperationalError as e:
            text = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
            code = "28P01" if "password" in text else "08001"
            return StorageError(f"cannot connect to PostgreSQL ({self.settings.dsn}): {text}",
                                code, "check storage.dsn and the password in "
                                f"${self.settings.password_env} or storage.password_file")
        return StorageError("cannot connect to PostgreSQL: the pool timed out", "08001")

    def _sys(self, sql: str | pgsql.Composable, params: Sequence[Any] | None = None,
             fetch: bool = False) -> list[tuple[Any, ...]]:
        try:
            with self.pool.connection() as conn:
                cur = conn.execute(sql, params)  # type: ignore[arg-type]
                return list(cur.fetchall()) if fetch else []
        except psycopg.Error as e:
            raise _error(e) from e

    def initialize(self) -> None:
        """Create the casemate schema and the group roles (needs CREATEROLE)."""
        try:
            with self.pool.connection() as conn, conn.transaction():
                for stmt in _SCHEMA:
                    conn.execute(stmt)
                if not conn.execute("SELECT 1 FROM casemate.meta").fetchone():
                    conn.execute("INSERT INTO casemate.meta VALUES (%s)", (SCHEMA_VERSION,))
                for g in BUILTIN_GROUPS:
                    self._create_role(conn, role_for(g))
                ident = {g: pgsql.Identifier(role_for(g)) for g in BUILTIN_GROUPS}
                for stmt in (
                    "GRANT USAGE, CREATE ON SCHEMA public TO {admin}",
                    "GRANT USAGE ON SCHEMA public TO {readwrite}, {readonly}",
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA public GRANT SELECT, "
                    "INSERT, UPDATE, DELETE ON TABLES TO {readwrite}",
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA public GRANT SELECT "
                    "ON TABLES TO {readonly}",
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA public GRANT USAGE, "
                    "SELECT ON SEQUENCES TO {readwrite}",
                ):
                    conn.execute(pgsql.SQL(stmt).format(**ident))
        except psycopg.errors.InsufficientPrivilege as e:
            raise StorageError(f"the PostgreSQL role lacks rights to set Casemate up: "
                               f"{e.diag.message_primary}", "42501",
                               "run casemate init with a role that has CREATEROLE and owns "
                               "the database (or a superuser)") from e
        except psycopg.Error as e:
            raise _error(e) from e
        self.check_schema()

    @staticmethod
    def _create_role(conn: Any, role: str) -> None:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            conn.execute(pgsql.SQL("CREATE ROLE {} NOLOGIN").format(pgsql.Identifier(role)))
        conn.execute(pgsql.SQL("GRANT {} TO {}").format(pgsql.Identifier(role),
                                                        pgsql.Identifier(conn.info.user)))

    def check(self) -> None:
        self.check_schema()

    def check_schema(self) -> None:
        try:
            rows = self._sys("SELECT schema_version FROM casemate.meta", fetch=True)
        except StorageError as e:
            if e.code == "42P01" or "does not exist" in e.message:
                raise StorageError("this PostgreSQL database has no Casemate schema", "3F000",
                                   "run: casemate init DIR --storage postgresql --dsn ...") from e
            raise
        if not rows or rows[0][0] != SCHEMA_VERSION:
            found = rows[0][0] if rows else None
            raise StorageError(f"Casemate schema version {found} in PostgreSQL, this server "
                               f"needs {SCHEMA_VERSION}", "0A000",
                               "upgrade the Casemate servers (or the schema) to one version")

    def connect(self) -> StorageConnection:
        try:
            conn = self.pool.getconn(timeout=self.settings.busy_timeout_seconds + 1)
        except PoolTimeout as e:
            raise StorageError(f"all {self.settings.pool_size} PostgreSQL connections are in "
                               "use (storage.pool_size)", "53300",
                               "raise storage.pool_size or end idle transactions") from e
        return _Connection(self, conn)

    # -- users, groups, grants ----------------------------------------------------
    _COLS = "name, grp, salt, stored_key, server_key, iterations, created"

    def _user(self, r: tuple[Any, ...]) -> UserRecord:
        return UserRecord(r[0], r[1], bytes(r[2]), bytes(r[3]), bytes(r[4]), r[5], r[6])

    def get_user(self, name: str) -> UserRecord | None:
        rows = self._sys(f"SELECT {self._COLS} FROM casemate.users WHERE name = %s", (name,),
                         fetch=True)
        return self._user(rows[0]) if rows else None

    def add_user(self, record: UserRecord) -> None:
        import datetime as dt
        try:
            self._sys(f"INSERT INTO casemate.users ({self._COLS}) VALUES (%s,%s,%s,%s,%s,%s,%s)",
                      (record.name, record.group, record.salt, record.stored_key,
                       record.server_key, record.iterations,
                       dt.datetime.now(dt.UTC).isoformat(timespec="seconds")))
        except StorageError as e:
            if e.code == "23505":
                raise KeyError(record.name) from None
            raise

    def update_user(self, record: UserRecord) -> None:
        if self.get_user(record.name) is None:
            raise KeyError(record.name)
        self._sys("UPDATE casemate.users SET grp=%s, salt=%s, stored_key=%s, server_key=%s, "
                  "iterations=%s WHERE name=%s", (record.group, record.salt, record.stored_key,
                                                  record.server_key, record.iterations,
                                                  record.name))

    def remove_user(self, name: str) -> None:
        if self.get_user(name) is None:
            raise KeyError(name)
        self._sys("DELETE FROM casemate.users WHERE name = %s", (name,))

    def list_users(self) -> list[UserRecord]:
        return [self._user(r) for r in self._sys(
            f"SELECT {self._COLS} FROM casemate.users ORDER BY name", fetch=True)]

    def add_group(self, name: str) -> None:
        if name in BUILTIN_GROUPS or self._sys("SELECT 1 FROM casemate.groups WHERE name = %s",
                                               (name,), fetch=True):
            raise KeyError(name)
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("INSERT INTO casemate.groups VALUES (%s)", (name,))
            self._create_role(conn, role_for(name))
            conn.execute(pgsql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(
                pgsql.Identifier(role_for(name))))

    def remove_group(self, name: str) -> None:
        if self._sys("SELECT 1 FROM casemate.users WHERE grp = %s", (name,), fetch=True):
            raise ValueError(f"group {name!r} still has users")
        if not self._sys("SELECT 1 FROM casemate.groups WHERE name = %s", (name,), fetch=True):
            raise KeyError(name)
        role = pgsql.Identifier(role_for(name))
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("DELETE FROM casemate.grants WHERE grp = %s", (name,))
            conn.execute("DELETE FROM casemate.groups WHERE name = %s", (name,))
            conn.execute(pgsql.SQL("DROP OWNED BY {}").format(role))
            conn.execute(pgsql.SQL("DROP ROLE {}").format(role))

    def list_groups(self) -> dict[str, dict[str, frozenset[str]]]:
        out: dict[str, dict[str, frozenset[str]]] = {g: {} for g in BUILTIN_GROUPS}
        for (g,) in self._sys("SELECT name FROM casemate.groups ORDER BY name", fetch=True):
            out[g] = {}
        for g, t, p in self._sys("SELECT grp, tbl, privileges FROM casemate.grants", fetch=True):
            out.setdefault(g, {})[t] = frozenset(p.split(","))
        return out

    def grants_for(self, group: str) -> dict[str, frozenset[str]]:
        return {t: frozenset(p.split(",")) for t, p in self._sys(
            "SELECT tbl, privileges FROM casemate.grants WHERE grp = %s", (group,), fetch=True)}

    def set_grants(self, group: str, table: str, privileges: frozenset[str]) -> None:
        if group not in self.list_groups():
            raise KeyError(group)
        with self.pool.connection() as conn, conn.transaction():
            if privileges:
                conn.execute("INSERT INTO casemate.grants VALUES (%s, %s, %s) ON CONFLICT "
                             "(grp, tbl) DO UPDATE SET privileges = EXCLUDED.privileges",
                             (group, table, ",".join(sorted(privileges))))
            else:
                conn.execute("DELETE FROM casemate.grants WHERE grp = %s AND tbl = %s",
                             (group, table))
            if table.startswith(METHOD_PREFIX):
                return  # server methods are checked by Casemate, not PostgreSQL
            role, tbl = pgsql.Identifier(role_for(group)), pgsql.Identifier(table)
            try:
                conn.execute(pgsql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(tbl, role))
                if privileges:
                    conn.execute(pgsql.SQL("GRANT {} ON TABLE {} TO {}").format(
                        pgsql.SQL(", ").join(pgsql.SQL(p) for p in sorted(privileges)), tbl,
                        role))
            except psycopg.Error as e:
                raise _error(e) from e

    def data_size(self) -> int:
        return int(self._sys("SELECT pg_database_size(current_database())", fetch=True)[0][0])

    def integrity_check(self) -> str:
        return "ok"  # PostgreSQL checks its own pages (checksums, amcheck) outside Casemate

    def close(self) -> None:
        self.pool.close()
