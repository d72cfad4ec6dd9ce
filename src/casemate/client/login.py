"""The login, shared by the blocking and asyncio clients, with no I/O.

:func:`login_flow` is the handshake + SCRAM exchange (or SASL EXTERNAL, the client
certificate alone) as a generator: it yields bytes to send, or ``None`` to be sent
the next message, and returns the :class:`LoginResult`.  Each client's I/O shell
feeds it from its socket.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from scramp import ScramClient, ScramException

from ..errors import Codes, InterfaceError, ProtocolError, SecurityError
from ..protocol import Message, Msg, ProtocolConnection
from ..protocol.messages import AuthOk, HelloOk, SaslInitial
from .core import raise_error
from .params import ConnectParams, client_hello

__all__ = ["login_flow", "LoginResult", "LoginGen"]

EXTERNAL = "EXTERNAL"  # SASL: the client certificate alone (server/certauth.py)


class LoginResult:
    """What the server said at login: session, versions, backend, the user's group."""

    def __init__(self, ok: AuthOk | dict[str, Any]) -> None:
        if not isinstance(ok, AuthOk):
            ok = AuthOk.decode(ok)  # ({} before the login)
        self.session_id: int = ok.session
        self.server_version: str = ok.server_version
        self.backend: str = ok.backend
        self.publication: str = ok.publication
        self.group: str = ok.group


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
        raise_error(m)
    if m.type is not kind:
        raise ProtocolError(f"expected {kind.name}, got {m.type.name}", Codes.PROTOCOL_VIOLATION)
    return m.body

