"""The server: listeners, TLS (or not), the session registry, shutdown and reloads.

What happens to an accepted connection before its :class:`Session` runs (the
IP rules, the peek at the first byte, TLS or the refusals) is :mod:`.accept`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hashlib
import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import continuity, tls
from ..database import DatabaseFolder
from ..errors import Codes, Error
from ..methods import MethodLoadError, ServerMethod, load_methods
from ..settings import Settings, SettingsError, load_settings
from ..storage import Backend, StorageConnection, StorageError
from ..version import __version__
from .accept import Acceptor
from .admission import PendingLogins, address_key
from .audit import AuditLog, Throttle
from .certauth import CertUsers
from .inline import CostModel
from .monitor import Table, run_server_command, share_sessions
from .rights import Rights
from .session import Session

__all__ = ["Server", "ServerStartError", "TLSState"]

log = logging.getLogger("casemate.server")


class ServerStartError(Exception):
    """The server cannot start (bad settings, bad key/certificate, port in use...)."""


@dataclass(frozen=True)
class TLSState:
    """The certificate in service: the context for new connections and its channel binding."""

    context: ssl.SSLContext
    cb_data: bytes
    info: tls.CertInfo
    warnings: tuple[str, ...]


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ConnectionPool:
    """Idle storage connections, reused so a short session does not reopen the database."""

    def __init__(self, backend: Backend, keep: int) -> None:
        self.backend = backend
        self.keep = keep
        self._idle: list[StorageConnection] = []
        self._lock = threading.Lock()

    def acquire(self) -> StorageConnection:  # called from worker threads
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self.backend.connect()

    def release(self, conn: StorageConnection) -> None:
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()


def load_tls(folder: DatabaseFolder, settings: Settings) -> TLSState:
    """Check key.pem/cert.pem and build the server context; raises tls.CertificateError."""
    chain, warnings = tls.check_pair(folder.key_path, folder.cert_path)
    ca = None
    if settings.network.require_client_certificate:
        ca = folder.client_ca_path
        if not ca.exists():
            raise tls.CertificateError(
                f"require_client_certificate is on but {ca} is missing; put the CA that signs "
                "client certificates there")
    crl = folder.resources / "client-crl.pem"
    try:
        ctx = tls.server_context(folder.key_path, folder.cert_path,
                                 settings.network.min_tls_version, ca,
                                 crl if ca is not None and crl.exists() else None,
                                 continuity.served_chain(folder.resources / "successor.pem"))
    except (ssl.SSLError, OSError) as e:
        raise tls.CertificateError(f"cannot use {folder.cert_path} with {folder.key_path}: {e}"
                                   ) from e
    from cryptography.hazmat.primitives import serialization
    der = chain[0].public_bytes(serialization.Encoding.DER)
    return TLSState(ctx, tls.channel_binding_data(der), tls.inspect_cert(chain[0]),
                    tuple(warnings))


class Server:
    """A Casemate server on one database folder."""

    version = __version__

    def __init__(self, folder: DatabaseFolder, settings: Settings,
                 file_settings: Settings | None = None) -> None:
        self.folder = folder
        self.settings = settings
        # What casemate.toml said at start (settings may carry --host/--port overrides).
        self.file_settings = file_settings or settings
        self.encrypted = settings.network.encrypt_client_server_connections
        self.tls: TLSState | None = None
        self.backend: Backend
        self.pool: ConnectionPool
        self.cost = CostModel(0)  # which storage calls may run in the event loop (prepare)
        self.event_loop = "asyncio"  # or "uvloop" (start)
        self.executor = concurrent.futures.ThreadPoolExecutor(
            settings.storage.worker_threads, thread_name_prefix="casemate-storage")
        self.sessions: dict[int, Session] = {}
        self.methods: dict[str, ServerMethod] = {}
        self._lock_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.statements = 0
        self.bytes_in = self.bytes_out = 0  # protocol bytes of all sessions (history.py)
        self.large_decodes: collections.deque[Session] = collections.deque()
        self.started = time.time()
        self._started_mono = time.monotonic()
        self._rate_samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=40)
        self.accepting = True
        self.pending_settings_change = False
        self.addresses: list[tuple[str, int]] = []
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping: asyncio.Event | None = None
        self._acceptor = Acceptor(self, self._spawn)
        self.web: Any = None  # the web administration page, when enabled
        self.publisher: Any = None  # the LAN announcement (lanpub), when published
        self._settings_digest = self._digest()
        a = settings.access
        self.throttle = Throttle(a.throttle_after_failures, a.throttle_base_delay_seconds,
                                 a.throttle_max_delay_seconds, a.throttle_forget_seconds)
        lim = settings.limits
        self.audit = AuditLog(folder.logs_dir / "audit.jsonl", lim.log_file_max_kb * 1024,
                              lim.log_files_kept)
        self.rights = Rights(self)  # sessions follow user, group and grant changes
        self.pending = PendingLogins(settings.limits.max_unauthenticated_connections,
                                     a.max_unauthenticated_per_address)
        self.cert_users = CertUsers(settings.auth, folder.resources / "client-users.conf")

    # -- start ------------------------------------------------------------
    def prepare(self) -> None:
        """Everything that can fail before listening: TLS files, storage.  Raises ServerStartError."""
        if self.encrypted:
            fp = self.folder.ensure_certificate(self.settings)
            if fp:
                log.info("new certificate fingerprint (SHA-256): %s", fp)
            try:
                self.folder.renew_if_due(self.settings)
                self.tls = load_tls(self.folder, self.settings)
            except tls.CertificateError as e:
                raise ServerStartError(f"cannot start encrypted: {e}; the server will not start "
                                       "(it never falls back to plaintext)") from e
            for w in self.tls.warnings:
                log.warning("%s", w)
            if lan := tls.wildcard_warning(self.settings.network.listen, self.tls.info.sans,
                                           self.folder.path):
                log.warning("%s", lan)
            log.info("certificate %s, SHA-256 fingerprint %s, expires %s",
                     self.tls.info.subject, self.tls.info.sha256,
                     self.tls.info.not_after.date())
        try:
            self.methods = load_methods(self.folder.path / "Methods")
        except MethodLoadError as e:
            raise ServerStartError(f"cannot load server methods: {e}") from e
        if self.methods:
            log.info("server methods: %s", ", ".join(sorted(self.methods)))
        try:
            self.backend = self.folder.backend(self.settings)
            self.backend.check()
            self.backend.watch_rights()
        except StorageError as e:
            raise ServerStartError(f"cannot open the storage: {e.message}"
                                   + (f" ({e.hint})" if e.hint else "")) from e
        except Exception as e:
            raise ServerStartError(f"cannot open the storage: {e}") from e
        self.pool = ConnectionPool(self.backend, self.settings.storage.worker_threads * 2)
        limit = self.settings.storage.inline_limit_ms / 1000 if self.backend.inline_calls else 0
        self.cost = CostModel(limit)

    def _bind(self) -> None:
        net = self.settings.network
        port = net.port
        for host in net.listen:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_PASSIVE)
            except socket.gaierror as e:
                raise ServerStartError(f"cannot resolve listen address {host!r}: {e}") from e
            fam, _, _, _, addr = infos[0]
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind(addr)
            except OSError as e:
                s.close()
                raise ServerStartError(f"cannot listen on {host} port {port}: {e.strerror}"
                                       ) from e
            s.listen(1024)
            s.setblocking(False)
            self._listeners.append(s)
            bound = s.getsockname()
            self.addresses.append((bound[0], bound[1]))
            port = port or bound[1]  # with port 0, every address gets the same free port

    async def start(self) -> None:
        self._stopping = asyncio.Event()
        self._bind()
        loop = asyncio.get_running_loop()
        self.event_loop = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
        for s in self._listeners:
            self._spawn(self._acceptor.accept_loop(s))
        self._spawn(self._watch_settings())
        if self.backend.shares_sessions:  # other servers over the same database list ours
            self._spawn(share_sessions(self))
        if self.encrypted:
            self._spawn(self._renewal_loop())
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self.reload_certificate)
        if self.settings.admin_web.enabled:
            from .web import start_web
            self.web = await start_web(self)
        from .lanpub import start_publication
        self._spawn(start_publication(self))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    @property
    def mode(self) -> str:
        if not self.encrypted:
            return "plain (not encrypted)"
        return f"encrypted (TLS {self.settings.network.min_tls_version} minimum)"

    # -- sessions and the write lock ----------------------------------------
    def lock_released(self) -> None:
        """A transaction ended: wake the longest-waiting writer (one, not all: a herd of
        retries would queue ahead of the new lock holder's own statements)."""
        while self._lock_waiters:
            fut = self._lock_waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def wait_lock_released(self, timeout: float, first: bool = False) -> None:
        """Wait (FIFO) until a transaction ends, or ``timeout``; ``first`` keeps a waiter
        that was woken but lost the race at the head of the queue."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if first:
            self._lock_waiters.appendleft(fut)
        else:
            self._lock_waiters.append(fut)
        # The timeout wakes the waiter as a release would (the caller tries again either
        # way).  Not asyncio.wait_for: from Python 3.12 on it needs a current task, and a
        # handler may wait here before it has one (started from data_received, handlers.py).
        timer = loop.call_later(timeout, _wake, fut)
        try:
            await fut
        finally:
            timer.cancel()

    def admin_command(self, caller: Session, command: str, args: dict[str, Any]) -> Table:
        return run_server_command(self, caller, command, args)

    def admission_error(self, session: Session) -> Error | None:
        if not self.accepting or (self._stopping and self._stopping.is_set()):
            return Error("server is not accepting new connections", Codes.CANNOT_CONNECT)
        limit = self.settings.limits.max_sessions
        if len(self.sessions) >= limit:
            return Error(f"server full: {limit} sessions are connected (limits.max_sessions)",
                         Codes.TOO_MANY_CONNECTIONS, "try again later")
        per = self.settings.access.max_sessions_per_address
        key = address_key(session.peer_ip)
        if sum(1 for s in self.sessions.values() if address_key(s.peer_ip) == key) >= per:
            return Error(f"too many sessions from {session.peer_ip}: the limit is {per} "
                         "(access.max_sessions_per_address)", Codes.TOO_MANY_CONNECTIONS)
        return None

    def on_login(self, s: Session) -> None:
        self.sessions[s.id] = s
        self.audit.event("login_ok", session=s.id, user=s.user, address=s.peer_ip,
                         encrypted=s.tls_version is not None, tls_version=s.tls_version,
                         cipher=s.cipher, client_certificate=s.client_cert_subject,
                         authenticated_by=s.authenticated_by, program=s.program)
        enc = f"encrypted {s.tls_version} {s.cipher}" if s.tls_version else "plain"
        if s.client_cert_subject:
            enc += f", client certificate {s.client_cert_subject}"
        log.info("session %s: user %s logged in from %s (%s), program %r",
                 s.id, s.user, s.peer, enc, s.program)

    def on_session_end(self, s: Session) -> None:
        if self.sessions.pop(s.id, None) is not None:
            log.info("session %s: user %s disconnected (%s)", s.id, s.user, s.end_reason)
            self.audit.event("disconnect", session=s.id, user=s.user, address=s.peer_ip,
                             duration=round(time.time() - s.connected_at, 3),
                             reason=s.end_reason)

    # -- certificates and settings ------------------------------------------
    def reload_certificate(self) -> tuple[bool, str]:
        """Load the rotated files for new connections; keep the old ones if they are bad."""
        if not self.encrypted:
            return False, "encryption is off; no certificate to reload"
        try:
            new = load_tls(self.folder, self.settings)
        except tls.CertificateError as e:
            msg = f"certificate reload failed, keeping the current certificate: {e}"
            log.error("%s", msg)
            return False, msg
        self.tls = new
        if self.web is not None:
            self.web.reload_certificate()
        if self.publisher is not None:
            self._spawn(self.publisher.update(new.info.spki_sha256))
        for w in new.warnings:
            log.warning("%s", w)
        msg = f"certificate reloaded: {new.info.subject}, SHA-256 {new.info.sha256}"
        log.info("%s", msg)
        return True, msg

    async def _renewal_loop(self) -> None:
        while True:
            await asyncio.sleep(12 * 3600)
            try:
                if self.folder.renew_if_due(self.settings):
                    self.reload_certificate()
            except Exception as e:  # noqa: BLE001
                log.error("certificate renewal failed: %s", e)

    def _digest(self) -> str:
        try:
            return hashlib.sha256(self.folder.settings_path.read_bytes()).hexdigest()
        except OSError:
            return ""

    def check_settings_change(self) -> bool:
        """True (and a log line, once) when casemate.toml no longer matches the running settings."""
        if self._digest() == self._settings_digest:
            return self.pending_settings_change
        try:
            changed = load_settings(self.folder.settings_path) != self.file_settings
        except SettingsError as e:
            log.warning("settings file has an error (the running server is unaffected): %s", e)
            changed = True
        if changed and not self.pending_settings_change:
            log.warning("settings changed: restart the server to apply")
        self.pending_settings_change = changed
        self._settings_digest = self._digest()
        return changed

    async def _watch_settings(self) -> None:
        while True:
            await asyncio.sleep(2)
            self.check_settings_change()
            with contextlib.suppress(Exception):  # a storage hiccup: the next request retries
                await self.rights.check()  # ends idle sessions of removed or moved users
            self._rate_samples.append((time.monotonic(), self.statements))

    def statement_rate(self) -> float:
        """Statements per second over the last minute (or since start)."""
        now = time.monotonic()
        samples = [s for s in self._rate_samples if now - s[0] <= 60] or [
            (self._started_mono, 0)]
        t0, n0 = samples[0]
        return (self.statements - n0) / max(now - t0, 1e-3)

    # -- shutdown ---------------------------------------------------------
    def request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def wait_stopped(self) -> None:
        assert self._stopping is not None
        await self._stopping.wait()

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop accepting, tell clients, roll back open transactions, close everything."""
        self.accepting = False
        for lsock in self._listeners:
            lsock.close()
        for t in list(self._tasks):
            t.cancel()
        if self.web is not None:
            await self.web.close()
        if self.publisher is not None:
            with contextlib.suppress(Exception):
                await self.publisher.close()
        sessions = list(self.sessions.values())
        for s in sessions:
            s.notice(Codes.ADMIN_SHUTDOWN, "server is shutting down")
            s.end_reason = "server shutdown"
            s.close()
        tasks = [s.task for s in sessions if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        self.executor.shutdown(wait=True)
        self.pool.close()
        self.backend.close()
        self.audit.close()
        log.info("server stopped")


def default_log_file(folder: DatabaseFolder) -> Path:
    return folder.logs_dir / "server.log"
