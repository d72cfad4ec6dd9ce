"""The PostgreSQL roles behind Casemate's groups: the schema and the roles ``casemate init``
sets up, each group's login role (its connections, and its repair when it was changed
outside Casemate), and the notifications that tell every server over the database that
users, groups or grants changed.

Part of the PostgreSQL backend (:mod:`casemate.storage.postgresql`).
"""

from __future__ import annotations

import itertools
import re
import secrets
import threading
import time
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo

from .base import BUILTIN_GROUPS, StorageError
from .pg_errors import log
from .pg_service import _Service
from .pg_values import _client_loaders

SCHEMA_VERSION = 1
RIGHTS_CHANNEL = "casemate_rights"  # NOTIFY channel: users, groups or grants changed
LISTEN_PING = 30.0         # the LISTEN connection runs SELECT 1 this often (seconds)
# libpq options of the LISTEN connection (unless the DSN sets them): a dead peer is noticed
# within about a minute (keepalives; tcp_user_timeout, in ms, for unacknowledged sends)
LISTEN_TCP = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
              "keepalives_count": 3, "tcp_user_timeout": 60000}
_INIT_LOCK = 0x6361736D    # pg_advisory_xact_lock key serializing `casemate init`s
INIT_LOCK_SECONDS = 30.0   # longest wait for that lock (another init, or a session holding it)

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
_ROLE_ATTRS = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"


def _verifier(conn: psycopg.Connection[Any], role: str, password: str) -> str:
    """The SCRAM verifier of ``password``: PostgreSQL never sees the password itself."""
    return conn.pgconn.encrypt_password(password.encode(), role.encode(),
                                        b"scram-sha-256").decode()


def _sanitize(name: str, width: int) -> str:
    s = re.sub(r"[^a-z0-9_]", "_", name.lower())[:width]
    return s or "x"


class _Roles:
    """Each group's PostgreSQL login role: its name and password (kept in casemate.groups,
    cached here), its connections, and its setup and repair."""

    def __init__(self, service: _Service) -> None:
        self._service = service
        self._roles: dict[str, tuple[str, str]] = {}   # group -> (role, password)
        self._lock = threading.Lock()

    def connect(self, group: str) -> psycopg.Connection[Any]:
        s = self._service
        for attempt in (0, 1):
            role, password = self.role(group, refresh=attempt == 1)
            extra: dict[str, Any] = {"user": role, "password": password,
                                     "options": s.group_options,
                                     "application_name": f"casemate ({group})"}
            if "connect_timeout" not in s.dsn_parts:
                extra["connect_timeout"] = 10
            try:
                return _client_loaders(s.open(make_conninfo(s.settings.dsn, **extra), role))
            except StorageError as e:
                if e.code != "28P01" or attempt == 1:
                    raise
                log.warning("PostgreSQL refused the password of role %s (group %s): it was "
                            "changed outside Casemate; setting it back", role, group)
                self.repair(group)
        raise AssertionError("unreachable")

    def role(self, group: str, refresh: bool = False) -> tuple[str, str]:
        with self._lock:
            if not refresh and group in self._roles:
                return self._roles[group]
        rows = self._service.q("SELECT name, role, password FROM casemate.groups")
        with self._lock:
            self._roles = {g: (r, pw) for g, r, pw in rows}
            if group in self._roles:
                return self._roles[group]
        raise StorageError(f"group {group!r} has no PostgreSQL role in this database", "42704",
                           "recreate the group (casemate group add), or run casemate init "
                           "again for the built-in groups")

    def forget(self, group: str) -> None:
        with self._lock:
            self._roles.pop(group, None)

    def initialize(self, conn: psycopg.Connection[Any]) -> None:
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
                raise StorageError(*self.version_error(row[0]))
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
            self.ensure_role(conn, role, pw, reset=g not in known)
            if g not in known:
                conn.execute("INSERT INTO casemate.groups VALUES (%s, %s, %s, true)", (g, role, pw))
        for g, (role, pw) in known.items():
            if g not in BUILTIN_GROUPS:
                self.ensure_role(conn, role, pw, reset=False)
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
    def ensure_role(conn: psycopg.Connection[Any], role: str, password: str,
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
    def version_error(found: object) -> tuple[str, str, str]:
        return (f"the Casemate schema in this PostgreSQL database has version {found}; this "
                f"Casemate needs version {SCHEMA_VERSION}", "0A000",
                "run the same Casemate version on every server over this database "
                "(and upgrade the schema with that version)")

    def repair(self, group: str | None = None) -> None:
        """Put the group roles (or ``group``'s) back as Casemate made them: attributes, the
        password kept in casemate.groups, no settings of their own.  Sessions cannot change
        them (the guard refuses role statements), but a direct login, a DBA or an admin's
        function could; this runs at every server start and when a password is refused."""
        try:
            self._service.txn(lambda conn: self._repair(conn, group))
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


class _RightsWatch:
    """Changes to users, groups or grants: this server's own (a NOTIFY sent with them) and
    other processes' (a LISTEN connection and its thread); each moves the version."""

    def __init__(self, service: _Service) -> None:
        self._service = service
        self._changes = itertools.count(1)  # next() is atomic: the listener thread bumps it
        self.version = 0
        self.listening = False
        self.listener: psycopg.Connection[Any] | None = None  # the LISTEN connection
        self._closing = threading.Event()

    def current(self) -> int | None:
        """The version, or None before watch() (the CLI), when other processes' changes are
        not seen."""
        return self.version if self.listening else None

    def bump(self) -> None:
        self.version = next(self._changes)

    def changed(self, conn: psycopg.Connection[Any] | None = None) -> None:
        """Tell every server on this database that users, groups or grants changed."""
        notify = pgsql.SQL("NOTIFY {}").format(pgsql.Identifier(RIGHTS_CHANNEL))
        if conn is not None:
            conn.execute(notify)  # inside the change's transaction: sent at its commit
        else:
            self._service.q(notify, fetch=False)
        self.bump()

    def watch(self) -> None:
        """LISTEN for other processes' changes (a server calls this once, at start)."""
        conn = self._listen_connect()
        self.listening = True
        threading.Thread(target=self._listen, args=(conn,), name="casemate-rights",
                         daemon=True).start()

    def _listen_connect(self) -> psycopg.Connection[Any]:
        """The LISTEN connection.  It only reads, so a half-open TCP connection (PostgreSQL's
        host gone, a firewall dropping state) would never fail on its own: TCP keepalives,
        a user timeout and a periodic ``SELECT 1`` make it fail, and the listener reconnect."""
        conn = self._service.connect("", LISTEN_TCP)
        conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(RIGHTS_CHANNEL)))
        self.listener = conn
        return conn

    def _listen(self, conn: psycopg.Connection[Any] | None) -> None:
        pinged = time.monotonic()
        while not self._closing.is_set():
            try:
                if conn is None:
                    conn = self._listen_connect()
                    self.bump()  # a change may have been missed while not listening
                for _ in conn.notifies(timeout=0.5):
                    self.bump()
                if time.monotonic() - pinged >= LISTEN_PING:
                    conn.execute("SELECT 1")
                    pinged = time.monotonic()
            except (psycopg.Error, StorageError) as e:
                log.warning("lost the rights notifications connection, reconnecting: %s", e)
                self.bump()
                if conn is not None:
                    conn.close()
                conn = None
                self._closing.wait(1.0)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        self._closing.set()
