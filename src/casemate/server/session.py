"""One client session: protocol events in, storage calls in worker threads, replies out.

A :class:`Session` is the asyncio protocol of one accepted connection (plain
TCP or TLS: it cannot tell and does not care, apart from reporting it).  Its
task first runs the login (handshake + SCRAM) under a deadline, then serves
requests strictly in order, which is what makes pipelining safe.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import ssl
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ..errors import Codes, Error, ProtocolError
from ..protocol import NEED_DATA, Message, Msg, ProtocolConnection, RawFrame, Role
from ..protocol.codec import Decoding
from ..protocol.messages import ErrorBody, Notice
from ..storage import StorageConnection, StorageCursor
from ..storage.access import Policy
from .audit import clean, format_address
from .handlers import Resumed, handle, serve_now
from .lease import Lease
from .login import Login
from .results import (
    Closed,
    storage_error,
)
from .runner import Runner

if TYPE_CHECKING:
    from .admission import Ticket
    from .host import SessionHost

__all__ = ["Session", "storage_error"]

log = logging.getLogger("casemate.server")
T = TypeVar("T")

# Largest frame before login (HELLO and the SCRAM messages take a few hundred bytes):
# nobody unauthenticated makes the server buffer megabytes.  PostgreSQL caps its
# startup packet at 10 kB.  Raised to limits.max_message_bytes once logged in.
PRELOGIN_MAX_FRAME = 16 * 1024
# Pause reading when this many requests wait, or when the bytes received while requests
# wait reach MAX_INBOX_BYTES: a pipelining client cannot make us queue without limit.
# Bytes count as well as requests: each request is bounded by the frame limit, but a
# decoded request can take many times its size in memory (msgpack's one-byte empty map
# is a 64-byte dict), so 64 of the largest would be tens of gigabytes.
MAX_INBOX = 64
MAX_INBOX_BYTES = 1024 * 1024
# A message body longer than DECODE_AT_ONCE is decoded DECODE_SLICE bytes per turn of
# the event loop (codec.Decoding), the session reading nothing more meanwhile: one
# slice of small nested values takes milliseconds, where a whole 16 MiB message held
# the loop, and every other session, for 3-5 s.
DECODE_AT_ONCE = 256 * 1024
DECODE_SLICE = 64 * 1024

_ids = itertools.count(1)
_RDN_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
              "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST"}


class Session(asyncio.Protocol):
    """Protocol + task for one connection; the server keeps it in its registry."""

    def __init__(self, server: SessionHost, cb_data: bytes | None, deadline: float,
                 ticket: Ticket | None = None) -> None:
        self.server = server
        self.ticket = ticket  # our place among the connections not logged in (admission.py)
        self.deadline = deadline  # loop time by which TLS, handshake and login must be done
        self.id = next(_ids)
        self.cb_data = cb_data
        # Incoming frames are bounded by the setting; outgoing ones by what clients accept.
        self.proto = ProtocolConnection(Role.SERVER, PRELOGIN_MAX_FRAME,
                                        max_send=256 * 1024 * 1024)
        self.inbox: collections.deque[Message | Resumed] = collections.deque()
        self.wakeup = asyncio.Event()
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self.closed = False
        self.paused = False
        self.inbox_bytes = 0  # received while requests waited in the inbox
        self._decoding: tuple[Msg, Decoding] | None = None  # a large message, a slice a turn
        self.user = ""
        self.group = ""
        self.peer = ""
        self.peer_ip = ""
        self.end_reason = "client disconnected"
        self.program = ""
        self.client_host = ""
        self.tls_version: str | None = None
        self.cipher: str | None = None
        self.client_cert_subject: str | None = None
        self.client_cert_der: bytes | None = None
        self.authenticated_by = ""  # "password", "certificate CN=..." (casemate sessions)
        self.connected_at = time.time()
        self.last_active = time.monotonic()
        self.statements = 0
        self.storage: StorageConnection | None = None
        self.policy = Policy("readonly")  # replaced by the user's at each storage acquisition
        self.rights_version: Hashable | None = None  # user store version checked (rights.py)
        self.portals: dict[int, StorageCursor] = {}
        self.task: asyncio.Task[None] | None = None
        # The task waits for a request with nothing queued: a request that arrives now may
        # be served at once, in data_received (see handlers.serve_now).
        self.waiting = False
        self.result_frames = False  # the client takes RESULT frames (HELLO "features")
        self._holding = False  # in data_received: replies are written once, at its end
        # Requests are numbered from 1 in the order received, as the client numbers them:
        # a CANCEL names the one it means, so it never stops a later one.
        self.seq = 0  # the request being served (or last served)
        # The open transaction ran work in a thread (its writes all do): its COMMIT may
        # write many pages and fsync, so it runs in a thread too, however short the last.
        self.txn_wrote = False
        self.statement_timeout = server.settings.limits.statement_timeout_seconds
        self.runner = Runner(self)  # where each storage call runs, and what stops it
        self.lease = Lease(self)  # the storage connection, from the pool and back

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop transports are not subclasses
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = format_address(peer[0], peer[1]) if peer else "?"
        self.peer_ip = peer[0] if peer else "?"
        limit = self.server.settings.limits.max_result_buffer_bytes
        transport.set_write_buffer_limits(high=limit)
        sslobj: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            self.tls_version = sslobj.version()
            c = sslobj.cipher()
            self.cipher = c[0] if c else None
            cert = sslobj.getpeercert()
            self.client_cert_der = sslobj.getpeercert(binary_form=True) or None
            if cert:
                subject: Any = cert.get("subject", ())
                self.client_cert_subject = clean(",".join(
                    f"{_RDN_NAMES.get(k, k)}={v}" for rdn in subject for k, v in rdn), 1000)
        self.task = asyncio.get_running_loop().create_task(self.run())

    def data_received(self, data: bytes) -> None:
        self.server.bytes_in += len(data)
        self.proto.receive_data(data)
        if self._decoding is None:
            self._take_messages(None, len(data))
        elif self.transport is not None:
            # What comes while a large message waits or decodes waits behind it, and no
            # more comes meanwhile: whatever resumed reading (helper-38 found the inbox's
            # own resume did, and a client streamed gigabytes into the buffer).
            self.transport.pause_reading()

    def _take_messages(self, first: Message | None, received: int) -> None:
        """Serve or queue ``first`` and every complete message buffered after it, up to a
        large one, whose decoding then starts (:meth:`_decode_slice`)."""
        self._holding = True
        try:
            ev: Message | RawFrame | object = first
            if ev is None:
                ev = self.proto.next_event(DECODE_AT_ONCE)
            while ev is not NEED_DATA:
                if type(ev) is RawFrame:
                    self._decoding = ev.type, Decoding(ev.body, wrapped=True)
                    if self.transport is not None:
                        self.transport.pause_reading()  # until it is decoded
                    # One large message decodes at a time, server-wide: sessions decoding
                    # side by side would each hold a partly built value, up to ~70 times
                    # its message's size, at once.
                    turns = self.server.large_decodes
                    turns.append(self)
                    if len(turns) == 1:
                        asyncio.get_running_loop().call_soon(self._decode_slice)
                    break
                assert isinstance(ev, Message)
                if ev.type is Msg.CANCEL:  # out of band: never queued behind the request
                    self.runner.on_cancel(ev.body)
                elif (self.inbox or not self.waiting or not self.can_write.is_set()
                        or not serve_now(self, ev)):
                    self.inbox.append(ev)
                ev = self.proto.next_event(DECODE_AT_ONCE)
        except ProtocolError as e:
            self.fatal(e)
            return
        except Exception:  # a bug must not take the server down with it
            log.exception("session %s: internal error", self.id)
            self.fatal(Error("internal server error", Codes.INTERNAL))
            return
        finally:
            self._holding = False
        if self._out:
            self._flush()
        if self.inbox:
            self.inbox_bytes += received
            if (len(self.inbox) >= MAX_INBOX or self.inbox_bytes >= MAX_INBOX_BYTES) \
                    and not self.paused:
                self.paused = True
                self.transport.pause_reading()  # type: ignore[union-attr]
            self.wakeup.set()

    def _decode_slice(self) -> None:
        """One turn of the event loop's worth of the large message being decoded; once it
        is whole, it is served or queued as if it had just arrived, then what came after,
        and the next session waiting to decode one takes its turn."""
        if self._decoding is None or self.closed:
            self._decoding = None
            self._next_decode()
            return
        msg, decoding = self._decoding
        try:
            done, body = decoding.step(DECODE_SLICE)
        except ValueError as e:  # the words of ProtocolConnection.next_event
            self._decoding = None
            self._next_decode()
            self.fatal(ProtocolError(f"malformed {msg.name} message: {e}",
                                     Codes.PROTOCOL_VIOLATION))
            return
        except Exception:  # a bug must not take the server down with it
            self._decoding = None
            self._next_decode()
            log.exception("session %s: internal error", self.id)
            self.fatal(Error("internal server error", Codes.INTERNAL))
            return
        if not done:
            asyncio.get_running_loop().call_soon(self._decode_slice)
            return
        self._decoding = None
        self._next_decode()
        if self.transport is not None and not self.paused and not self.closed:
            self.transport.resume_reading()
        self._take_messages(Message(msg, body), 0)

    def _next_decode(self) -> None:
        """This session's turn at decoding is over: the next waiting session's begins."""
        turns = self.server.large_decodes
        if turns and turns[0] is self:
            turns.popleft()
            if turns:
                asyncio.get_running_loop().call_soon(turns[0]._decode_slice)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ticket is not None:
            self.ticket.release()
        self.runner.stop_running("the client disconnected")
        self.closed = True
        self.wakeup.set()
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    # -- helpers ----------------------------------------------------------
    def write(self, data: bytes) -> None:
        # Frames of one reply are gathered and written once, at the end of this loop
        # iteration: one send (and, under TLS, about one record) per reply, not per frame.
        if self.closed or self.transport is None:
            return
        if not self._out and not self._holding:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(data)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and self.transport is not None and not self.transport.is_closing():
            data = out[0] if len(out) == 1 else b"".join(out)
            self.server.bytes_out += len(data)
            self.transport.write(data)

    def send(self, msg: Msg, body: Any = None) -> None:
        self.write(self.proto.send(msg, body))

    def send_error(self, err: Error) -> None:
        body = ErrorBody(err.code or Codes.INTERNAL, err.message, err.hint)
        self.write(self.proto.send(Msg.ERROR, body.wire()))

    def notice(self, code: str, message: str) -> None:
        self.write(self.proto.send(Msg.NOTICE, Notice(code, message).wire()))

    def fatal(self, e: Error) -> None:
        log.warning("session %s from %s: %s; closing", self.id, self.peer, e.message)
        self.end_reason = e.message
        try:
            self.send_error(e)
        except ProtocolError:
            pass
        self.close()

    def close(self) -> None:
        self.runner.stop_running(self.end_reason)  # a drop, a shutdown: the work stops at once
        if self.transport is not None and not self.closed:
            self._flush()
            self.transport.close()
        self.closed = True
        self.wakeup.set()

    async def next_login_message(self) -> Message:
        m = await self.next_message()
        assert isinstance(m, Message)  # nothing starts in data_received before the login
        return m

    async def next_message(self) -> Message | Resumed:
        if self.inbox and isinstance(self.inbox[0], Resumed):
            # A request started in data_received is finished by this task even when the
            # session has ended meanwhile: its storage call may still run in a worker
            # thread (stopped by close()), and the connection is given back only after it.
            self.waiting = False
            return self._take()
        if self.closed:
            raise Closed  # messages still queued from a closed peer are not served
        while not self.inbox:
            if self.closed:
                raise Closed
            self.wakeup.clear()
            await self.wakeup.wait()
        # From the moment a request leaves the queue the task is busy with it: a request
        # arriving now must queue behind it, not be served at once in data_received
        # (its reply would overtake this one's).
        self.waiting = False
        return self._take()

    def _take(self) -> Message | Resumed:
        """The next request from the inbox; reading resumes once few enough wait (also
        after a Resumed: reading paused on bytes while only it waited must not stay off)."""
        m = self.inbox.popleft()
        if not self.inbox:
            self.inbox_bytes = 0
        if (self.paused and len(self.inbox) < MAX_INBOX // 2
                and self.inbox_bytes < MAX_INBOX_BYTES and self.transport and not self.closed):
            self.paused = False
            if self._decoding is None:  # (else reading resumes once it is decoded)
                self.transport.resume_reading()
        return m


    # -- main task --------------------------------------------------------
    async def run(self) -> None:
        try:
            try:
                async with asyncio.timeout_at(self.deadline):
                    ok = await self.login()
            except TimeoutError:
                self.fatal(Error("login not completed in time", Codes.PROTOCOL_VIOLATION))
                return
            if not ok:
                return
            self.server.on_login(self)
            self.last_active = time.monotonic()
            while True:
                self.waiting = True
                try:
                    # Idle since the last activity: requests served at once in
                    # data_received move last_active without waking this task.
                    left = self._idle_left()
                    if left is not None and left <= 0:
                        self._idle_end()
                        break
                    # In this task (asyncio.timeout, not wait_for's task of its own):
                    # taking a request from the queue and marking the task busy happen
                    # in one step.
                    async with asyncio.timeout(left):
                        m = await self.next_message()
                except TimeoutError:
                    continue  # look at the limits again
                finally:
                    self.waiting = False
                self.last_active = time.monotonic()
                if isinstance(m, Resumed):  # started in data_received (serve_now)
                    await m
                elif m.type is Msg.TERMINATE:
                    self.end_reason = "client closed the session"
                    break
                else:
                    await handle(self, m)
                await self._wait_writable()
                self.last_active = time.monotonic()
        except Closed:
            pass
        except ProtocolError as e:
            self.fatal(e)
        except Exception:  # a bug must not take the server down with it
            log.exception("session %s: internal error", self.id)
            self.fatal(Error("internal server error", Codes.INTERNAL))
        finally:
            await self.lease.release_all()
            self.close()
            self.server.on_session_end(self)

    def _idle_limit(self) -> tuple[float, bool]:
        """The idle time allowed now (0: no limit), and whether it is the limit of a session
        in a transaction (idle there, it keeps locks that others wait for)."""
        lim = self.server.settings.limits
        in_txn = lim.idle_in_transaction_timeout_seconds
        if in_txn and self.storage is not None and self.storage.holds_shared and (
                not lim.idle_timeout_seconds or in_txn <= lim.idle_timeout_seconds):
            return in_txn, True
        return lim.idle_timeout_seconds, False

    def _idle_left(self) -> float | None:
        """Seconds until the idle limit runs out (<= 0: it has); None: wait forever."""
        limit, _ = self._idle_limit()
        # A request served in data_received may open a transaction while the task waits:
        # it looks again within the in-transaction limit.
        recheck = self.server.settings.limits.idle_in_transaction_timeout_seconds or None
        if not limit:
            return recheck
        left = limit - (time.monotonic() - self.last_active)
        return left if recheck is None or left <= 0 else min(left, recheck)

    def _idle_end(self) -> None:
        limit, in_txn = self._idle_limit()
        if not in_txn:
            self._idle_timeout(limit)
            return
        log.warning("session %s from %s: idle in a transaction for %g s; rolling it back",
                    self.id, self.peer, limit)
        self.notice(Codes.IDLE_IN_TRANSACTION_TIMEOUT,
                    f"session closed after {limit:g} s idle in a transaction or with an "
                    "unread cursor (limits.idle_in_transaction_timeout_seconds); the "
                    "transaction was rolled back")
        self.end_reason = "idle in transaction timeout"
        self.close()

    async def _wait_writable(self) -> None:
        """Wait until the client takes our replies; in a transaction, at most the
        in-transaction idle limit: a client that stops reading must not keep its locks."""
        if self.can_write.is_set():
            return
        limit, in_txn = self._idle_limit()
        try:
            await asyncio.wait_for(self.can_write.wait(), limit if in_txn else None)
        except TimeoutError:
            log.warning("session %s from %s: read no reply for %g s in a transaction; "
                        "ending it", self.id, self.peer, limit)
            self.end_reason = "client stopped reading inside a transaction"
            if self.transport is not None:
                self.transport.abort()  # the unread replies would keep close() waiting
            raise Closed from None

    def _idle_timeout(self, seconds: float) -> None:
        txn = self.storage is not None and self.storage.in_transaction
        self.notice(Codes.IDLE_TIMEOUT, f"session closed after {seconds:g} s without activity "
                    "(limits.idle_timeout_seconds)" +
                    ("; its open transaction was rolled back" if txn else ""))
        self.end_reason = "idle timeout"
        self.close()

    async def login(self) -> bool:
        return await Login(self).run()

    def set_timeout(self, seconds: float) -> None:
        """This session's statement timeout (0 = none); above the server's setting only for
        admins, so a user cannot opt out of what protects the others."""
        most = self.server.settings.limits.statement_timeout_seconds
        if most and self.group != "admin" and not 0 < seconds <= most:
            raise Error(f"statement_timeout may be at most {most:g} s for group {self.group!r} "
                        "(limits.statement_timeout_seconds)", Codes.INSUFFICIENT_PRIVILEGE,
                        "an administrator can raise limits.statement_timeout_seconds")
        self.statement_timeout = seconds

    def drop(self, reason: str, code: str = Codes.SESSION_DROPPED) -> None:
        """End this session at an administrator's request; its transaction is rolled back."""
        txn = self.storage is not None and self.storage.in_transaction
        self.notice(code, reason + ("; its open transaction was rolled back"
                                                     if txn else ""))
        self.end_reason = reason
        self.close()
