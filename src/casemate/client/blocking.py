"""Blocking I/O for the DB-API client: TCP or TLS socket, connect with fallback, login.

Errors from ``socket`` and ``ssl`` are translated here, once, into
OperationalError/SecurityError that say what happened and what to do.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
from typing import Any

from .. import tls
from ..errors import Codes, Error, OperationalError, SecurityError
from ..keepalive import enable_keepalive
from ..protocol import NEED_DATA, Message, Msg
from .connecting import ConnectPlan, NotTLS, accept_server, tcp_error, verify_error
from .core import TLS, ClientCore, Request
from .login import LoginResult, login_flow
from .params import ConnectParams, Security

__all__ = ["Channel", "open_channel", "keep_session"]

READ_SIZE = 256 * 1024
# One context (and the last TLS session, for resumption, with the key it was made with)
# per server and trust settings.
_tls_cache: dict[tuple[Any, ...], list[Any]] = {}
_cache_lock = threading.Lock()


class _ReadBuffer(threading.local):
    """One receive buffer per thread, reused by every connection of the thread: what is
    received is copied into the protocol's buffer at once.  (``sock.recv(READ_SIZE)``
    would allocate, and on Linux map and unmap, a fresh 256 KiB at every call.)"""

    def __init__(self) -> None:
        self.buf = bytearray(READ_SIZE)
        self.view = memoryview(self.buf)
        self.raw = bytearray(READ_SIZE)  # TLSSocket: encrypted bytes, before decryption
        self.raw_view = memoryview(self.raw)


_rbuf = _ReadBuffer()


class TLSSocket:
    """TLS over a connected TCP socket, driven through ``ssl.SSLObject`` and memory BIOs.

    Why not ``ssl.SSLSocket``: it reads every TLS record with two ``read()`` system
    calls (the 5-byte header, then the body; Python does not expose OpenSSL's
    read-ahead) and goes through several Python layers per call.  Here one
    ``recv_into`` takes whatever has arrived, records included, and the SSL object
    decrypts from memory.  Offers the part of the socket interface the client uses.
    """

    def __init__(self, sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO) -> None:
        self.raw = sock
        self.obj = obj
        self._rec = tls.record_layer(obj)  # read, write, pending without the wrapper's frames
        self._in = incoming
        self._out = outgoing
        # The SSL object is used by the reading thread and by a cancel from another thread:
        # one at a time (OpenSSL's rule), and records go out in the order they were made.
        self._lock = threading.Lock()
        self._ended = False  # close_notify came: the end of the stream, once the rest is read
        self._failed: BaseException | None = None  # met after bytes that were returned first

    @classmethod
    def handshake(cls, sock: socket.socket, ctx: ssl.SSLContext, hostname: str,
                  session: ssl.SSLSession | None) -> TLSSocket:
        """Run the client handshake on ``sock`` (its timeout applies); raises ssl.SSLError
        (ssl.SSLCertVerificationError included), OSError, or ConnectionError at EOF."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing, server_hostname=hostname, session=session)
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                rb = _rbuf
                n = sock.recv_into(rb.raw)
                if not n:
                    raise ConnectionResetError(
                        "the server closed the connection during the TLS handshake") from None
                incoming.write(rb.raw_view[:n])
            except ssl.SSLError:
                if outgoing.pending:  # our alert tells the server why
                    with contextlib.suppress(OSError):
                        sock.sendall(outgoing.read())
                raise
        # What the handshake left to send (the client's Finished: TLS 1.3, or a resumed TLS
        # 1.2 session) goes out with the first message, the login's HELLO (``sendall``
        # sends all that is pending): one write and one wake-up of the server fewer per
        # connect.  The client speaks first after the handshake, so nothing waits for it;
        # a client that refuses the server's key closes without finishing the handshake.
        return cls(sock, obj, incoming, outgoing)

    def sendall(self, data: bytes) -> None:
        with self._lock:
            self._rec.write(data)
            self.raw.sendall(self._out.read())

    def recv_into(self, buf: bytearray) -> int:
        """Decrypted bytes into ``buf``; 0 at the end of the stream."""
        rec = self._rec
        while True:
            if self._failed is not None:
                raise self._failed
            if self._in.pending or rec.pending():
                with self._lock:
                    n = self._decrypt(buf)
                if n >= 0:
                    return n
            if self._ended:
                return 0
            rb = _rbuf
            got = self.raw.recv_into(rb.raw)
            if not got:
                return 0
            self._in.write(rb.raw_view[:got])

    def _decrypt(self, buf: bytearray) -> int:
        """Every complete record received so far, decrypted into ``buf`` (as many as fit:
        a batch of rows spans several 16 KiB records, and each return is a trip through
        the caller's Python); -1 if no record is complete yet, 0 at close_notify.  Bytes
        decrypted before close_notify or a bad record are returned first; the end or the
        error comes with the next call."""
        rec, size, total = self._rec, len(buf), 0
        while total < size:
            try:
                # with a buffer: a count (SSL_read gives one record per call; 0 once
                # close_notify has come); annotated, not cast(): a call per read
                n: int = rec.read(size - total, memoryview(buf)[total:] if total else buf)
            except ssl.SSLWantReadError:
                break  # an incomplete record: what came so far, or read more
            except ssl.SSLZeroReturnError:
                n = 0
            except ssl.SSLError as e:
                if not total:
                    raise
                self._failed = e
                break
            if not n:  # close_notify: the end, after what came before it
                self._ended = True
                return total
            total += n
            if not self._in.pending and not rec.pending():
                break
        if self._out.pending:  # a post-handshake reply (key update)
            self.raw.sendall(self._out.read())
        return total or -1

    def recv(self, n: int) -> bytes:
        buf = bytearray(n)
        k = self.recv_into(buf)
        return bytes(buf[:k])

    def pending(self) -> int:
        return self._rec.pending() or self._in.pending

    @property
    def session(self) -> ssl.SSLSession | None:
        return self.obj.session

    @property
    def session_reused(self) -> bool:
        return self.obj.session_reused

    def fileno(self) -> int:
        return self.raw.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self.raw.settimeout(timeout)

    def setblocking(self, flag: bool) -> None:
        self.raw.setblocking(flag)

    def shutdown(self, how: int) -> None:
        self.raw.shutdown(how)

    def close(self) -> None:
        self.raw.close()


class Channel:
    """A connected, logged-in socket with its protocol core."""

    def __init__(self, sock: socket.socket | TLSSocket, core: ClientCore, security: Security,
                 login: LoginResult, cache_key: tuple[Any, ...] | None) -> None:
        self.sock = sock
        self.core = core
        self.security = security
        self.login = login
        self.cache_key = cache_key
        self.broken: Error | None = None
        self._send_lock = threading.Lock()  # a cancel may write from another thread
        # Asked before every request whether the server wrote meanwhile: a poll object made
        # once costs a third of select() (none on Windows: select there).
        self._poll: Any = None
        if hasattr(select, "poll"):
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN)
        self._tls_sock = sock if isinstance(sock, TLSSocket) else None

    def send(self, data: bytes) -> None:
        if self.broken:
            raise self.broken
        try:
            with self._send_lock:
                self.sock.sendall(data)
        except (OSError, ssl.SSLError) as e:
            raise self._lost(str(e)) from e

    def exchange(self, req: Request, msg: Msg, body: Any) -> bool:
        """Send one request and read until it is answered (raising its error, as
        ``BlockingLink._wait`` does): the link's ``_send`` and ``_wait`` in one call, for a
        channel that is up, idle (no request awaits its reply) and has nothing unread.

        False, with nothing sent, when the channel is not so (broken, a request pending,
        the server wrote while it was idle: a notice, or its end, or it said it is ending
        the session in a notice read with an earlier reply): the caller then takes the
        general path, which reads what came and reconnects or reports (``poll_alive``)."""
        core = self.core
        poll = self._poll
        tls_sock = self._tls_sock
        if (self.broken is not None or core.pending or core.shutdown_notice or poll is None
                or poll.poll(0)
                or (tls_sock is not None and (tls_sock._rec.pending() or tls_sock._in.pending))):
            return False
        data = core.request(req, msg, body)
        sock = self.sock
        try:
            with self._send_lock:
                sock.sendall(data)
        except (OSError, ssl.SSLError) as e:
            raise self._lost(str(e)) from e
        proto = core.proto
        rb = _rbuf
        while not req.done:
            ev = proto.next_event()
            if ev is NEED_DATA:
                try:
                    n = sock.recv_into(rb.buf)
                except (OSError, ssl.SSLError) as e:
                    raise self._lost(str(e)) from e
                if not n:
                    raise self._lost("the server closed the connection")
                proto.receive_data(rb.view[:n])
            else:
                core.dispatch(ev)  # type: ignore[arg-type]
        while (ev := proto.next_event()) is not NEED_DATA:  # a notice that came after it
            core.dispatch(ev)  # type: ignore[arg-type]
        if req.error is not None:
            raise req.error
        return True

    def cancel(self) -> None:
        """Ask the server to stop the request this connection waits for (any thread)."""
        frame = self.core.cancel_frame()
        if frame is not None and not self.broken:
            with contextlib.suppress(Error):
                self.send(frame)

    def read_messages(self) -> None:
        """Block until at least one message has been dispatched, then dispatch all buffered."""
        self.core.dispatch(self.next_message())
        proto = self.core.proto
        while (ev := proto.next_event()) is not NEED_DATA:
            assert isinstance(ev, Message)
            self.core.dispatch(ev)

    def next_message(self) -> Message:
        """Block until the next message arrives and return it (not dispatched)."""
        if self.broken:
            raise self.broken
        proto = self.core.proto
        while True:
            ev = proto.next_event()
            if ev is not NEED_DATA:
                assert isinstance(ev, Message)
                return ev
            rb = _rbuf
            try:
                n = self.sock.recv_into(rb.buf)
            except (OSError, ssl.SSLError) as e:
                raise self._lost(str(e)) from e
            if not n:
                raise self._lost("the server closed the connection")
            proto.receive_data(rb.view[:n])

    def poll_alive(self) -> bool:
        """Without blocking, take in what the server sent while we were idle (a shutdown
        notice, end of file); return False if the connection is gone."""
        if self.broken:
            return False
        if (self._poll is not None and not self._poll.poll(0)
                and not (self._tls_sock is not None and self._tls_sock.pending())):
            if self.core.shutdown_notice:
                self._lost("the server ended the session")
                return False
            return True
        while True:
            try:
                data = self._recv_nowait()
            except (OSError, ssl.SSLError, ValueError) as e:
                self._lost(str(e))
                return False
            if data is None:
                break
            if not data:
                self._lost("the server closed the connection")
                return False
            self.core.proto.receive_data(data)
            while (ev := self.core.proto.next_event()) is not NEED_DATA:
                assert isinstance(ev, Message)
                self.core.dispatch(ev)
        if self.core.shutdown_notice:  # the server said it is going away: do not wait for EOF
            self._lost("the server ended the session")
            return False
        return True

    def _recv_nowait(self) -> bytes | None:
        """Bytes already received, b"" at end of file, None if nothing is waiting."""
        readable, _, _ = select.select([self.sock], [], [], 0)
        if not readable and not (isinstance(self.sock, TLSSocket) and self.sock.pending()):
            return None
        self.sock.setblocking(False)
        try:
            rb = _rbuf
            return bytes(rb.view[:self.sock.recv_into(rb.buf)])
        except (BlockingIOError, ssl.SSLWantReadError):
            return None
        finally:
            if self.sock.fileno() >= 0:
                self.sock.setblocking(True)

    def _lost(self, why: str) -> OperationalError:
        self.broken = self.core.lost_error(why)
        self.close()
        return self.broken

    def save_session(self) -> None:
        """Keep this connection's TLS session for the next connect to resume."""
        if self.cache_key is not None and isinstance(self.sock, TLSSocket):
            keep_session(self.cache_key, self.sock.obj)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def keep_session(key: tuple[Any, ...], sslobj: ssl.SSLObject) -> None:
    """Keep a connection's TLS session for the next connect to resume (either client).
    Not when it was itself resumed: the session kept is still good (it is reused until
    it expires, then a full handshake brings a new one), and reading it costs as much as
    a resumed handshake (Python serialises and parses it again, certificate included)."""
    if sslobj.session_reused:
        return
    session, der = sslobj.session, sslobj.getpeercert(binary_form=True)
    with _cache_lock:
        entry = _tls_cache.get(key)
        if entry is not None and session is not None and der is not None:
            entry[1:] = [session, tls.spki_fingerprint_der(der)]


def _tcp(params: ConnectParams) -> socket.socket:
    try:
        sock = socket.create_connection((params.host, params.port), params.connect_timeout)
    except OSError as e:
        raise tcp_error(params, e) from e
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    enable_keepalive(sock, params.keepalive, user_timeout=True)
    return sock


def _context(params: ConnectParams, pin: str | None
             ) -> tuple[tuple[Any, ...], ssl.SSLContext, Any]:
    """The context for these trust settings, and the session to resume: only one made with
    the pinned key (or checked by tls_ca).  A resumed handshake carries no certificate
    chain, so it could not show a new key's endorsement (continuity.py); and a pin that
    changed since (another login, ``trust forget``) must see a full handshake."""
    key = (params.host, params.port, params.tls_ca, params.tls_cert, params.tls_key)
    with _cache_lock:
        entry = _tls_cache.get(key)
        if entry is None:
            try:
                ctx = tls.client_context(params.tls_ca, params.tls_cert, params.tls_key)
            except (OSError, ssl.SSLError) as e:
                raise SecurityError(f"cannot load the client's TLS files: {e}",
                                    Codes.CANNOT_CONNECT) from e
            entry = _tls_cache[key] = [ctx, None, None]
        ok = params.tls_ca is not None or (pin is not None and entry[2] == pin)
        return key, entry[0], entry[1] if ok else None


def _tls_connect(params: ConnectParams, plan: ConnectPlan
                 ) -> tuple[TLSSocket, Security, bytes, tuple[Any, ...]]:
    key, ctx, session = _context(params, plan.pin)
    sock = _tcp(params)
    try:
        ssock = TLSSocket.handshake(sock, ctx, params.host, session)
    except ssl.SSLCertVerificationError as e:
        sock.close()
        raise verify_error(params, e) from e
    except (ssl.SSLError, ConnectionError, OSError) as e:
        sock.close()
        raise NotTLS(getattr(e, "reason", None) or str(e)) from e
    try:
        security, cb = accept_server(params, plan, ssock.obj)
    except Error:
        ssock.close()
        raise
    return ssock, security, cb, key


def _login(sock: socket.socket | TLSSocket, params: ConnectParams, cb: bytes | None) -> tuple[
        ClientCore, LoginResult]:
    core = ClientCore.new()
    chan = Channel(sock, core, Security("plain"), LoginResult({}), None)
    gen = login_flow(core.proto, params, cb)
    try:
        out = next(gen)
        while True:
            if out is None:
                out = gen.send(chan.next_message())
            else:
                chan.send(out)
                out = gen.send(None)
    except StopIteration as stop:
        return core, stop.value


def open_channel(params: ConnectParams) -> Channel:
    """Connect, choose plain or TLS as the server and the trust rules require, and log in."""
    plan = ConnectPlan(params)
    sock: socket.socket | TLSSocket
    cb: bytes | None
    key: tuple[Any, ...] | None
    for mode in plan:
        if mode == TLS:
            try:
                sock, security, cb, key = _tls_connect(params, plan)
            except NotTLS as e:
                plan.not_tls(e)
                continue
        else:
            sock, cb, key, security = _tcp(params), None, None, plan.plain()
        sock.settimeout(params.connect_timeout)
        try:
            core, login = _login(sock, params, cb)
        except (Error, TimeoutError) as e:
            sock.close()
            if (err := plan.failed(e, security)) is None:
                continue
            if err is e:
                raise
            raise err from e
        sock.settimeout(None)
        plan.succeeded(security)
        chan = Channel(sock, core, security, login, key)
        chan.save_session()  # TLS 1.3 tickets have arrived by now: next connect resumes
        return chan
    raise plan.exhausted()
