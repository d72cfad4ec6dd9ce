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

This module is the backend's face (users, groups, grants, shared sessions,
housekeeping); its parts: the service role and the opening of connections
(:mod:`.pg_service`), the group roles, their setup and repair, and the rights
notifications (:mod:`.pg_roles`), the pool (:mod:`.pg_pool`), a session's
connection (:mod:`.pg_conn`), its results and cursors (:mod:`.pg_cursors`),
values (:mod:`.pg_values`), errors (:mod:`.pg_errors`) and SQL text
(:mod:`.pg_sql`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.types.json import Jsonb

from ..settings import LimitsSettings, StorageSettings
from .access import METHOD_PREFIX
from .base import BUILTIN_GROUPS, Backend, StorageConnection, StorageError, UserRecord
from .pg_conn import CANCEL_RETRY as CANCEL_RETRY
from .pg_conn import _Connection
from .pg_cursors import FIRST_FETCH as FIRST_FETCH
from .pg_cursors import SWOLLEN_ROW as SWOLLEN_ROW
from .pg_cursors import _Budget
from .pg_errors import _NO_SCHEMA_HINT, log
from .pg_pool import IDLE_LIFETIME as IDLE_LIFETIME
from .pg_pool import RESET_WAIT as RESET_WAIT
from .pg_pool import _Pool
from .pg_roles import _SHARED_SCHEMA, SCHEMA_VERSION, _RightsWatch, _Roles, _sanitize
from .pg_roles import INIT_LOCK_SECONDS as INIT_LOCK_SECONDS
from .pg_roles import LISTEN_PING as LISTEN_PING
from .pg_roles import LISTEN_TCP as LISTEN_TCP
from .pg_roles import RIGHTS_CHANNEL as RIGHTS_CHANNEL
from .pg_service import _Service
from .pg_service import check_dsn as check_dsn
from .pg_sql import translate_qmarks

__all__ = ["PostgreSQLBackend", "SCHEMA_VERSION", "translate_qmarks"]

DEFAULT_MAX_RESULT = 64 * 1024 * 1024  # limits.max_statement_result_bytes
GRANTS_CACHE_SECONDS = 1.0  # how stale another server's method grants may be seen
SERVER_ALIVE_SECONDS = 10  # a server that has not published its sessions for this long is gone


def _user(r: tuple[Any, ...]) -> UserRecord:
    return UserRecord(r[0], r[1], bytes(r[2]), bytes(r[3]), bytes(r[4]), r[5], r[6])


class PostgreSQLBackend(Backend):
    name = "postgresql"

    def __init__(self, settings: StorageSettings, limits: LimitsSettings | None = None) -> None:
        self.max_result = limits.max_statement_result_bytes if limits else DEFAULT_MAX_RESULT
        self._service = _Service(settings)  # fails now, clearly, if PostgreSQL is unreachable
        self._roles = _Roles(self._service)
        self._rights = _RightsWatch(self._service)
        self._grants_cache: dict[str, tuple[float, int, dict[str, frozenset[str]]]] = {}
        self.budget = _Budget(settings.pool_size * self.max_result)
        self._pool = _Pool(settings.pool_size, max(0.5, settings.busy_timeout_seconds),
                           self._roles.connect, "storage.pool_size")

    @property
    def settings(self) -> StorageSettings:
        """The storage settings; every connection is opened with the current ones."""
        return self._service.settings

    @settings.setter
    def settings(self, settings: StorageSettings) -> None:
        self._service.settings = settings

    # -- setup --
    def initialize(self) -> None:
        """Create the casemate schema and one login role per built-in group.

        Needs a role that may create schemas in the database (its owner) and
        roles (CREATEROLE), or a superuser.  Idempotent: a second ``casemate
        init`` over the same database keeps its users, groups and roles.
        """
        try:
            self._service.txn(self._roles.initialize)
        except StorageError as e:
            if e.code == "42501":
                raise StorageError(
                    f"the PostgreSQL role {self._service.dsn_parts.get('user', '')!s} lacks rights "
                    f"to set Casemate up: {e.message}", "42501",
                    "run casemate init with a role that owns the database and has CREATEROLE "
                    "(ALTER ROLE ... CREATEROLE), or as a superuser; the servers can then use "
                    "the same role") from e
            raise
        self.check()

    def check(self) -> None:
        """Raise StorageError unless the schema exists with this version; load the roles."""
        rows = self._service.q("SELECT schema_version FROM casemate.meta")
        if not rows:
            raise StorageError("the Casemate schema in this PostgreSQL database is incomplete",
                               "3F000", _NO_SCHEMA_HINT)
        if rows[0][0] != SCHEMA_VERSION:
            raise StorageError(*self._roles.version_error(rows[0][0]))
        for stmt in _SHARED_SCHEMA:
            self._service.q(stmt, fetch=False)
        self.repair_roles()
        for g in BUILTIN_GROUPS:
            self._roles.role(g, refresh=g == BUILTIN_GROUPS[0])
        self._service.serving = True

    def repair_roles(self, group: str | None = None) -> None:
        """Put the group roles (or ``group``'s) back as Casemate made them (pg_roles.py)."""
        self._roles.repair(group)

    def connect(self) -> StorageConnection:
        return _Connection(self)

    # -- users --
    _COLS = "name, grp, salt, stored_key, server_key, iterations, created"

    def get_user(self, name: str) -> UserRecord | None:
        rows = self._service.q(f"SELECT {self._COLS} FROM casemate.users WHERE name = %s", (name,))
        return _user(rows[0]) if rows else None

    def add_user(self, record: UserRecord) -> None:
        created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        rows = self._service.q(f"INSERT INTO casemate.users ({self._COLS}) VALUES (%s, %s, %s, %s, %s, "
                       "%s, %s) ON CONFLICT (name) DO NOTHING RETURNING name",
                       (record.name, record.group, record.salt, record.stored_key,
                        record.server_key, record.iterations, created))
        if not rows:
            raise KeyError(record.name)

    def update_user(self, record: UserRecord) -> None:
        rows = self._service.q("UPDATE casemate.users SET grp = %s, salt = %s, stored_key = %s, "
                       "server_key = %s, iterations = %s WHERE name = %s RETURNING name",
                       (record.group, record.salt, record.stored_key, record.server_key,
                        record.iterations, record.name))
        if not rows:
            raise KeyError(record.name)
        self._rights.changed()

    def remove_user(self, name: str) -> None:
        if not self._service.q("DELETE FROM casemate.users WHERE name = %s RETURNING name", (name,)):
            raise KeyError(name)
        self._rights.changed()

    def list_users(self) -> list[UserRecord]:
        return [_user(r) for r in self._service.q(
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
            self._roles.ensure_role(conn, role, password, reset=True)
            conn.execute("INSERT INTO casemate.groups VALUES (%s, %s, %s, false)",
                         (name, role, password))
            conn.execute(pgsql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(
                pgsql.Identifier(role)))
        self._service.txn(work)

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
            self._rights.changed(conn)
            conn.execute(pgsql.SQL("DROP OWNED BY {}").format(role))  # its privileges here
            conn.execute(pgsql.SQL("DROP ROLE {}").format(role))
        self._service.txn(work)
        self._pool.drop_key(name)
        self._grants_cache.pop(name, None)
        self._roles.forget(name)

    def list_groups(self) -> dict[str, dict[str, frozenset[str]]]:
        out: dict[str, dict[str, frozenset[str]]] = {g: {} for g in BUILTIN_GROUPS}
        for (g,) in self._service.q("SELECT name FROM casemate.groups ORDER BY name"):
            out.setdefault(g, {})
        for g, t, p in self._service.q("SELECT grp, tbl, privileges FROM casemate.grants"):
            out.setdefault(g, {})[t] = frozenset(p.split(","))
        return out

    def grants_for(self, group: str) -> dict[str, frozenset[str]]:
        # Read at every storage acquisition (for server-method rights; PostgreSQL enforces
        # table rights itself), so cached briefly, and only while no change was notified.
        now, version = time.monotonic(), self._rights.version
        hit = self._grants_cache.get(group)
        if hit is not None and now - hit[0] < GRANTS_CACHE_SECONDS and hit[1] == version:
            return hit[2]
        grants = {t: frozenset(p.split(",")) for t, p in self._service.q(
            "SELECT tbl, privileges FROM casemate.grants WHERE grp = %s", (group,))}
        self._grants_cache[group] = (now, version, grants)
        return grants

    # -- noticing changes made by other processes (server/rights.py) --
    def grants_version(self) -> int | None:
        # Our own changes move it at once, other processes' through their NOTIFY; before
        # watch_rights() (the CLI) it is unknown.
        return self._rights.current()

    def watch_rights(self) -> None:
        """LISTEN for other processes' changes (a server calls this once, at start)."""
        self._rights.watch()

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
            self._rights.changed(conn)
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
        self._service.txn(work)
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
        result: list[tuple[int, str]] = self._service.txn(work)
        return result

    def other_sessions(self, server: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name, sessions in self._service.q(
                "SELECT server, sessions FROM casemate.servers WHERE server <> %s AND seen > "
                f"now() - interval '{SERVER_ALIVE_SECONDS} seconds' ORDER BY server", (server,)):
            out.extend({**row, "server": name} for row in sessions)
        return out

    def request_drop(self, server: str, session: int, reason: str) -> None:
        if not self._service.q("INSERT INTO casemate.drops SELECT server, %s, %s FROM casemate.servers "
                       "WHERE server = %s AND seen > now() - interval "
                       f"'{SERVER_ALIVE_SECONDS} seconds' ON CONFLICT (server, session) DO "
                       "UPDATE SET reason = EXCLUDED.reason RETURNING server",
                       (session, reason, server)):
            raise KeyError(server)

    # -- housekeeping --
    def data_size(self) -> int:
        return int(self._service.q("SELECT pg_database_size(current_database())")[0][0])

    def integrity_check(self) -> str:
        """B-tree checks with amcheck when installed; PostgreSQL checks its pages itself."""
        found = self._service.q("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = "
                        "e.extnamespace WHERE e.extname = 'amcheck'")
        if not found:
            return "ok"
        check = pgsql.Identifier(found[0][0], "bt_index_check")  # its schema: not on our path
        try:
            self._service.q(pgsql.SQL("SELECT {}(c.oid::regclass) FROM pg_index i JOIN pg_class c ON "
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
        self._rights.close()
        self._pool.close()
        self._service.close()
