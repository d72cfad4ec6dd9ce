"""What a session may use of its server: the one interface between the two.

A :class:`~casemate.server.session.Session` (and the parts it is made of: login,
handlers, runner, lease) holds its server as a :class:`SessionHost`, not as the
:class:`~casemate.server.app.Server` class, so mypy refuses any reach into the
server beyond this list: the registry of sessions, the listeners, TLS state,
reloads and shutdown stay the server's own.  The server satisfies it by its
shape (a ``typing.Protocol``); a test server for a session needs only these.
"""

from __future__ import annotations

import collections
import concurrent.futures
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..errors import Error
    from ..methods import ServerMethod
    from ..settings import Settings
    from ..storage import Backend, StorageConnection
    from .audit import AuditLog, Throttle
    from .certauth import CertUsers
    from .inline import CostModel
    from .monitor import Table
    from .rights import Rights
    from .session import Session

__all__ = ["SessionHost", "StoragePool"]


class StoragePool(Protocol):
    """Idle storage connections, shared by the sessions (server/app.ConnectionPool)."""

    def acquire(self) -> StorageConnection: ...

    def release(self, conn: StorageConnection) -> None: ...


class SessionHost(Protocol):
    """The server as its sessions see it."""

    # -- what the server holds for every session (read-only here: a session never replaces
    #    them, so they are properties; the server has plain attributes)
    @property
    def version(self) -> str: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def backend(self) -> Backend: ...
    @property
    def pool(self) -> StoragePool: ...
    @property
    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """Worker threads for storage calls."""
    @property
    def cost(self) -> CostModel:
        """Which storage calls run in the event loop."""
    @property
    def rights(self) -> Rights:
        """Sessions follow user, group and grant changes."""
    @property
    def methods(self) -> dict[str, ServerMethod]: ...
    @property
    def audit(self) -> AuditLog: ...
    @property
    def throttle(self) -> Throttle: ...
    @property
    def cert_users(self) -> CertUsers: ...

    # -- counters the sessions add to (the status table and the web page's graphs)
    statements: int
    bytes_in: int
    bytes_out: int
    # Sessions with a large message to decode, in turn: the first decodes, a slice per
    # turn of the event loop; the others wait (session.Session._decode_slice).
    large_decodes: collections.deque[Session]

    # -- the session's life
    def admission_error(self, session: Session) -> Error | None:
        """Why a new session may not log in now (shutting down, at the limit), or None."""

    def on_login(self, s: Session) -> None:
        """``s`` logged in: it joins the registry (and the audit log says so)."""

    def on_session_end(self, s: Session) -> None:
        """``s`` ended: it leaves the registry."""

    # -- the write lock (one writer at a time, FIFO among waiters)
    def lock_released(self) -> None:
        """A transaction ended: wake the longest-waiting writer."""

    async def wait_lock_released(self, timeout: float, first: bool = False) -> None:
        """Wait until a transaction ends, or ``timeout``."""

    # -- administration
    def admin_command(self, caller: Session, command: str, args: dict[str, Any]) -> Table:
        """Run a server command (status, sessions, drop, message) for an admin ``caller``."""
