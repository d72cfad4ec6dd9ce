"""Users, groups and grants of the SQLite backend, in ``Data/system.sqlite``.

The file is out of reach of user SQL (ATTACH is refused by the authorizer) and
created 0600 (sqlite.py): the password verifiers are the server user's alone.
One connection, shared by the server's threads under a lock.  Part of the SQLite
backend (:mod:`casemate.storage.sqlite`); SQLite's exceptions leave it as
StorageError.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .base import BUILTIN_GROUPS, UserRecord
from .sqlite_errors import ENGINE_ERRORS, engine_boundary, engine_error, translates_itself

__all__ = ["UserStore", "DATA_VERSION_EVERY"]

# How stale another process's change to users or grants may be seen (server/rights.py).
DATA_VERSION_EVERY = 0.001


class UserStore:
    """The user, group and grant records of one database (``Data/system.sqlite``)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._grant_changes = 0  # changes made through this process's own connection
        self._data_version = (0, -1.0)  # (PRAGMA data_version, when read)
        self._sys = self._open(path)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                             timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, grp TEXT NOT NULL, "
            "salt BLOB NOT NULL, stored_key BLOB NOT NULL, server_key BLOB NOT NULL, "
            "iterations INTEGER NOT NULL, created TEXT NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS groups (name TEXT PRIMARY KEY)")
        db.execute("CREATE TABLE IF NOT EXISTS grants (grp TEXT NOT NULL REFERENCES groups(name),"
                   " tbl TEXT NOT NULL, privileges TEXT NOT NULL, PRIMARY KEY (grp, tbl))")
        db.execute("CREATE TABLE IF NOT EXISTS builtin_groups (name TEXT PRIMARY KEY)")
        db.executemany("INSERT OR IGNORE INTO builtin_groups VALUES (?)",
                       [(g,) for g in BUILTIN_GROUPS])
        return db

    def _row(self, r: tuple[Any, ...]) -> UserRecord:
        return UserRecord(r[0], r[1], bytes(r[2]), bytes(r[3]), bytes(r[4]), r[5], r[6])

    _COLS = "name, grp, salt, stored_key, server_key, iterations, created"

    def get_user(self, name: str) -> UserRecord | None:
        with self._lock:
            r = self._sys.execute(f"SELECT {self._COLS} FROM users WHERE name=?", (name,)
                                  ).fetchone()
        return self._row(r) if r else None

    def add_user(self, record: UserRecord) -> None:
        created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with self._lock:
            try:
                self._sys.execute(
                    f"INSERT INTO users ({self._COLS}) VALUES (?,?,?,?,?,?,?)",
                    (record.name, record.group, record.salt, record.stored_key,
                     record.server_key, record.iterations, created))
            except sqlite3.IntegrityError:
                raise KeyError(record.name) from None

    def update_user(self, record: UserRecord) -> None:
        with self._lock:
            self._grant_changes += 1  # open sessions re-check their user (server/rights.py)
            cur = self._sys.execute(
                "UPDATE users SET grp=?, salt=?, stored_key=?, server_key=?, iterations=? "
                "WHERE name=?", (record.group, record.salt, record.stored_key,
                                 record.server_key, record.iterations, record.name))
        if cur.rowcount == 0:
            raise KeyError(record.name)

    def remove_user(self, name: str) -> None:
        with self._lock:
            self._grant_changes += 1
            cur = self._sys.execute("DELETE FROM users WHERE name=?", (name,))
        if cur.rowcount == 0:
            raise KeyError(name)

    def list_users(self) -> list[UserRecord]:
        with self._lock:
            rows = self._sys.execute(f"SELECT {self._COLS} FROM users ORDER BY name").fetchall()
        return [self._row(r) for r in rows]

    def add_group(self, name: str) -> None:
        if name in BUILTIN_GROUPS:
            raise KeyError(name)
        with self._lock:
            self._grant_changes += 1
            try:
                self._sys.execute("INSERT INTO groups (name) VALUES (?)", (name,))
            except sqlite3.IntegrityError:
                raise KeyError(name) from None

    def remove_group(self, name: str) -> None:
        with self._lock:
            if self._sys.execute("SELECT 1 FROM users WHERE grp=?", (name,)).fetchone():
                raise ValueError(f"group {name!r} still has users")
            self._grant_changes += 1
            self._sys.execute("DELETE FROM grants WHERE grp=?", (name,))
            if self._sys.execute("DELETE FROM groups WHERE name=?", (name,)).rowcount == 0:
                raise KeyError(name)

    def list_groups(self) -> dict[str, dict[str, frozenset[str]]]:
        out: dict[str, dict[str, frozenset[str]]] = {g: {} for g in BUILTIN_GROUPS}
        with self._lock:
            for (g,) in self._sys.execute("SELECT name FROM groups ORDER BY name"):
                out[g] = {}
            for g, t, privs in self._sys.execute("SELECT grp, tbl, privileges FROM grants"):
                out.setdefault(g, {})[t] = frozenset(privs.split(","))
        return out

    def grants_for(self, group: str) -> dict[str, frozenset[str]]:
        with self._lock:
            rows = self._sys.execute("SELECT tbl, privileges FROM grants WHERE grp=?", (group,))
            return {t: frozenset(p.split(",")) for t, p in rows}

    @translates_itself  # asked before every statement: no wrapper call
    def grants_version(self) -> tuple[int, int]:
        # data_version moves when another connection (another process: the casemate CLI)
        # commits to system.sqlite; our own changes are counted here, at once.  Servers ask
        # before every statement: the pragma (~8 us) is read at most once a millisecond.
        now = time.monotonic()
        version, read_at = self._data_version
        if now - read_at >= DATA_VERSION_EVERY:
            try:
                with self._lock:
                    version = self._sys.execute("PRAGMA data_version").fetchone()[0]
            except ENGINE_ERRORS as e:
                raise engine_error(e) from e
            self._data_version = (version, now)
        return version, self._grant_changes

    def set_grants(self, group: str, table: str, privileges: frozenset[str]) -> None:
        with self._lock:
            self._grant_changes += 1
            if group not in BUILTIN_GROUPS and not self._sys.execute(
                    "SELECT 1 FROM groups WHERE name=?", (group,)).fetchone():
                raise KeyError(group)
            if privileges:
                self._sys.execute("INSERT OR REPLACE INTO grants VALUES (?,?,?)",
                                  (group, table.lower(), ",".join(sorted(privileges))))
            else:
                self._sys.execute("DELETE FROM grants WHERE grp=? AND tbl=?",
                                  (group, table.lower()))

    def close(self) -> None:
        with self._lock:
            self._sys.close()


# SQLite's exceptions leave it as StorageError (sqlite_errors.py).
engine_boundary(UserStore)
