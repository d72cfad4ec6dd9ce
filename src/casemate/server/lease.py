"""A session's storage connection: leased from the pool with the user's rights, and
given back as soon as no transaction or open cursor needs it.

The lease keeps its state on the session (``storage``, ``policy``, ``portals``,
``txn_wrote``), which the monitor and the rights checks read.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..storage import StorageConnection
from ..storage.access import Policy

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Lease"]

log = logging.getLogger("casemate.server")


class Lease:
    """Acquires and returns one session's pooled storage connection."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self.server = session.server

    async def get(self) -> StorageConnection:
        """The session's storage connection, acquired now if it holds none."""
        s = self.s
        if s.storage is None:
            if self.server.cost.limit > 0:  # SQLite: a pooled connection, at once
                s.storage = self.acquire_now()
            else:
                s.storage = await s.runner.call(self.acquire_now)
        return s.storage

    def acquire_now(self) -> StorageConnection:
        # Grants are checked at every acquisition, so a change applies from the next
        # transaction; the policy is rebuilt only when the group or the grants differ
        # from what the pooled connection last enforced.
        backend = self.server.backend
        conn = self.server.pool.acquire()
        try:
            version = backend.grants_version()
            key = (self.s.group, version)
            if version is None or conn.policy_key != key:
                conn.set_policy(Policy(self.s.group, backend.grants_for(self.s.group)))
                conn.policy_key = key
        except BaseException:
            self.server.pool.release(conn)
            raise
        self.s.policy = conn.policy
        return conn

    def maybe_release(self) -> None:
        """Give the storage connection back when no transaction or cursor needs it."""
        conn = self.s.storage
        if conn is None or not conn.in_transaction:
            self.s.txn_wrote = False
        if conn is not None and not self.s.portals and not conn.in_transaction:
            self.s.storage = None
            self.server.pool.release(conn)

    async def release_all(self) -> None:
        """End of session: close cursors, roll back an open transaction, return the connection."""
        s = self.s
        conn, s.storage = s.storage, None
        portals, s.portals = s.portals, {}
        if conn is None:
            return
        try:
            for cur in portals.values():
                await s.runner.call(cur.close)
            if conn.in_transaction:
                log.info("session %s: rolling back its open transaction", s.id)
                await s.runner.call(conn.rollback)
                self.server.lock_released()
            self.server.pool.release(conn)
        except Exception as e:  # noqa: BLE001 - a broken connection is discarded, not reused
            log.warning("session %s: could not release its storage connection: %s", s.id, e)
