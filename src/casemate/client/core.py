"""Client logic shared by the blocking and asyncio clients, with no I/O.

* :func:`plan_attempts` decides, from the parameters and known_servers,
  whether to try TLS, plaintext, or both, and in which order (never plaintext
  for a server once seen encrypted, or with ``encryption="required"``).
* :func:`check_server_key` applies the trust rules right after the TLS
  handshake, before any Casemate byte is sent.
* :func:`login_flow` is the handshake + SCRAM exchange as a generator: it
  yields bytes to send, or ``None`` to be sent the next message.
* The ``*Request`` classes consume the replies of one request each; replies
  arrive strictly in request order, so a FIFO of them allows pipelining.
* :meth:`ClientCore.lost_error` words a lost connection: "rolled back" only
  when no request that can commit awaited its reply, else the outcome is
  unknown (``08007``), as PostgreSQL's JDBC driver says: a server can commit
  and die before it answers.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
import warnings
from collections.abc import Callable, Generator
from typing import Any

from scramp import ScramClient, ScramException

from .. import continuity, lan, tls
from ..errors import (
    Codes,
    Error,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    ProtocolError,
    SecurityError,
    UncommittedWorkWarning,
    error_from_code,
)
from ..protocol import Message, Msg, ProtocolConnection, Role, encode_frame
from ..protocol.messages import (
    Admin,
    AuthOk,
    Call,
    Complete,
    ErrorBody,
    ExecuteMany,
    Fetch,
    HelloOk,
    Notice,
    Query,
    Result,
    SaslInitial,
    decode_description,
    typed,
)
from .known import KnownServer, KnownServers
from .params import ConnectParams, Security, client_hello

__all__ = [
    "plan_attempts",
    "check_server_key",
    "login_flow",
    "LoginResult",
    "ClientCore",
    "ExecRequest",
    "SimpleRequest",
]

log = logging.getLogger("casemate.client")
TLS, PLAIN = "tls", "plain"
EXTERNAL = "EXTERNAL"  # SASL: the client certificate alone (server/certauth.py)
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
            f"encryption was switched off, run: casemate trust forget {key}")
    return SecurityError(
        f"{key} did not complete a TLS handshake ({why}) and this connection requires "
        "encryption", Codes.NOT_ENCRYPTED,
        "switch on encrypt_client_server_connections on the server, or connect without "
        "encryption='required' / tls_ca")


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
        f"prints; if they match, run: casemate trust forget {params.server_key}")


class LoginResult:
    def __init__(self, ok: AuthOk | dict[str, Any]) -> None:
        if not isinstance(ok, AuthOk):
            ok = AuthOk.decode(ok)  # ({} before the login)
        self.session_id: int = ok.session
        self.server_version: str = ok.server_version
        self.backend: str = ok.backend
        self.publication: str = ok.publication
        self.group: str = ok.group


def _raise_error(m: Message) -> None:
    err = ErrorBody.decode(m.body)
    raise error_from_code(err.code, err.message, err.hint)


LoginGen = Generator[bytes | None, Message | None, LoginResult]


def login_flow(proto: ProtocolConnection, params: ConnectParams,
               cb_data: bytes | None) -> LoginGen:
    """Handshake and SCRAM login.  With ``cb_data`` (TLS), SCRAM is channel-bound.  With
    no password and a client certificate: SASL EXTERNAL, the certificate alone."""
    if not params.password:
        return (yield from _external_flow(proto, params, cb_data))
    mech = "SCRAM-SHA-256-PLUS" if cb_data is not None else "SCRAM-SHA-256"
    binding = ("tls-server-end-point", cb_data) if cb_data is not None else None
    try:
        scram = ScramClient([mech], params.user, params.password, channel_binding=binding)
    except ScramException as e:
        raise InterfaceError(f"cannot start the login: {e}") from e
    # Hello and client-first go together: one round trip saved on every connect.
    out = proto.send(Msg.HELLO, client_hello(params))
    out += proto.send(Msg.SASL_INITIAL, SaslInitial(mech, scram.get_client_first()))
    yield out
    m = yield None
    hello = _take_hello(proto, m)
    if bool(hello.encrypted) != (cb_data is not None) or mech not in (hello.mechanisms or ()):
        raise SecurityError(f"server offered {hello.mechanisms} "
                            f"(encrypted={hello.encrypted}); the client requires {mech}",
                            Codes.PROTOCOL_VIOLATION)
    m = yield None
    challenge = _expect(m, Msg.SASL_CHALLENGE)
    try:
        scram.set_server_first(challenge)
        final = scram.get_client_final()
    except ScramException as e:
        raise ProtocolError(f"bad SCRAM challenge from server: {e}",
                            Codes.PROTOCOL_VIOLATION) from e
    yield proto.send(Msg.SASL_RESPONSE, final)
    m = yield None
    ok = AuthOk.decode(_expect(m, Msg.AUTH_OK))
    try:
        scram.set_server_final(ok.server_final)
    except (ScramException, KeyError, TypeError) as e:
        raise SecurityError(
            "the server could not prove that it knows this user's password verifier: possible "
            f"man-in-the-middle ({e}); nothing was recorded", Codes.INVALID_AUTHORIZATION) from e
    return LoginResult(ok)


def _take_hello(proto: ProtocolConnection, m: Message | None) -> HelloOk:
    hello = HelloOk.decode(_expect(m, Msg.HELLO_OK))
    limit = hello.max_message_bytes
    if isinstance(limit, int) and limit > 0:
        proto.max_send = limit  # refuse oversized requests here, before they cost a connection
    return hello


def _external_flow(proto: ProtocolConnection, params: ConnectParams,
                   cb_data: bytes | None) -> LoginGen:
    """Certificate-only login.  No password proves the server here, so the caller has
    already required a pinned or CA-verified server key (check_server_key)."""
    if cb_data is None or params.tls_cert is None:
        raise InterfaceError("no password: a login without one needs a client certificate "
                             "(tls_cert) and an encrypted connection")
    # RFC 4422 EXTERNAL: an empty challenge and an empty response, sent with the rest at
    # once (no round trip more than a password login).
    yield (proto.send(Msg.HELLO, client_hello(params))
           + proto.send(Msg.SASL_INITIAL, SaslInitial(EXTERNAL, params.user))
           + proto.send(Msg.SASL_RESPONSE, ""))
    m = yield None
    if EXTERNAL not in (_take_hello(proto, m).mechanisms or ()):
        raise SecurityError("the server did not accept the client certificate for login",
                            Codes.INVALID_AUTHORIZATION)
    m = yield None
    _expect(m, Msg.SASL_CHALLENGE)
    m = yield None
    return LoginResult(AuthOk.decode(_expect(m, Msg.AUTH_OK)))


def _expect(m: Message | None, kind: Msg) -> Any:
    if m is None:
        raise ProtocolError("no reply from server", Codes.CONNECTION_FAILURE)
    if m.type is Msg.ERROR:
        _raise_error(m)
    if m.type is not kind:
        raise ProtocolError(f"expected {kind.name}, got {m.type.name}", Codes.PROTOCOL_VIOLATION)
    return m.body


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
    if security.encrypted:
        known.record(params.server_key, "encrypted", security.fingerprint)
    else:
        known.record(params.server_key, PLAIN, None)


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
            _raise_error(m)
        except Error as e:
            self.error = e
        self.done = True
        return True


class SimpleRequest(Request):
    """A request answered by one COMPLETE (or ERROR)."""

    def __init__(self) -> None:
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.in_transaction = False

    def on_message(self, m: Message) -> bool:
        if m.type is Msg.ERROR:
            return self._fail(m)
        if m.type is not Msg.COMPLETE:
            raise ProtocolError(f"unexpected {m.type.name}", Codes.PROTOCOL_VIOLATION)
        c = Complete.decode(m.body)
        self.rowcount, self.lastrowid, self.in_transaction = c.rowcount, c.lastrowid, c.in_transaction
        self.done = True
        return True


class ExecRequest(SimpleRequest):
    """QUERY or FETCH: optional DESCRIPTION, ROWS, then SUSPENDED or COMPLETE."""

    def __init__(self, sink: Callable[[list[Any]], None]) -> None:
        super().__init__()
        self.sink = sink
        self.description: list[tuple[str, str | None]] | None = None
        self.suspended = False

    def on_message(self, m: Message) -> bool:
        if m.type is Msg.DESCRIPTION:
            self.description = decode_description(m.body)
            return False
        if m.type is Msg.ROWS:
            for chunk in m.body:
                self.sink(chunk)
            return False
        if m.type is Msg.RESULT:  # DESCRIPTION, ROWS and COMPLETE in one frame
            r = Result.decode(m.body)
            self.description = r.description
            for chunk in r.rows:
                self.sink(chunk)
            c = r.completion
            self.rowcount, self.lastrowid, self.in_transaction = c.rowcount, c.lastrowid, c.in_transaction
            self.done = True
            return True
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
                return OperationalError(
                    f"connection to the server lost ({reason}) after {what} was sent and "
                    "before its reply: the client cannot know whether it was committed",
                    Codes.TRANSACTION_RESOLUTION_UNKNOWN,
                    "reconnect and check whether its changes are there before running it again")
        txn = (" The open transaction was rolled back by the server; nothing of it was "
               "committed.") if self.in_transaction else ""
        return OperationalError(f"connection to the server lost ({reason}).{txn}",
                                Codes.CONNECTION_FAILURE)


# A statement that can end a transaction by committing it: COMMIT, END (SQLite), RELEASE of
# a savepoint that began the transaction, PREPARE TRANSACTION (PostgreSQL); at the start of
# the text or after a semicolon, past comments.  A false match only makes an error cautious.
_COMMIT_SQL = re.compile(
    r"(?:^|;)(?:\s|--[^\n]*(?:\n|$)|/\*.*?\*/)*(?:COMMIT|END|RELEASE|PREPARE)\b",
    re.IGNORECASE | re.DOTALL)
_READ_ONLY_ADMIN = frozenset({"status", "sessions"})
# Statements that read (or only open or mark a transaction): after them alone, closing an
# open transaction loses nothing.  Anything else in a transaction may have written.
_READ_SQL = re.compile(r"(?:\s|--[^\n]*(?:\n|$)|/\*.*?\*/)*(?:SELECT|VALUES|EXPLAIN|SHOW|"
                       r"BEGIN|START|SAVEPOINT|RELEASE|ROLLBACK)\b", re.IGNORECASE | re.DOTALL)


_WITH_SQL = re.compile(r"(?:\s|--[^\n]*(?:\n|$)|/\*.*?\*/)*WITH\b", re.IGNORECASE | re.DOTALL)
_QUOTED_OR_COMMENT = re.compile(r"'(?:[^']|'')*'|--[^\n]*|/\*.*?\*/", re.DOTALL)
_DML_WORD = re.compile(r"\b(?:INSERT|UPDATE|DELETE|MERGE|REPLACE\b(?!\s*\())\b", re.IGNORECASE)


def warn_uncommitted(stacklevel: int) -> None:
    """Say that closing loses changes (the server rolls them back), as a warning: a
    program that meant to commit learns it here rather than from missing rows later."""
    warnings.warn(UncommittedWorkWarning(
        "closing a connection with uncommitted changes (or a server method call that may "
        "have made some): the server rolls them back; call commit() (or rollback() to "
        "discard them) before close()"), stacklevel=stacklevel + 1)


def may_write(sent: tuple[Msg, Any] | None) -> bool:
    """Whether a request may have changed data (a guess on the side of caution; a
    ``SELECT`` that calls a writing function is not seen)."""
    if sent is None:
        return False
    msg, body = sent[0], typed(*sent)
    if isinstance(body, Query):
        return not isinstance(body.sql, str) or _sql_may_write(body.sql)
    return msg in (Msg.EXECUTE_MANY, Msg.CALL)


def _sql_may_write(sql: str) -> bool:
    if _READ_SQL.match(sql):
        return False
    if not _WITH_SQL.match(sql):
        return True
    # WITH ... SELECT reads; WITH ... INSERT/UPDATE/DELETE (or such a CTE) writes.
    return bool(_DML_WORD.search(_QUOTED_OR_COMMENT.sub(" ", sql)))


def commit_risk(sent: tuple[Msg, Any] | None, autocommit_portals: set[int]) -> str:
    """What a request sent but not answered may have committed ("" if it cannot commit).

    Autocommit statements (the QUERY/EXECUTE_MANY/CALL flag ``begin`` off) commit by
    themselves, as does FETCH of an autocommit result (an INSERT ... RETURNING ends with
    its last row), a server method (on PostgreSQL nothing stops one from sending COMMIT)
    and an admin command that changes users, groups or grants.
    """
    if sent is None:
        return ""
    try:
        if sent[0] is Msg.COMMIT:
            return "COMMIT"
        body = typed(*sent)
        if isinstance(body, Query):
            if not body.begin:
                return "a statement in autocommit mode"
            return "a COMMIT statement" if _COMMIT_SQL.search(body.sql) else ""
        if isinstance(body, ExecuteMany):
            if not body.begin:
                return "executemany in autocommit mode"
            return "a COMMIT statement" if _COMMIT_SQL.search(body.sql) else ""
        if isinstance(body, Call):
            # Even inside a transaction: only SQLite's authorizer stops a method's COMMIT.
            return ("a server method call" if body.begin else
                    "a server method call in autocommit mode")
        if isinstance(body, Fetch) and body.portal in autocommit_portals:
            return "a fetch from an autocommit statement"
        if isinstance(body, Admin) and body.command not in _READ_ONLY_ADMIN:
            return f"admin command {body.command!r}"
    except (TypeError, IndexError, KeyError):
        return "a request"  # a shape this function does not know: assume the worst
    return ""
