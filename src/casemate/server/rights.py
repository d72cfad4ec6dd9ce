"""Open sessions follow changes to their user: removed, moved to another group, new grants.

A session's user and group are checked at login, but the user store can change
while it runs: over the wire (this server), through another server process on the
same PostgreSQL database, or by ``casemate user ...`` run on the folder.  The
backend's ``grants_version()`` moves whenever any of them commits a change
(SQLite: the system database's ``data_version``; PostgreSQL: a notification).
Before every request a session compares it with the version the server last acted
on, one cheap call; when it moved, the user table is read once for all sessions:

- a removed user's sessions end (and its web logins with them);
- a user moved to another group has its sessions ended, with a message saying so
  (their storage connections, transactions and cursors were opened as the old
  group: carrying them over would mix two sets of rights);
- the others get the new grants before their next statement, also inside an
  open transaction.

A background check (every couple of seconds) ends idle sessions of removed users too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import TYPE_CHECKING

from ..errors import Codes
from ..storage import Backend, StorageConnection
from ..storage.access import Policy

if TYPE_CHECKING:
    from .app import Server
    from .session import Session

__all__ = ["Rights"]


def _reapply(backend: Backend, conn: StorageConnection, group: str, version: Hashable) -> Policy:
    """Give a held storage connection its group's current grants (blocking)."""
    conn.set_policy(Policy(group, backend.grants_for(group)))
    conn.policy_key = (group, version)
    return conn.policy


class Rights:
    """Brings open sessions in line with the user store when it changes."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.version: Hashable | None = None  # None: never read, so stale
        self._pending: asyncio.Future[None] | None = None

    def stale(self) -> bool:
        """True when users, groups or grants may have changed since the last refresh."""
        v = self.server.backend.grants_version()
        return v is None or v != self.version

    def current(self, s: Session) -> bool:
        """True when ``s`` may run a request at once (the fast path's check)."""
        # (stale() written out: this runs before every request the fast path serves)
        v = self.server.backend.grants_version()
        if v is None or v != self.version or s.rights_version != v:
            return False
        conn = s.storage
        return conn is None or conn.policy_key == (s.group, self.version)

    async def check(self, s: Session | None = None) -> bool:
        """Refresh if needed; return False when ``s`` was ended by the change."""
        # A session whose login read its user before the last refresh was not in the
        # registry when that refresh ran: it is checked by the next one.
        if self.stale() or (s is not None and s.rights_version != self.version):
            await self.refresh()
        if s is None:
            return True
        if s.closed:
            return False
        conn = s.storage
        if conn is not None and conn.policy_key != (s.group, self.version):
            s.policy = await s.runner.call(_reapply, self.server.backend, conn, s.group, self.version)
        return True

    async def still_admin(self, user: str) -> bool:
        """Read ``user`` afresh before an admin action: True if it is still an admin.

        Other processes' changes reach :meth:`stale` a moment after their commit (at
        once for SQLite, by notification on PostgreSQL); an admin action, which could
        create another admin, does not run in that moment.  A change found here is
        applied to every session at once.
        """
        loop = asyncio.get_running_loop()
        rec = await loop.run_in_executor(self.server.executor, self.server.backend.get_user,
                                         user)
        if rec is not None and rec.group == "admin":
            return True
        await self._reload()
        return False

    async def refresh(self) -> None:
        """Read the users once (one read shared by every session that asks meanwhile)."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._reload())
            self._pending.add_done_callback(self._reloaded)
        await asyncio.shield(self._pending)

    def _reloaded(self, fut: asyncio.Future[None]) -> None:
        if self._pending is fut:
            self._pending = None
        if not fut.cancelled():
            fut.exception()  # retrieved: a failed read is reported to the callers that wait

    async def _reload(self) -> None:
        loop = asyncio.get_running_loop()
        backend, pool = self.server.backend, self.server.executor
        version = await loop.run_in_executor(pool, backend.grants_version)
        users = await loop.run_in_executor(pool, backend.list_users)
        self.apply({u.name: u.group for u in users}, version)
        self.version = version

    def apply(self, groups: dict[str, str], version: Hashable | None) -> None:
        """End the sessions (and web logins) whose user is gone or in another group."""
        for s in list(self.server.sessions.values()):
            new = groups.get(s.user)
            if new == s.group:
                s.rights_version = version
                continue
            why = (f'user "{s.user}" was removed' if new is None else
                   f'user "{s.user}" was moved from group {s.group} to {new}')
            s.drop(f"session ended: {why} by an administrator; log in again",
                   Codes.RIGHTS_CHANGED)
        web = self.server.web
        if web is not None:
            web.forget_logins(lambda user: groups.get(user) != "admin")

