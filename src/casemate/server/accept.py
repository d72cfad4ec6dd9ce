"""From TCP accept to a running :class:`Session`: the IP rules, the cap on connections that
have not logged in, TLS or the refusals.

Accepting a connection: TCP accept -> peek at the first byte (never consuming
it) -> in encrypted mode a TLS ClientHello (0x16) goes to the TLS handshake and
anything else gets a plaintext "encryption required" refusal; in plain mode a
ClientHello gets a TLS ``handshake_failure`` alert.  Then the :class:`Session`
protocol runs on the (TLS) transport: the protocol never knows which.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from ..errors import Codes
from ..keepalive import enable_keepalive
from ..protocol import Msg, encode_frame
from .admission import Ticket
from .session import Session
from .tlsproto import TLSServerProtocol

if TYPE_CHECKING:
    from .app import Server

__all__ = ["Acceptor"]

log = logging.getLogger("casemate.server")
TLS_RECORD_HANDSHAKE = 0x16
# A fatal TLS alert (handshake_failure) in a TLS 1.0 record: what a TLS client
# that reaches a plain server gets, so it fails at once with a TLS error.
TLS_ALERT_HANDSHAKE_FAILURE = bytes([0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28])


_DENIED_FRAME = encode_frame(Msg.ERROR, {
    "code": Codes.INVALID_AUTHORIZATION,
    "message": "connections from this address are refused by the server's access rules"})


# How long a denied connection on an encrypted server may take to send its TLS ClientHello
# (a TLS client sends it at once); past that it gets the refusal in plaintext.
DENY_WAIT_SECONDS = 2.0


class _Refusal(asyncio.Protocol):
    """Inside TLS, for a denied address: answer the client's first message (its HELLO) with
    the refusal and close; nothing of the message is parsed."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.t: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)
        asyncio.get_running_loop().call_at(self.deadline, transport.close)

    def data_received(self, data: bytes) -> None:
        if self.t is not None and not self.t.is_closing():
            self.t.write(_DENIED_FRAME)
            self.t.close()


class Acceptor:
    """Takes the connections of the server's listening sockets to their Session, or refuses
    them; ``spawn`` runs a task that the server cancels when it shuts down."""

    def __init__(self, server: Server, spawn: Callable[[Coroutine[Any, Any, None]], None]
                 ) -> None:
        self.server = server
        self._spawn = spawn

    async def accept_loop(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(lsock)
            except OSError as e:
                if lsock.fileno() < 0:
                    return
                log.warning("accept failed: %s", e)
                await asyncio.sleep(0.1)
                continue
            self._spawn(self._admit(sock, addr))

    async def _admit(self, sock: socket.socket, addr: tuple[str, ...]) -> None:
        server = self.server
        rule = server.settings.access.check_address(addr[0])
        # Denied connections count too while they are refused (inside TLS, that takes a
        # handshake): a flood of them is held to the same caps.
        ticket = server.pending.admit(addr[0])
        if rule is not None and rule.action == "deny":
            server.audit.event("connection_refused", address=addr[0], rule=rule.text,
                               channel="database")
            if isinstance(ticket, str):
                with contextlib.suppress(OSError):
                    sock.send(_DENIED_FRAME)
                sock.close()
                return
            taken = False
            try:
                taken = await self._deny(sock, ticket)
            finally:
                if not taken:
                    ticket.release()
            return
        if isinstance(ticket, str):  # too many connections that have not logged in
            server.audit.event("connection_refused", address=addr[0], reason=ticket,
                               channel="database")
            with contextlib.suppress(OSError):
                sock.send(encode_frame(Msg.ERROR, {"code": Codes.TOO_MANY_CONNECTIONS,
                                                   "message": ticket}))
            sock.close()
            return
        server.audit.event("connection_accepted", address=addr[0],
                           rule=rule.text if rule else None)
        handed_over = False
        try:
            handed_over = await self._start_session(sock, addr, ticket)
        finally:
            if not handed_over:  # the session (or its TLS layer) gives it back otherwise
                ticket.release()

    async def _start_session(self, sock: socket.socket, addr: tuple[str, ...],
                             ticket: Ticket) -> bool:
        """Peek, refuse a wrong mode, or run a Session on the socket; True once it runs."""
        server = self.server
        loop = asyncio.get_running_loop()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        enable_keepalive(sock, server.settings.network.keepalive_seconds)  # vanished peers end
        timeout = server.settings.limits.login_timeout_seconds
        deadline = loop.time() + timeout  # one deadline from accept to logged in
        try:
            first = await asyncio.wait_for(_peek(sock), timeout)
        except (TimeoutError, OSError):
            sock.close()
            return False
        if not first:
            sock.close()
            return False
        is_tls = first[0] == TLS_RECORD_HANDSHAKE
        if server.encrypted and not is_tls:
            log.info("refused plaintext connection from %s: encryption required", addr[0])
            await _refuse(sock, encode_frame(Msg.ERROR, {
                "code": Codes.ENCRYPTION_REQUIRED,
                "message": "this server requires encrypted connections (TLS)",
                "hint": "use a Casemate client that supports encryption"}))
            return False
        if not server.encrypted and is_tls:
            log.info("refused TLS connection from %s: this server is not encrypted", addr[0])
            await _refuse(sock, TLS_ALERT_HANDSHAKE_FAILURE)
            return False
        state = server.tls
        if state is None:
            factory: Any = lambda: Session(server, None, deadline, ticket)  # noqa: E731
        else:
            def factory() -> TLSServerProtocol:
                return _AdmittedTLS(state.context, lambda: Session(
                    server, state.cb_data, deadline, ticket), deadline, ticket)
        try:
            await loop.connect_accepted_socket(factory, sock)
        except (OSError, ConnectionError) as e:
            log.info("connection from %s failed: %s", addr[0], e)
            sock.close()
            return False
        return True

    async def _deny(self, sock: socket.socket, ticket: Ticket) -> bool:
        """Refuse a denied address, reading nothing of the protocol.  On an encrypted server a
        TLS client gets the refusal inside TLS, after the handshake proved the server's key:
        a client that pinned that key can tell this refusal from a downgrade (an answer in
        plaintext could come from anyone).  Anything else gets it in plaintext at once.
        True when the TLS refusal took ``ticket`` (it gives it back when it closes)."""
        server = self.server
        state = server.tls
        if state is not None:
            with contextlib.suppress(TimeoutError, OSError):
                first = await asyncio.wait_for(_peek(sock), DENY_WAIT_SECONDS)
                if first[:1] == bytes([TLS_RECORD_HANDSHAKE]):
                    deadline = (asyncio.get_running_loop().time()
                                + server.settings.limits.login_timeout_seconds)
                    await asyncio.get_running_loop().connect_accepted_socket(
                        lambda: _AdmittedTLS(state.context, lambda: _Refusal(deadline),
                                             deadline, ticket), sock)
                    return True
            await _refuse(sock, _DENIED_FRAME)  # drains what was sent: no reset, frame read
            return False
        with contextlib.suppress(OSError):
            sock.send(_DENIED_FRAME)
        sock.close()
        return False


class _AdmittedTLS(TLSServerProtocol):
    """TLS that gives the connection's pending-login ticket back when it closes (a failed
    handshake never reaches a Session)."""

    def __init__(self, context: ssl.SSLContext, app_factory: Any, deadline: float,
                 ticket: Ticket) -> None:
        super().__init__(context, app_factory, deadline)
        self._ticket = ticket

    def connection_lost(self, exc: Exception | None) -> None:
        self._ticket.release()
        super().connection_lost(exc)


async def _peek(sock: socket.socket) -> bytes:
    """Wait until ``sock`` is readable and return its first byte without consuming it."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    def ready() -> None:
        if not fut.done():
            fut.set_result(None)
    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)
    return sock.recv(1, socket.MSG_PEEK)


async def _refuse(sock: socket.socket, data: bytes) -> None:
    """Send a refusal, then drain what the client sent (briefly) so that closing
    does not reset the connection and destroy the refusal before it is read."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError, TimeoutError):
        await loop.sock_sendall(sock, data)
        sock.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(2):
            while await loop.sock_recv(sock, 4096):
                pass
    sock.close()

