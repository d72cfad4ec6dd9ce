"""Client logic shared by the blocking and asyncio clients, with no I/O.

* :func:`plan_attempts` decides, from the parameters and known_servers,
  whether to try TLS, plaintext, or both, and in which order (never plaintext
  for a server once seen encrypted, or with ``encryption="required"``).
* :func:`check_server_key` applies the trust rules right after the TLS
  handshake, before any Casemate byte is sent.
* The login itself is :func:`~.login.login_flow`'s (``login.py``).
* The ``*Request`` classes consume the replies of one request each; replies
  arrive strictly in request order, so a FIFO of them allows pipelining.
* :meth:`ClientCore.lost_error` words a lost connection: "rolled back" only
  when no request that can commit awaited its reply, else the outcome is
  unknown (``08007``), as PostgreSQL's JDBC driver says: a server can commit
  and die before it answers (the verdict on each request is ``risk.py``'s).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from .. import continuity, lan, tls
from ..errors import (
    Codes,
    Error,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    ProtocolError,
    SecurityError,
    error_from_code,
)
from ..protocol import Message, Msg, ProtocolConnection, Role, encode_frame
from ..protocol.messages import (
    Call,
    Complete,
    ErrorBody,
    Fetch,
    Notice,
    Query,
    typed,
)
from .known import KnownServer, KnownServers
from .params import ConnectParams, Security
from .risk import commit_risk, may_write

__all__ = [
    "plan_attempts",
    "check_server_key",
    "raise_error",
    "ClientCore",
    "ExecRequest",
    "SimpleRequest",
]

log = logging.getLogger("casemate.client")
TLS, PLAIN = "tls", "plain"
CLIENT_MAX_FRAME = 256 * 1024 * 1024


def plan_attempts(params: ConnectParams, known: KnownServer | None) -> list[str]:
    """The transports to try, in order."""
    if params.encryption == "required" or params.tls_ca is not None or (
            known is not None and known.mode == "encrypted"):
        return [TLS]
    if known is not None and known.mode == "plain":
        return [PLAIN, TLS]
    return [TLS, PLAIN]


def downgrade_error(params: ConnectParams, known: KnownServer | None, why: str) -> SecurityError:
    """The error for a server that did not do TLS when the client requires it."""
    key = params.server_key
    if known is not None and known.mode == "encrypted":
        return SecurityError(
            f"possible downgrade attack: {key} was encrypted when last seen, but now it did not "
            f"complete a TLS handshake ({why}); the client refuses to continue in plaintext",
            Codes.NOT_ENCRYPTED,
            "an attacker who strips encryption causes this; so can a server switched to "
            "plaintext, or an older server refusing this address in plaintext. Do not drop "
            "the pin on this message alone: only if the server's administrator confirms that "
            f"encryption was switched off, run: {_forget(params)}")
    return SecurityError(
        f"{key} did not complete a TLS handshake ({why}) and this connection requires "
        "encryption", Codes.NOT_ENCRYPTED,
        "switch on encrypt_client_server_connections on the server, or connect without "
        "encryption='required' / tls_ca")


def _forget(params: ConnectParams) -> str:
    return "casemate trust forget " + " ".join(params.trust_keys)


def check_server_key(params: ConnectParams, known: KnownServer | None, der_cert: bytes,
                     tls_version: str | None, cipher: str | None,
                     sslobj: object = None) -> Security:
    """Apply the trust rules to the server's certificate; raises SecurityError on a mismatch.
    ``sslobj`` gives the chain the server sent, where a new key's endorsements travel."""
    security = _check_key(params, known, der_cert, tls_version, cipher, sslobj)
    if note := lan.announcement_mismatch(params.announced_fingerprint, security.fingerprint):
        log.warning("%s: %s", params.server_key, note)
        security = dataclasses.replace(
            security, note=f"{security.note}; {note}" if security.note else note)
    return security


def _check_key(params: ConnectParams, known: KnownServer | None, der_cert: bytes,
               tls_version: str | None, cipher: str | None, sslobj: object) -> Security:
    fp = tls.spki_fingerprint_der(der_cert)
    if params.tls_ca is not None:
        return Security("encrypted-verified", tls_version, cipher, fp, "CA")
    if known is not None and known.fingerprint is not None:
        if known.fingerprint != fp:
            note = _successor(params, known.fingerprint, fp, sslobj)
            return Security("encrypted-verified", tls_version, cipher, fp,
                            "pinned key's endorsed successor", note=note)
        return Security("encrypted-verified", tls_version, cipher, fp, "pinned key")
    if not params.password:
        raise SecurityError(
            f"first contact with {params.server_key}: a certificate-only login gives no "
            "proof of the server's identity, so the client does not log in to an unknown "
            f"key ({fp})", Codes.NOT_ENCRYPTED,
            "pass tls_ca= the server's Resources/cert.pem (or its CA), or log in once with "
            "a password to pin the key")
    return Security("encrypted-unverified", tls_version, cipher, fp, None)


def _successor(params: ConnectParams, pin: str, fp: str, sslobj: object) -> str:
    """The note for a key the pinned key endorsed (continuity.py); SecurityError for any
    other key: the same refusal as a forged certificate, and naming the key to compare."""
    verdict = continuity.follow(pin, fp, continuity.parse(tls.peer_chain(sslobj)))
    if verdict.endorsed:
        until = verdict.path[-1].until
        note = (f"the server's key changed from {pin} to {fp}; the change is signed by the "
                f"pinned key (transition until {until:%Y-%m-%d}), so the pin moves to the new "
                "key after this login")
        log.warning("%s: %s", params.server_key, note)
        return note
    why = ""
    if verdict.expired is not None:
        why = (f" The pinned key did endorse a successor, but that transition ended on "
               f"{verdict.expired.until:%Y-%m-%d}: this client's pin is older than it.")
    raise SecurityError(
        f"the server at {params.server_key} presented a different key than before: "
        f"expected {pin}, got {fp}, not endorsed by the pinned key.{why} This can be a "
        "man-in-the-middle attack; nothing was sent", Codes.NOT_ENCRYPTED,
        f"compare {fp} with the key fingerprint the administrator's 'casemate cert DIR show' "
        f"prints; if they match, run: {_forget(params)}")


def raise_error(m: Message) -> None:
    """Raise the coded error an ERROR reply carries (a request's, or the login's)."""
    err = ErrorBody.decode(m.body)
    raise error_from_code(err.code, err.message, err.hint)


def explain_login_failure(err: Error, security: Security) -> None:
    """On first encrypted contact a failed login may also mean an interceptor: say so.
    After a fallback to plaintext, say that TLS failed first."""
    if security.tls_failure:
        err.message += f" ({security.fallback_note})"
    if err.code == Codes.INVALID_PASSWORD and security.level == "encrypted-unverified":
        err.hint = ((err.hint + "; ") if err.hint else "") + (
            "this was the first contact with this server: if the password is right, the "
            "connection may have been intercepted (the server key presented was "
            f"{security.fingerprint}; compare it with 'casemate cert DIR show' on the server)")


def record_trust(params: ConnectParams, security: Security) -> None:
    """After a successful login: remember the server's mode (and key, if encrypted)."""
    known = KnownServers()
    for key in params.trust_keys:
        if security.encrypted:
            known.record(key, "encrypted", security.fingerprint)
        else:
            known.record(key, PLAIN, None)


# -- requests ----------------------------------------------------------------

class Request:
    done = False
    error: Error | None = None
    sent: tuple[Msg, Any] | None = None  # the request as sent: judged only if the link is lost
    seq = 0  # its number among the session's requests (what a CANCEL names)

    def on_message(self, m: Message) -> bool:
        """Consume one reply; return True when this request is complete."""
        raise NotImplementedError

    def _fail(self, m: Message) -> bool:
        try:
            raise_error(m)
        except Error as e:
            self.error = e
        self.done = True
        return True


class SimpleRequest(Request):
    """A request answered by one COMPLETE (or ERROR)."""

    # What the reply sets, with their values until it has (class attributes: a request is
    # made per statement, and an ``__init__`` per class would be a call each).
    rowcount = -1
    lastrowid: int | None = None
    in_transaction = False

    def on_message(self, m: Message) -> bool:
        if m.type is Msg.ERROR:
            return self._fail(m)
        if m.type is not Msg.COMPLETE:
            raise ProtocolError(f"unexpected {m.type.name}", Codes.PROTOCOL_VIOLATION)
        c = Complete.decode(m.body)
        self.rowcount, self.lastrowid, self.in_transaction = c.rowcount, c.lastrowid, c.in_transaction
        self.done = True
        return True


Description = tuple[tuple[Any, ...], ...]  # PEP 249's: (name, type_code, None x 5) per column

# PEP 249 descriptions by DESCRIPTION body (a program reads a few result shapes again and
# again): bounded in count, in the columns of a description kept and in their text (SQLite
# names a column by its expression, which can be a long literal).  Only bodies of text
# (names, type codes or None) are kept: as keys, 1, 1.0 and True are one.
_DESCRIPTIONS: dict[Any, Description] = {}
_DESCRIPTIONS_MAX = 256
_DESCRIPTION_MAX_COLUMNS = 64
_DESCRIPTION_MAX_TEXT = 4096


def pep249_description(body: Any) -> Description:
    """A DESCRIPTION body (``[[name, type code], ...]``) as PEP 249's ``description``."""
    try:
        return _DESCRIPTIONS[body]
    except (KeyError, TypeError):  # (TypeError: a body decoded with a list in it)
        pass
    d = tuple([(str(c[0]), c[1], None, None, None, None, None) for c in body])
    if (type(body) is tuple and len(d) <= _DESCRIPTION_MAX_COLUMNS
            and all(type(c) is tuple and type(c[0]) is str and type(c[1]) in _TEXT_OR_NONE
                    for c in body)
            and sum(len(c[0]) + len(c[1] or "") for c in body) <= _DESCRIPTION_MAX_TEXT):
        if len(_DESCRIPTIONS) >= _DESCRIPTIONS_MAX:
            _DESCRIPTIONS.clear()
        _DESCRIPTIONS[body] = d
    return d


_TEXT_OR_NONE = (str, type(None))


class ExecRequest(SimpleRequest):
    """QUERY or FETCH: optional DESCRIPTION, ROWS, then SUSPENDED or COMPLETE."""

    description: Description | None = None  # PEP 249's
    suspended = False

    def __init__(self, sink: Callable[[list[Any]], None]) -> None:
        self.sink = sink

    def on_message(self, m: Message) -> bool:
        if m.type is Msg.RESULT:  # DESCRIPTION, ROWS and COMPLETE in one frame
            desc, rows, c = m.body  # (as Result.decode takes it, without its objects)
            self.description = pep249_description(desc)
            for chunk in rows:
                self.sink(chunk)
            if type(c) is not tuple or len(c) != 3:
                c = Complete.decode(c)
            self.rowcount, self.lastrowid, self.in_transaction = c
            self.done = True
            return True
        if m.type is Msg.DESCRIPTION:
            self.description = pep249_description(m.body)
            return False
        if m.type is Msg.ROWS:
            for chunk in m.body:
                self.sink(chunk)
            return False
        if m.type is Msg.SUSPENDED:
            self.suspended = True
            self.done = True
            return True
        return super().on_message(m)


class ClientCore:
    """Protocol state + FIFO of requests awaiting replies + notice dispatch."""

    def __init__(self, proto: ProtocolConnection) -> None:
        self.proto = proto
        self.pending: collections.deque[Request] = collections.deque()
        self.notices: list[tuple[str, str]] = []
        self.on_notice: Callable[[str, str], None] | None = None
        self.shutdown_notice: str | None = None
        self.in_transaction = False
        self.autocommit_portals: set[int] = set()  # suspended results of autocommit statements
        self.wrote = False  # the open transaction may hold changes (closing would lose them)

    @classmethod
    def new(cls) -> ClientCore:
        # The client accepts larger frames than it sends: it trusts the server it
        # authenticated, and a row batch can hold one very wide row.
        return cls(ProtocolConnection(Role.CLIENT, max_frame=CLIENT_MAX_FRAME))

    def request(self, req: Request, msg: Msg, body: Any) -> bytes:
        """Encode a request and queue its reply handler.  Nothing is sent on error."""
        try:
            data = self.proto.send(msg, body)
        except ProtocolError as e:
            if e.code == Codes.MESSAGE_TOO_LARGE:  # refused locally: the connection is fine
                raise ProgrammingError(e.message, e.code, e.hint) from None
            raise
        except (TypeError, ValueError) as e:  # UnicodeEncodeError is a ValueError
            raise InterfaceError(f"cannot send this parameter: {e}") from None
        except RecursionError:  # json.dumps of a casemate.Json, or msgpack, past the limit
            raise InterfaceError("cannot send this parameter: it is nested deeper than "
                                 "Python encodes (the recursion limit)") from None
        req.sent = (msg, body)
        req.seq = self.proto.requests
        self.pending.append(req)
        return data

    def cancel_frame(self) -> bytes | None:
        """The CANCEL frame for every request awaiting its reply (up to the newest), or None
        when none is.  Safe from another thread: it changes no state (out of band)."""
        try:
            req = self.pending[-1]
        except IndexError:
            return None
        return encode_frame(Msg.CANCEL, req.seq)

    def dispatch(self, m: Message) -> None:
        if m.type is Msg.NOTICE:
            notice = Notice.decode(m.body)
            code, text = notice.code, notice.message
            # The server is ending this session: shutdown, drop, idle, idle in a transaction.
            if code.startswith("57") or code == Codes.IDLE_IN_TRANSACTION_TIMEOUT:
                self.shutdown_notice = text
            self.notices.append((code, text))
            del self.notices[:-100]  # bounded: the last 100 notices
            if self.on_notice is not None:
                self.on_notice(code, text)
            return
        if not self.pending:
            raise ProtocolError(f"unexpected {m.type.name} with no request pending",
                                Codes.PROTOCOL_VIOLATION)
        req = self.pending[0]
        if req.on_message(m):
            self.pending.popleft()
            if isinstance(req, SimpleRequest) and req.error is None:
                if isinstance(req, ExecRequest) and (req.suspended or self.autocommit_portals):
                    self._track_portal(req)
                else:
                    self.in_transaction = req.in_transaction
                self.wrote = self.in_transaction and (self.wrote or may_write(req.sent))

    def _track_portal(self, req: ExecRequest) -> None:
        """Follow results left open (SUSPENDED): which run in autocommit (fetching their end
        commits), and the transaction state, which SUSPENDED does not carry."""
        if not req.suspended:
            self.in_transaction = req.in_transaction
        if req.sent is None:
            return
        body = typed(*req.sent)
        if isinstance(body, Query | Call):
            if not req.suspended:
                self.autocommit_portals.discard(body.portal)
            elif body.begin:  # the server began a transaction for it
                self.in_transaction = True
                self.autocommit_portals.discard(body.portal)
            else:
                self.autocommit_portals.add(body.portal)
        elif isinstance(body, Fetch) and not req.suspended:
            self.autocommit_portals.discard(body.portal)

    def fail_pending(self, err: Error) -> None:
        """The connection is gone: every request still waiting gets ``err``."""
        while self.pending:
            req = self.pending.popleft()
            req.error, req.done = err, True

    def lost_error(self, why: str) -> OperationalError:
        """The error for a lost connection.  It claims a rollback only when no request that
        can commit was waiting for its reply; otherwise the outcome is unknown (08007)."""
        reason = why
        if self.shutdown_notice:
            reason = f"{why}: the server said: {self.shutdown_notice}"
        for req in self.pending:
            what = commit_risk(req.sent, self.autocommit_portals)
            if what:
                unknown = OperationalError(
                    f"connection to the server lost ({reason}) after {what} was sent and "
                    "before its reply: the client cannot know whether it was committed",
                    Codes.TRANSACTION_RESOLUTION_UNKNOWN,
                    "reconnect and check whether its changes are there before running it again")
                unknown.transaction_lost = True
                return unknown
        txn = (" The open transaction was rolled back by the server; nothing of it was "
               "committed.") if self.in_transaction else ""
        lost = OperationalError(f"connection to the server lost ({reason}).{txn}",
                                Codes.CONNECTION_FAILURE)
        lost.transaction_lost = self.in_transaction
        return lost
