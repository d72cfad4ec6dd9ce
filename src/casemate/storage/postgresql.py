"""The PostgreSQL storage backend: several Casemate servers over one PostgreSQL database.

Data, users, groups and grants live in PostgreSQL: users, groups and grant
rows in the ``casemate`` schema, which no Casemate session can reach, so
every Casemate server over the same database agrees on them.

Grants are enforced by PostgreSQL itself.  Each Casemate group has its own
PostgreSQL *login* role (``casemate_<db>_admin``, ``..._readwrite``,
``..._readonly``, ``..._g_<name>``) with a generated password kept in the
``casemate`` schema, and a session's statements run on a connection opened
*as its group's role*.  (A ``SET ROLE`` on a shared login role would not be
strict: any statement could undo it with ``RESET ROLE`` or
``set_config('role', ...)``.)  Tables belong to the admin role; default
privileges give readwrite and readonly their rights; a custom group's grants
are ``GRANT ... ON TABLE`` to its role.  The role of the DSN (the *service*
role) reads users and grants and manages the group roles; it never runs a
client's SQL.

Each Casemate transaction is one PostgreSQL transaction on one pooled
connection.  Query results come through server-side cursors (``DECLARE ...
WITH HOLD``), so a large result never sits whole in the Casemate server, and
every result is read row by row and counted: one round trip brings in at most
``limits.max_statement_result_bytes`` (``FETCH ALL`` and ``EXECUTE`` in SQL,
``RETURNING``, huge values), else it is cancelled.
Clients' ``?`` parameters are found by PostgreSQL's own lexer and every
statement is parsed before it is sent (:mod:`casemate.storage.pg_sql`): one
statement per execute, and a guard refuses what would change the roles
Casemate connects with or reach other sessions.  A connection is reset
(``DISCARD ALL``) every time it goes back to the pool, since what a
statement leaves behind cannot be told from its text.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb, JsonbDumper
from psycopg.types.string import TextLoader

from ..settings import LimitsSettings, StorageSettings
from .access import METHOD_PREFIX
from .base import BUILTIN_GROUPS, Backend, StorageConnection, StorageError, UserRecord
from .pg_conn import CANCEL_RETRY as CANCEL_RETRY
from .pg_conn import _Connection
from .pg_cursors import FIRST_FETCH as FIRST_FETCH
from .pg_cursors import SWOLLEN_ROW as SWOLLEN_ROW
from .pg_cursors import _Budget
from .pg_errors import _NO_SCHEMA_HINT, _UNAVAILABLE_HINT, _connect_error, _error, log
from .pg_pool import IDLE_LIFETIME as IDLE_LIFETIME
from .pg_pool import RESET_WAIT as RESET_WAIT
from .pg_pool import _Pool
from .pg_sql import translate_qmarks
from .pg_values import _TEXT_TYPES, _client_loaders, _Float8Dumper, _NumericDumper

__all__ = ["PostgreSQLBackend", "SCHEMA_VERSION", "translate_qmarks"]

SCHEMA_VERSION = 1
DEFAULT_MAX_RESULT = 64 * 1024 * 1024  # limits.max_statement_result_bytes
GRANTS_CACHE_SECONDS = 1.0  # how stale another server's method grants may be seen
RIGHTS_CHANNEL = "casemate_rights"  # NOTIFY channel: users, groups or grants changed
LISTEN_PING = 30.0         # the LISTEN connection runs SELECT 1 this often (seconds)
# libpq options of the LISTEN connection (unless the DSN sets them): a dead peer is noticed
# within about a minute (keepalives; tcp_user_timeout, in ms, for unacknowledged sends)
LISTEN_TCP = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
              "keepalives_count": 3, "tcp_user_timeout": 60000}
_INIT_LOCK = 0x6361736D    # pg_advisory_xact_lock key serializing `casemate init`s
INIT_LOCK_SECONDS = 30.0   # longest wait for that lock (another init, or a session holding it)


# -- schema ----------------------------------------------------------------------
_SCHEMA = [
    "CREATE SCHEMA IF NOT EXISTS casemate",
    "REVOKE ALL ON SCHEMA casemate FROM PUBLIC",
    "CREATE TABLE IF NOT EXISTS casemate.meta (schema_version integer NOT NULL, "
    "role_prefix text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS casemate.users (name text PRIMARY KEY, grp text NOT NULL, "
    "salt bytea NOT NULL, stored_key bytea NOT NULL, server_key bytea NOT NULL, "
    "iterations integer NOT NULL, created text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS casemate.groups (name text PRIMARY KEY, role text UNIQUE NOT "
    "NULL, password text NOT NULL, builtin boolean NOT NULL DEFAULT false)",
    "CREATE TABLE IF NOT EXISTS casemate.grants (grp text NOT NULL REFERENCES casemate.groups "
    "(name) ON DELETE CASCADE, tbl text NOT NULL, privileges text NOT NULL, "
    "PRIMARY KEY (grp, tbl))",
]
# Added after schema version 1 shipped: created by init and at server start if missing.
_SHARED_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS casemate.servers (server text PRIMARY KEY, seen timestamptz "
    "NOT NULL, sessions jsonb NOT NULL)",
    "CREATE TABLE IF NOT EXISTS casemate.drops (server text NOT NULL, session integer NOT NULL, "
    "reason text NOT NULL, PRIMARY KEY (server, session))",
]
SERVER_ALIVE_SECONDS = 10  # a server that has not published its sessions for this long is gone
_ROLE_ATTRS = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"


def _verifier(conn: psycopg.Connection[Any], role: str, password: str) -> str:
    """The SCRAM verifier of ``password``: PostgreSQL never sees the password itself."""
    return conn.pgconn.encrypt_password(password.encode(), role.encode(),
                                        b"scram-sha-256").decode()


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


def _sanitize(name: str, width: int) -> str:
    s = re.sub(r"[^a-z0-9_]", "_", name.lower())[:width]
    return s or "x"


class PostgreSQLBackend(Backend):
    name = "postgresql"

    def __init__(self, settings: StorageSettings, limits: LimitsSettings | None = None) -> None:
        self.settings = settings
        self.max_result = limits.max_statement_result_bytes if limits else DEFAULT_MAX_RESULT
        self._secret = self._read_password()
        try:
            self._dsn_parts = conninfo_to_dict(settings.dsn)
        except psycopg.Error as e:
            raise StorageError(f"storage.dsn is not a valid PostgreSQL connection string: {e}",
                               "08001") from e
        options = str(self._dsn_parts.get("options", "") or "")
        lock_ms = max(1, int(settings.busy_timeout_seconds * 1000))
        self._group_options = f"{options} -c lock_timeout={lock_ms}".strip()
        # The service role resolves names in pg_catalog only: an admin's function or operator
        # in public (an exact match for oid = regclass, say) would otherwise run as the service
        # role, which reads every group's password and may be a superuser.
        self._service_options = f"{options} -c search_path=pg_catalog,pg_temp".strip()
        self._roles: dict[str, tuple[str, str]] = {}   # group -> (role, password)
        self._roles_lock = threading.Lock()
        self._serving = False  # after check(): connection errors go to the log, not to users
        self._grants_cache: dict[str, tuple[float, int, dict[str, frozenset[str]]]] = {}
        self._changes = itertools.count(1)  # next() is atomic: the listener thread bumps it
        self._rights_version = 0
        self._listening = False
        self._listener: psycopg.Connection[Any] | None = None  # the LISTEN connection
        self._closing = threading.Event()
        self._sys = _Pool(2, 30.0, self._service_connect, "service connections", reset=False)
        self._sys.put(self._sys.get(""))  # fail now, clearly, if PostgreSQL is unreachable
        self.budget = _Budget(settings.pool_size * self.max_result)
        self._pool = _Pool(settings.pool_size, max(0.5, settings.busy_timeout_seconds),
                           self._group_connect, "storage.pool_size")

    # -- connections --
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

    def _open(self, conninfo: str, who: str) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(conninfo, autocommit=True, prepare_threshold=None)
        except psycopg.Error as e:
            err = _connect_error(e, self.settings.dsn, who, self._password_hint())
            if not self._serving:  # casemate init, serve's start, the CLI: its administrator
                raise err from None
            log.error("cannot connect to PostgreSQL: %s (%s)", err.message, err.hint)
            raise StorageError("storage unavailable: the server cannot reach its database",
                               err.code, _UNAVAILABLE_HINT) from None
        for t in _TEXT_TYPES:
            try:
                conn.adapters.register_loader(t, TextLoader)
            except psycopg.Error:
                pass
        conn.adapters.register_dumper(dict, JsonbDumper)
        conn.adapters.register_dumper(float, _Float8Dumper)
        conn.adapters.register_dumper(Decimal, _NumericDumper)
        return conn

    def _service_connect(self, _key: str, tcp: dict[str, Any] | None = None
                         ) -> psycopg.Connection[Any]:
        extra: dict[str, Any] = {"application_name": "casemate (service)",
                                 "options": self._service_options}
        extra.update({k: v for k, v in (tcp or {}).items() if k not in self._dsn_parts})
        if "connect_timeout" not in self._dsn_parts:
            extra["connect_timeout"] = 10
        if self._secret is not None:
            extra["password"] = self._secret
        return self._open(make_conninfo(self.settings.dsn, **extra),
                          str(self._dsn_parts.get("user") or "(default user)"))

    def _group_connect(self, group: str) -> psycopg.Connection[Any]:
        for attempt in (0, 1):
            role, password = self._role(group, refresh=attempt == 1)
            extra: dict[str, Any] = {"user": role, "password": password,
                                     "options": self._group_options,
                                     "application_name": f"casemate ({group})"}
            if "connect_timeout" not in self._dsn_parts:
                extra["connect_timeout"] = 10
            try:
                return _client_loaders(self._open(make_conninfo(self.settings.dsn, **extra), role))
            except StorageError as e:
                if e.code != "28P01" or attempt == 1:
                    raise
                log.warning("PostgreSQL refused the password of role %s (group %s): it was "
                            "changed outside Casemate; setting it back", role, group)
                self.repair_roles(group)
        raise AssertionError("unreachable")

    def _role(self, group: str, refresh: bool = False) -> tuple[str, str]:
        with self._roles_lock:
            if not refresh and group in self._roles:
                return self._roles[group]
        rows = self._q("SELECT name, role, password FROM casemate.groups")
        with self._roles_lock:
            self._roles = {g: (r, pw) for g, r, pw in rows}
            if group in self._roles:
                return self._roles[group]
        raise StorageError(f"group {group!r} has no PostgreSQL role in this database", "42704",
                           "recreate the group (casemate group add), or run casemate init "
                           "again for the built-in groups")

    def _q(self, query: str | pgsql.Composable, params: Sequence[Any] | None = None,
           fetch: bool = True) -> list[tuple[Any, ...]]:
        """One statement on a service connection (autocommit)."""
        p = self._sys.get("")
        try:
            cur = p.conn.execute(query, params)  # type: ignore[arg-type]
            rows = list(cur.fetchall()) if fetch and cur.description else []
        except psycopg.Error as e:
            self._sys.put(p)
            raise self._schema_error(e) from e
        self._sys.put(p)
        return rows

    def _txn(self, work: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        """Several statements on a service connection, in one transaction."""
        p = self._sys.get("")
        try:
            with p.conn.transaction():
                return work(p.conn)
        except psycopg.Error as e:
            raise self._schema_error(e) from e
        finally:
            self._sys.put(p)

    @staticmethod
    def _schema_error(e: psycopg.Error) -> StorageError:
        err = _error(e)
        if err.code in ("3F000", "42P01") and ('"casemate.' in err.message
                                                or 'schema "casemate"' in err.message):
            return StorageError("this PostgreSQL database has no Casemate schema", "3F000",
                                _NO_SCHEMA_HINT)
        return err

    # -- setup --
    def initialize(self) -> None:
        """Create the casemate schema and one login role per built-in group.

        Needs a role that may create schemas in the database (its owner) and
        roles (CREATEROLE), or a superuser.  Idempotent: a second ``casemate
        init`` over the same database keeps its users, groups and roles.
        """
        try:
            self._txn(self._initialize)
        except StorageError as e:
            if e.code == "42501":
                raise StorageError(
                    f"the PostgreSQL role {self._dsn_parts.get('user', '')!s} lacks rights "
                    f"to set Casemate up: {e.message}", "42501",
                    "run casemate init with a role that owns the database and has CREATEROLE "
                    "(ALTER ROLE ... CREATEROLE), or as a superuser; the servers can then use "
                    "the same role") from e
            raise
        self.check()

    def _initialize(self, conn: psycopg.Connection[Any]) -> None:
        # Any role may take any advisory lock: never wait for one without end.
        conn.execute(f"SET LOCAL lock_timeout = '{int(INIT_LOCK_SECONDS * 1000)}ms'")
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INIT_LOCK,))
        except psycopg.errors.LockNotAvailable:
            raise StorageError("another session holds Casemate's setup lock in this database",
                               "55P03", f"find it with SELECT pid, usename, application_name "
                               f"FROM pg_locks JOIN pg_stat_activity USING (pid) WHERE "
                               f"locktype = 'advisory' AND objid = {_INIT_LOCK}; run casemate "
                               "init again when it is gone") from None
        conn.execute("RESET lock_timeout")
        found = conn.execute("SELECT to_regclass('casemate.meta')").fetchone()
        if found and found[0] is not None:
            row = conn.execute("SELECT schema_version, role_prefix FROM casemate.meta").fetchone()
            if row is not None and row[0] != SCHEMA_VERSION:
                raise StorageError(*self._version_error(row[0]))
        for stmt in _SCHEMA + _SHARED_SCHEMA:
            conn.execute(stmt)
        row = conn.execute("SELECT role_prefix FROM casemate.meta").fetchone()
        if row is None:
            db = conn.execute("SELECT current_database()").fetchone()
            prefix = f"casemate_{_sanitize(str(db[0] if db else ''), 20)}_"
            conn.execute("INSERT INTO casemate.meta VALUES (%s, %s)", (SCHEMA_VERSION, prefix))
        else:
            prefix = row[0]
        known = {g: (r, pw) for g, r, pw in conn.execute(
            "SELECT name, role, password FROM casemate.groups").fetchall()}
        for g in BUILTIN_GROUPS:
            role, pw = known.get(g, (prefix + g, secrets.token_urlsafe(24)))
            self._ensure_role(conn, role, pw, reset=g not in known)
            if g not in known:
                conn.execute("INSERT INTO casemate.groups VALUES (%s, %s, %s, true)", (g, role, pw))
        for g, (role, pw) in known.items():
            if g not in BUILTIN_GROUPS:
                self._ensure_role(conn, role, pw, reset=False)
        admin, rw, ro = (pgsql.Identifier(known.get(g, (prefix + g, ""))[0])
                         for g in BUILTIN_GROUPS)
        for stmt in (
            "GRANT USAGE, CREATE ON SCHEMA public TO {admin}",
            "GRANT USAGE ON SCHEMA public TO {rw}, {ro}",
            "ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA public "
            "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {rw}",
            "ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA public "
            "GRANT SELECT ON TABLES TO {ro}",
            "ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA public "
            "GRANT USAGE, SELECT ON SEQUENCES TO {rw}",
        ):
            conn.execute(pgsql.SQL(stmt).format(admin=admin, rw=rw, ro=ro))
        try:  # PostgreSQL 15's default; older databases may still let everyone create tables
            with conn.transaction():
                conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        except psycopg.errors.InsufficientPrivilege:
            log.warning("could not revoke CREATE on schema public from PUBLIC; other roles "
                        "may create tables there")

    @staticmethod
    def _ensure_role(conn: psycopg.Connection[Any], role: str, password: str,
                     reset: bool) -> None:
        """The login role of one group: no special rights; the service role manages it."""
        ident = pgsql.Identifier(role)
        verifier = _verifier(conn, role, password)
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if exists is None:
            conn.execute(pgsql.SQL("CREATE ROLE {} " + _ROLE_ATTRS + " PASSWORD {}").format(
                ident, pgsql.Literal(verifier)))
        elif reset:  # left over from an earlier database of the same name: take it over
            other = conn.execute(
                "SELECT d.datname FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid "
                "WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = "
                "(SELECT oid FROM pg_roles WHERE rolname = %s) AND d.datname <> "
                "current_database() LIMIT 1", (role,)).fetchone()
            if other is not None:
                raise StorageError(
                    f"PostgreSQL role {role} already serves another database ({other[0]}) of "
                    "this cluster", "42710", "roles are shared by a cluster's databases: give "
                    "this database another name (Casemate names its roles after it)")
            conn.execute(pgsql.SQL("ALTER ROLE {} " + _ROLE_ATTRS + " PASSWORD {}").format(
                ident, pgsql.Literal(verifier)))
        member = conn.execute("SELECT pg_has_role(current_user, %s, 'USAGE')", (role,)).fetchone()
        if not (member and member[0]):
            conn.execute(pgsql.SQL("GRANT {} TO CURRENT_USER").format(ident))

    @staticmethod
    def _version_error(found: object) -> tuple[str, str, str]:
        return (f"the Casemate schema in this PostgreSQL database has version {found}; this "
                f"Casemate needs version {SCHEMA_VERSION}", "0A000",
                "run the same Casemate version on every server over this database "
                "(and upgrade the schema with that version)")

    def check(self) -> None:
        """Raise StorageError unless the schema exists with this version; load the roles."""
        rows = self._q("SELECT schema_version FROM casemate.meta")
        if not rows:
            raise StorageError("the Casemate schema in this PostgreSQL database is incomplete",
                               "3F000", _NO_SCHEMA_HINT)
        if rows[0][0] != SCHEMA_VERSION:
            raise StorageError(*self._version_error(rows[0][0]))
        for stmt in _SHARED_SCHEMA:
            self._q(stmt, fetch=False)
        self.repair_roles()
        for g in BUILTIN_GROUPS:
            self._role(g, refresh=g == BUILTIN_GROUPS[0])
        self._serving = True

    def repair_roles(self, group: str | None = None) -> None:
        """Put the group roles (or ``group``'s) back as Casemate made them: attributes, the
        password kept in casemate.groups, no settings of their own.  Sessions cannot change
        them (the guard refuses role statements), but a direct login, a DBA or an admin's
        function could; this runs at every server start and when a password is refused."""
        try:
            self._txn(lambda conn: self._repair(conn, group))
        except StorageError as e:
            log.warning("could not check Casemate's PostgreSQL roles: %s", e.message)

    @classmethod
    def _repair(cls, conn: psycopg.Connection[Any], group: str | None) -> None:
        rows = conn.execute(
            "SELECT g.name, g.role, g.password, r.rolconfig, (SELECT s.setconfig FROM "
            "pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE "
            "s.setrole = r.oid AND d.datname = current_database()) FROM casemate.groups g "
            "JOIN pg_roles r ON r.rolname = g.role WHERE %s::text IS NULL OR g.name = %s",
            (group, group)).fetchall()
        for name, role, password, settings, db_settings in rows:
            ident = pgsql.Identifier(role)
            conn.execute(pgsql.SQL("ALTER ROLE {} " + _ROLE_ATTRS + " PASSWORD {}").format(
                ident, pgsql.Literal(_verifier(conn, role, password))))
            if settings or db_settings:
                log.warning("PostgreSQL role %s (group %s) had settings of its own (%s): "
                            "removed", role, name, ", ".join((settings or []) + (db_settings or [])))
                conn.execute(pgsql.SQL("ALTER ROLE {} RESET ALL").format(ident))
                conn.execute(pgsql.SQL("ALTER ROLE {} IN DATABASE {} RESET ALL").format(
                    ident, pgsql.Identifier(str(conn.info.dbname))))

    def connect(self) -> StorageConnection:
        return _Connection(self)

    # -- users --
    _COLS = "name, grp, salt, stored_key, server_key, iterations, created"

    @staticmethod
    def _user(r: tuple[Any, ...]) -> UserRecord:
        return UserRecord(r[0], r[1], bytes(r[2]), bytes(r[3]), bytes(r[4]), r[5], r[6])

    def get_user(self, name: str) -> UserRecord | None:
        rows = self._q(f"SELECT {self._COLS} FROM casemate.users WHERE name = %s", (name,))
        return self._user(rows[0]) if rows else None

    def add_user(self, record: UserRecord) -> None:
        created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        rows = self._q(f"INSERT INTO casemate.users ({self._COLS}) VALUES (%s, %s, %s, %s, %s, "
                       "%s, %s) ON CONFLICT (name) DO NOTHING RETURNING name",
                       (record.name, record.group, record.salt, record.stored_key,
                        record.server_key, record.iterations, created))
        if not rows:
            raise KeyError(record.name)

    def update_user(self, record: UserRecord) -> None:
        rows = self._q("UPDATE casemate.users SET grp = %s, salt = %s, stored_key = %s, "
                       "server_key = %s, iterations = %s WHERE name = %s RETURNING name",
                       (record.group, record.salt, record.stored_key, record.server_key,
                        record.iterations, record.name))
        if not rows:
            raise KeyError(record.name)
        self._changed()

    def remove_user(self, name: str) -> None:
        if not self._q("DELETE FROM casemate.users WHERE name = %s RETURNING name", (name,)):
            raise KeyError(name)
        self._changed()

    def list_users(self) -> list[UserRecord]:
        return [self._user(r) for r in self._q(
            f"SELECT {self._COLS} FROM casemate.users ORDER BY name")]

    # -- groups and grants --
    def add_group(self, name: str) -> None:
        if name in BUILTIN_GROUPS:
            raise KeyError(name)

        def work(conn: psycopg.Connection[Any]) -> None:
            if conn.execute("SELECT 1 FROM casemate.groups WHERE name = %s", (name,)).fetchone():
                raise KeyError(name)
            prefix = conn.execute("SELECT role_prefix FROM casemate.meta").fetchone()
            base = f"{prefix[0] if prefix else 'casemate_'}g_{_sanitize(name, 20)}"
            role = base
            if (role.removeprefix(str(prefix[0] if prefix else "")) != f"g_{name}"
                    or conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                    (role,)).fetchone()):
                role = f"{base}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
            password = secrets.token_urlsafe(24)
            self._ensure_role(conn, role, password, reset=True)
            conn.execute("INSERT INTO casemate.groups VALUES (%s, %s, %s, false)",
                         (name, role, password))
            conn.execute(pgsql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(
                pgsql.Identifier(role)))
        self._txn(work)

    def remove_group(self, name: str) -> None:
        if name in BUILTIN_GROUPS:
            raise ValueError(f"{name!r} is a built-in group")

        def work(conn: psycopg.Connection[Any]) -> None:
            row = conn.execute("SELECT role FROM casemate.groups WHERE name = %s AND NOT builtin",
                               (name,)).fetchone()
            if row is None:
                raise KeyError(name)
            if conn.execute("SELECT 1 FROM casemate.users WHERE grp = %s", (name,)).fetchone():
                raise ValueError(f"group {name!r} still has users")
            role = pgsql.Identifier(row[0])
            conn.execute("DELETE FROM casemate.groups WHERE name = %s", (name,))
            self._changed(conn)
            conn.execute(pgsql.SQL("DROP OWNED BY {}").format(role))  # its privileges here
            conn.execute(pgsql.SQL("DROP ROLE {}").format(role))
        self._txn(work)
        self._pool.drop_key(name)
        self._grants_cache.pop(name, None)
        with self._roles_lock:
            self._roles.pop(name, None)

    def list_groups(self) -> dict[str, dict[str, frozenset[str]]]:
        out: dict[str, dict[str, frozenset[str]]] = {g: {} for g in BUILTIN_GROUPS}
        for (g,) in self._q("SELECT name FROM casemate.groups ORDER BY name"):
            out.setdefault(g, {})
        for g, t, p in self._q("SELECT grp, tbl, privileges FROM casemate.grants"):
            out.setdefault(g, {})[t] = frozenset(p.split(","))
        return out

    def grants_for(self, group: str) -> dict[str, frozenset[str]]:
        # Read at every storage acquisition (for server-method rights; PostgreSQL enforces
        # table rights itself), so cached briefly, and only while no change was notified.
        now, version = time.monotonic(), self._rights_version
        hit = self._grants_cache.get(group)
        if hit is not None and now - hit[0] < GRANTS_CACHE_SECONDS and hit[1] == version:
            return hit[2]
        grants = {t: frozenset(p.split(",")) for t, p in self._q(
            "SELECT tbl, privileges FROM casemate.grants WHERE grp = %s", (group,))}
        self._grants_cache[group] = (now, version, grants)
        return grants

    # -- noticing changes made by other processes (server/rights.py) --
    def grants_version(self) -> int | None:
        # Our own changes move it at once, other processes' through their NOTIFY; before
        # watch_rights() (the CLI) it is unknown.
        return self._rights_version if self._listening else None

    def _bump(self) -> None:
        self._rights_version = next(self._changes)

    def _changed(self, conn: psycopg.Connection[Any] | None = None) -> None:
        """Tell every server on this database that users, groups or grants changed."""
        notify = pgsql.SQL("NOTIFY {}").format(pgsql.Identifier(RIGHTS_CHANNEL))
        if conn is not None:
            conn.execute(notify)  # inside the change's transaction: sent at its commit
        else:
            self._q(notify, fetch=False)
        self._bump()

    def watch_rights(self) -> None:
        """LISTEN for other processes' changes (a server calls this once, at start)."""
        conn = self._listen_connect()
        self._listening = True
        threading.Thread(target=self._listen, args=(conn,), name="casemate-rights",
                         daemon=True).start()

    def _listen_connect(self) -> psycopg.Connection[Any]:
        """The LISTEN connection.  It only reads, so a half-open TCP connection (PostgreSQL's
        host gone, a firewall dropping state) would never fail on its own: TCP keepalives,
        a user timeout and a periodic ``SELECT 1`` make it fail, and the listener reconnect."""
        conn = self._service_connect("", LISTEN_TCP)
        conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(RIGHTS_CHANNEL)))
        self._listener = conn
        return conn

    def _listen(self, conn: psycopg.Connection[Any] | None) -> None:
        pinged = time.monotonic()
        while not self._closing.is_set():
            try:
                if conn is None:
                    conn = self._listen_connect()
                    self._bump()  # a change may have been missed while not listening
                for _ in conn.notifies(timeout=0.5):
                    self._bump()
                if time.monotonic() - pinged >= LISTEN_PING:
                    conn.execute("SELECT 1")
                    pinged = time.monotonic()
            except (psycopg.Error, StorageError) as e:
                log.warning("lost the rights notifications connection, reconnecting: %s", e)
                self._bump()
                if conn is not None:
                    conn.close()
                conn = None
                self._closing.wait(1.0)
        if conn is not None:
            conn.close()

    def set_grants(self, group: str, table: str, privileges: frozenset[str]) -> None:
        table = table.lower()

        def work(conn: psycopg.Connection[Any]) -> None:
            row = conn.execute("SELECT role, builtin FROM casemate.groups WHERE name = %s",
                               (group,)).fetchone()
            if row is None:
                raise KeyError(group)
            role, builtin = pgsql.Identifier(row[0]), row[1]
            if privileges:
                conn.execute("INSERT INTO casemate.grants VALUES (%s, %s, %s) ON CONFLICT "
                             "(grp, tbl) DO UPDATE SET privileges = EXCLUDED.privileges",
                             (group, table, ",".join(sorted(privileges))))
            else:
                conn.execute("DELETE FROM casemate.grants WHERE grp = %s AND tbl = %s",
                             (group, table))
            self._changed(conn)
            if table.startswith(METHOD_PREFIX) or builtin:
                return  # method rights are Casemate's; built-in groups' table rights are fixed
            tbl = pgsql.Identifier(*(table.split(".", 1) if "." in table else ("public", table)))
            conn.execute(pgsql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(tbl, role))
            table_privs = sorted(privileges & {"SELECT", "INSERT", "UPDATE", "DELETE"})
            if table_privs:
                conn.execute(pgsql.SQL("GRANT {} ON TABLE {} TO {}").format(
                    pgsql.SQL(", ").join(pgsql.SQL(p) for p in table_privs), tbl, role))
            # serial columns: INSERT needs their sequences
            seqs = conn.execute(
                "SELECT s.oid::regclass::text FROM pg_depend d JOIN pg_class s ON s.oid = d.objid "
                "WHERE d.refobjid = %s::regclass AND d.classid = 'pg_class'::regclass "
                "AND s.relkind = 'S' AND d.deptype = 'a'", (tbl.as_string(conn),)).fetchall()
            for (seq,) in seqs:
                conn.execute(pgsql.SQL("REVOKE ALL ON SEQUENCE {} FROM {}").format(
                    pgsql.SQL(seq), role))
                if "INSERT" in privileges:
                    conn.execute(pgsql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(
                        pgsql.SQL(seq), role))
        self._txn(work)
        self._grants_cache.pop(group, None)

    # -- sessions of every server over the database --
    shares_sessions = True

    def share_sessions(self, server: str, rows: list[dict[str, Any]]) -> list[tuple[int, str]]:
        def work(conn: psycopg.Connection[Any]) -> list[tuple[int, str]]:
            conn.execute("INSERT INTO casemate.servers VALUES (%s, now(), %s) ON CONFLICT "
                         "(server) DO UPDATE SET seen = now(), sessions = EXCLUDED.sessions",
                         (server, Jsonb(rows)))
            conn.execute("DELETE FROM casemate.servers WHERE seen < now() - interval '1 day'")
            return [(int(i), str(r)) for i, r in conn.execute(
                "DELETE FROM casemate.drops WHERE server = %s RETURNING session, reason",
                (server,)).fetchall()]
        result: list[tuple[int, str]] = self._txn(work)
        return result

    def other_sessions(self, server: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name, sessions in self._q(
                "SELECT server, sessions FROM casemate.servers WHERE server <> %s AND seen > "
                f"now() - interval '{SERVER_ALIVE_SECONDS} seconds' ORDER BY server", (server,)):
            out.extend({**row, "server": name} for row in sessions)
        return out

    def request_drop(self, server: str, session: int, reason: str) -> None:
        if not self._q("INSERT INTO casemate.drops SELECT server, %s, %s FROM casemate.servers "
                       "WHERE server = %s AND seen > now() - interval "
                       f"'{SERVER_ALIVE_SECONDS} seconds' ON CONFLICT (server, session) DO "
                       "UPDATE SET reason = EXCLUDED.reason RETURNING server",
                       (session, reason, server)):
            raise KeyError(server)

    # -- housekeeping --
    def data_size(self) -> int:
        return int(self._q("SELECT pg_database_size(current_database())")[0][0])

    def integrity_check(self) -> str:
        """B-tree checks with amcheck when installed; PostgreSQL checks its pages itself."""
        found = self._q("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = "
                        "e.extnamespace WHERE e.extname = 'amcheck'")
        if not found:
            return "ok"
        check = pgsql.Identifier(found[0][0], "bt_index_check")  # its schema: not on our path
        try:
            self._q(pgsql.SQL("SELECT {}(c.oid::regclass) FROM pg_index i JOIN pg_class c ON "
                    "c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE a.amname = 'btree' AND n.nspname IN "
                    "('public', 'casemate') AND c.relpersistence <> 't' AND i.indisvalid"
                    ).format(check))
        except StorageError as e:
            if e.code == "42501":
                log.info("integrity check: amcheck not permitted for this role: %s", e.message)
                return "ok"
            return e.message
        return "ok"

    def close(self) -> None:
        self._closing.set()
        self._pool.close()
        self._sys.close()
