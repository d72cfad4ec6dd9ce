"""The PostgreSQL backend's connection pool: connections of several roles (each Casemate
group logs in as its own) under one limit, reset (``DISCARD ALL``) as they go back.

Part of the PostgreSQL backend (:mod:`casemate.storage.postgresql`).
"""

from __future__ import annotations

import collections
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import ClientCursor
from psycopg.pq import ExecStatus, TransactionStatus

from .base import StorageError

IDLE_LIFETIME = 300.0      # idle pooled connections older than this are closed
RESET_WAIT = 10.0          # a pooled connection whose DISCARD ALL takes longer is closed
_IDLE = TransactionStatus.IDLE


class _Phys:
    """One PostgreSQL connection, opened as one role."""

    __slots__ = ("conn", "mog", "key", "resetting", "close_all", "idle_since", "swollen")

    def __init__(self, conn: psycopg.Connection[Any], key: str) -> None:
        self.conn = conn
        self.mog = ClientCursor(conn)  # binds parameters client-side (libpq's escaping)
        self.key = key            # the Casemate group ("" for the service role)
        self.resetting = False    # a DISCARD ALL was sent; its result is not read yet
        self.close_all = False    # exhausted cursors wait for a CLOSE ALL
        self.idle_since = time.monotonic()
        self.swollen = False      # libpq grew its buffer for a large row: close, do not pool

    @property
    def usable(self) -> bool:
        return not self.conn.closed and not self.conn.broken

    def alive(self) -> bool:
        """Usable, and no unread data while idle: a restarted or stopped PostgreSQL sends a
        goodbye (and closes), which would otherwise fail the next statement."""
        if not self.usable:
            return False
        try:
            readable, _, _ = select.select([self.conn.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def start_reset(self) -> bool:
        """Send ``DISCARD ALL`` without waiting: settings, temporary tables, cursors, prepared
        statements, LISTENs and advisory locks go at once (a lock must not outlive its
        session), and the result is read when the connection is next taken."""
        try:
            self.conn.pgconn.send_query(b"DISCARD ALL")
        except psycopg.Error:
            return False
        self.resetting = True
        self.close_all = False
        return True

    def ready(self) -> bool:
        """The reset went through and the connection is alive (else: discard it)."""
        if self.resetting:
            self.resetting = False
            if not self._reset_done():
                return False
        return self.alive()

    def _reset_done(self) -> bool:
        pg = self.conn.pgconn
        try:
            deadline = time.monotonic() + RESET_WAIT
            pg.consume_input()
            while pg.is_busy():  # wait in select (no GIL held), not inside libpq
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([pg.socket], [], [], left)[0]:
                    return False
                pg.consume_input()
            ok = True
            while (res := pg.get_result()) is not None:
                ok = ok and res.status == ExecStatus.COMMAND_OK
        except (psycopg.Error, OSError):
            return False
        return ok and pg.transaction_status == _IDLE


class _Pool:
    """Connections for several roles under one limit, reused per role.

    ``psycopg_pool`` keeps one pool per connection string; here each Casemate
    group logs in as its own role, and ``storage.pool_size`` bounds them all
    together: an idle connection of one role is closed to open one for
    another when the limit is reached.
    """

    def __init__(self, limit: int, timeout: float, connect: Callable[[str], psycopg.Connection[Any]],
                 what: str, reset: bool = True) -> None:
        self.limit = limit
        self._reset = reset  # sessions' connections: reset before another session gets one
        self.timeout = timeout
        self._connect = connect
        self._what = what
        self._idle: collections.OrderedDict[int, _Phys] = collections.OrderedDict()
        self._open = 0
        self._cond = threading.Condition()
        self._closed = False

    def get(self, key: str) -> _Phys:
        while True:
            p = self._get(key)
            if p.ready():
                return p
            self.discard(p)

    def _get(self, key: str) -> _Phys:
        deadline = time.monotonic() + self.timeout
        victim: _Phys | None = None
        with self._cond:
            while True:
                if self._closed:
                    raise StorageError("the storage is closed", "08003")
                found = self._take_idle(key)
                if found is not None:
                    return found
                if self._open < self.limit:
                    self._open += 1
                    break
                if self._idle:  # replace another role's idle connection
                    _, victim = self._idle.popitem(last=False)
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StorageError(
                        f"all {self.limit} PostgreSQL connections of this Casemate server "
                        f"are in use ({self._what}); waited {self.timeout:g} s", "53300",
                        "raise storage.pool_size (and PostgreSQL's max_connections), or end "
                        "long transactions sooner")
                self._cond.wait(left)
        if victim is not None:
            victim.conn.close()
        try:
            return _Phys(self._connect(key), key)
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def _take_idle(self, key: str) -> _Phys | None:
        now = time.monotonic()
        for ident, p in list(self._idle.items()):
            if now - p.idle_since > IDLE_LIFETIME or not p.usable:
                del self._idle[ident]
                self._open -= 1
                p.conn.close()
        for ident, p in reversed(self._idle.items()):  # most recently used first
            if p.key == key:
                del self._idle[ident]
                return p
        return None

    def put(self, p: _Phys) -> None:
        ok = p.usable and p.conn.info.transaction_status == _IDLE and not p.swollen
        if ok and self._reset:  # whatever the statements did: no classifier decides this
            ok = p.start_reset()
        if not ok:
            self.discard(p)
            return
        p.idle_since = time.monotonic()
        with self._cond:
            if self._closed:
                self._open -= 1
                p.conn.close()
                return
            self._idle[id(p)] = p
            self._cond.notify()

    def discard(self, p: _Phys) -> None:
        try:
            p.conn.close()
        finally:
            with self._cond:
                self._open -= 1
                self._cond.notify()

    def drop_key(self, key: str) -> None:
        with self._cond:
            for ident, p in list(self._idle.items()):
                if p.key == key:
                    del self._idle[ident]
                    self._open -= 1
                    p.conn.close()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = list(self._idle.values()), collections.OrderedDict()
            self._open -= len(idle)
            self._cond.notify_all()
        for p in idle:
            p.conn.close()
