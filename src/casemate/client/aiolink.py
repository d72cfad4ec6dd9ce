"""The asyncio client's transport: connect, log in, send requests, read their replies.

:class:`AsyncLink` is what :class:`casemate.aio.AsyncConnection` stands on: the
stream to the server (TCP or TLS, with the fallback and trust rules of
:class:`~.connecting.ConnectPlan`, and the TLS session resumed from the blocking
client's cache), the login (:func:`~.login.login_flow` fed from the stream), and
pipelined requests: several tasks may send, and whoever holds the read lock
dispatches replies in order to the requests awaiting them.  A lost connection
fails every request with :meth:`~.core.ClientCore.lost_error`'s verdict.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, cast

from ..errors import Error, InterfaceError, OperationalError
from ..keepalive import enable_keepalive
from ..protocol import NEED_DATA, Message, Msg
from .blocking import _context, keep_session
from .connecting import ConnectPlan, NotTLS, accept_server, tcp_error, verify_error
from .core import TLS, ClientCore, Request, SimpleRequest
from .login import LoginResult, login_flow
from .params import ConnectParams, Security

__all__ = ["AsyncLink"]

READ_SIZE = 256 * 1024


class _Resuming:
    """A TLS context that resumes ``session``: asyncio's streams take a context but no
    session, and call only ``wrap_bio`` on it (as the blocking client resumes)."""

    def __init__(self, ctx: ssl.SSLContext, session: ssl.SSLSession) -> None:
        self.ctx = ctx
        self.session = session

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                 server_side: bool = False, server_hostname: str | None = None) -> ssl.SSLObject:
        return self.ctx.wrap_bio(incoming, outgoing, server_side, server_hostname,
                                 session=self.session)


class AsyncLink:
    """The connection to the server under an :class:`~casemate.aio.AsyncConnection`:
    its stream, protocol core and login; requests go out and replies come in here."""

    def __init__(self, params: ConnectParams) -> None:
        self.params = params
        self.on_notice: Callable[[str, str], None] | None = None
        self.security = Security("plain")
        self.login = LoginResult({})
        self._core = ClientCore.new()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_lock = asyncio.Lock()
        self._broken: Error | None = None
        self._tls_key: tuple[Any, ...] = ()  # its TLS context's, where its session is kept

    # -- connecting -----------------------------------------------------------
    async def _tcp(self, ctx: ssl.SSLContext | None) -> tuple[asyncio.StreamReader,
                                                                 asyncio.StreamWriter]:
        p = self.params
        try:
            async with asyncio.timeout(p.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    p.host, p.port, ssl=ctx, server_hostname=p.host if ctx else None)
        except ssl.SSLCertVerificationError as e:
            raise verify_error(p, e) from e
        except ssl.SSLError as e:
            raise NotTLS(e.reason or str(e)) from e
        except (ConnectionResetError, asyncio.IncompleteReadError) as e:
            if ctx is not None:
                raise NotTLS(str(e)) from e
            raise tcp_error(p, e) from e
        except OSError as e:  # TimeoutError included
            raise tcp_error(p, e) from e
        enable_keepalive(writer.get_extra_info("socket"), p.keepalive, user_timeout=True)
        return reader, writer

    async def _attempt_tls(self, plan: ConnectPlan) -> bytes:
        self._tls_key, ctx, session = _context(self.params, plan.pin)
        resuming = cast(ssl.SSLContext, _Resuming(ctx, session)) if session else ctx
        self._reader, self._writer = await self._tcp(resuming)
        try:
            self.security, cb = accept_server(self.params, plan,
                                              self._writer.get_extra_info("ssl_object"))
        except Error:
            self._close_transport()
            raise
        return cb

    async def _open(self) -> None:
        p = self.params
        plan = ConnectPlan(p)
        for mode in plan:
            cb: bytes | None = None
            if mode == TLS:
                try:
                    cb = await self._attempt_tls(plan)
                except NotTLS as e:
                    plan.not_tls(e)
                    continue
            else:
                self._reader, self._writer = await self._tcp(None)
                self.security = plan.plain()
            self._core = ClientCore.new()
            try:
                async with asyncio.timeout(p.connect_timeout):
                    self.login = await self._login(cb)
            except (Error, TimeoutError) as e:
                self._close_transport()
                if (err := plan.failed(e, self.security)) is None:
                    continue
                if err is e:
                    raise
                raise err from e
            except BaseException:
                self._close_transport()
                raise
            plan.succeeded(self.security)
            self._core.on_notice = self._notice
            if cb is not None and self._writer is not None:  # tickets are in: next connect resumes
                keep_session(self._tls_key, self._writer.get_extra_info("ssl_object"))
            return
        raise plan.exhausted()

    async def _login(self, cb: bytes | None) -> LoginResult:
        gen = login_flow(self._core.proto, self.params, cb)
        try:
            out = next(gen)
            while True:
                if out is None:
                    out = gen.send(await self._next_message())
                else:
                    await self._send_bytes(out)
                    out = gen.send(None)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def _notice(self, code: str, text: str) -> None:
        if self.on_notice is not None:
            self.on_notice(code, text)

    # -- I/O ----------------------------------------------------------------------
    async def _send_bytes(self, data: bytes) -> None:
        if self._broken:
            raise self._broken
        assert self._writer is not None
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (OSError, ssl.SSLError) as e:
            raise self._lost(str(e)) from e

    async def _next_message(self) -> Message:
        if self._broken:
            raise self._broken
        proto = self._core.proto
        assert self._reader is not None
        while (ev := proto.next_event()) is NEED_DATA:
            try:
                data = await self._reader.read(READ_SIZE)
            except (OSError, ssl.SSLError) as e:
                raise self._lost(str(e)) from e
            if not data:
                raise self._lost("the server closed the connection")
            proto.receive_data(data)
        assert isinstance(ev, Message)
        return ev

    def _lost(self, why: str) -> OperationalError:
        self._broken = self._core.lost_error(why)
        self._close_transport()
        return self._broken

    def _close_transport(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def _request(self, req: Request, msg: Msg, body: Any) -> None:
        if self._writer is None and self._broken is None:
            raise InterfaceError("connection is closed")
        if not self._core.pending and self._peer_closed():
            await self._closed_while_idle()
        await self._send_bytes(self._core.request(req, msg, body))

    def _peer_closed(self) -> bool:
        """The server's end of file has arrived (StreamReader keeps it in ``_eof``: its
        public ``at_eof()`` stays False while a notice sent before it is unread), or the
        transport is closing (TLS)."""
        if self._writer is None or self._reader is None:
            return False
        return bool(getattr(self._reader, "_eof", False)) or self._writer.transport.is_closing()

    async def _closed_while_idle(self) -> None:
        """The server closed the connection while nothing was in flight: say so before
        sending (a transaction then open is known to be rolled back, and the request was
        never sent), after taking in what the server said first (a shutdown notice)."""
        async with self._read_lock:
            while True:  # _next_message raises the lost-connection error at end of file
                self._core.dispatch(await self._next_message())

    async def _wait(self, req: Request) -> None:
        while not req.done:
            async with self._read_lock:
                if req.done:
                    break
                self._core.dispatch(await self._next_message())
        if req.error is not None:
            raise req.error

    async def _simple(self, msg: Msg, body: Any = None) -> SimpleRequest:
        req = SimpleRequest()
        await self._request(req, msg, body)
        await self._wait(req)
        return req
