"""A lean TLS layer for the server: ``ssl.SSLObject`` over memory BIOs, as an asyncio protocol.

It sits between the TCP transport and the :class:`~casemate.server.session.Session`
protocol, and looks like a transport to the session, which cannot tell TLS
from plain TCP.  Why not asyncio's own TLS transport: it reserves a 256 KiB
read buffer per connection (10,000 idle sessions would need gigabytes),
while this layer holds only what is in flight; and it encrypts each write
as it comes, while the session here hands over a whole reply at once, so a
reply is usually one TLS record.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any, cast

from ..tls import record_layer

__all__ = ["TLSServerProtocol"]

log = logging.getLogger("casemate.server")
# Decrypted bytes taken per SSLObject.read call: one TLS record is at most 16 KiB.
READ_CHUNK = 64 * 1024


class _Scratch(threading.local):
    """Where SSLObject.read decrypts into, shared by the connections of a thread (the
    session copies what it is given before returning), instead of a new 64 KiB object per
    read."""

    def __init__(self) -> None:
        self.buf = bytearray(READ_CHUNK)
        self.view = memoryview(self.buf)


_scratch = _Scratch()


class _PassThrough(asyncio.Protocol, asyncio.Transport):
    """The parts of both faces that only pass a call on: flow control between the TCP
    transport (``_t``) below and the session (``_app``) above, and the transport
    interface the session may ask for without TLS having a say."""

    _t: asyncio.Transport | None
    _app: asyncio.Protocol | None

    def pause_writing(self) -> None:
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._app.resume_writing()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        if self._t is not None:
            self._t.pause_reading()

    def resume_reading(self) -> None:
        if self._t is not None:
            self._t.resume_reading()

    def is_reading(self) -> bool:
        return bool(self._t and self._t.is_reading())

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._t is not None:
            self._t.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._t.get_write_buffer_size() if self._t else 0

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._app  # type: ignore[return-value]


class TLSServerProtocol(_PassThrough):
    """Server side of TLS on one accepted connection; a transport for the app protocol."""

    def __init__(self, context: ssl.SSLContext, app_factory: Callable[[], asyncio.Protocol],
                 deadline: float) -> None:
        super().__init__()
        self._ctx = context
        self._app_factory = app_factory
        self._deadline = deadline
        self._app: asyncio.Protocol | None = None
        self._t: asyncio.Transport | None = None
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj: ssl.SSLObject | None = None
        self._rec: Any = None  # its record layer: read, write, pending (tls.record_layer)
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None

    # -- below: the TCP transport ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop transports are not subclasses
        self._t = transport
        self._obj = self._ctx.wrap_bio(self._in, self._out, server_side=True)
        self._rec = record_layer(self._obj)
        self._timer = asyncio.get_running_loop().call_at(self._deadline, self._too_slow)

    def _too_slow(self) -> None:
        if self._app is None:
            log.info("TLS handshake with %s not completed in time", self._peer())
            self.abort()

    def _peer(self) -> str:
        peer = self._t.get_extra_info("peername") if self._t else None
        return str(peer[0]) if peer else "?"

    def data_received(self, data: bytes) -> None:
        self._in.write(data)
        if self._app is None:
            self._handshake()
        else:
            self._decrypt()

    def _handshake(self) -> None:
        assert self._obj is not None
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError) as e:
            self._flush()  # the alert, if any, tells the client why
            log.info("TLS handshake with %s failed: %s", self._peer(), e)
            self._close_transport()
            return
        if self._timer is not None:
            self._timer.cancel()
        self._flush()
        self._app = self._app_factory()
        self._app.connection_made(self)
        self._decrypt()

    def _decrypt(self) -> None:
        assert self._obj is not None and self._app is not None
        scratch, rec = _scratch, self._rec
        while not self._closing:
            try:
                n: int = rec.read(READ_CHUNK, scratch.buf)  # with a buffer: a count (not cast())
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify: the client ended TLS cleanly
                self._app.eof_received()
                self.close()
                break
            except ssl.SSLError as e:
                log.info("TLS error from %s: %s", self._peer(), e)
                self.abort()
                break
            if not n:
                break
            self._app.data_received(scratch.view[:n])  # type: ignore[arg-type]  # copied at once
            if not self._in.pending and not rec.pending():
                break  # all taken: spare the read that would only raise SSLWantReadError
        self._flush()  # post-handshake messages (session tickets, key updates)

    def _flush(self) -> None:
        if self._out.pending and self._t is not None and not self._t.is_closing():
            self._t.write(self._out.read())

    def eof_received(self) -> bool | None:
        if self._app is not None:
            self._app.eof_received()
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._closing = True
        if self._app is not None:
            self._app.connection_lost(exc)

    # -- above: the transport the session sees -----------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._obj is None:
            return
        rec = self._rec
        n = rec.write(data)
        if n < len(data):  # SSLObject.write may take less than all on some builds
            view = memoryview(data)[n:]
            while view:
                view = view[rec.write(view):]
        self._flush()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._obj is not None and self._app is not None:
            try:
                self._obj.unwrap()  # queue close_notify
            except (ssl.SSLError, OSError):
                pass
        self._flush()
        self._close_transport()

    def _close_transport(self) -> None:
        self._closing = True
        if self._t is not None:
            self._t.close()

    def abort(self) -> None:
        self._closing = True
        if self._t is not None:
            self._t.abort()

    def is_closing(self) -> bool:
        return self._closing or self._t is None or self._t.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._obj
        if name == "sslcontext":
            return self._ctx
        return self._t.get_extra_info(name, default) if self._t else default
