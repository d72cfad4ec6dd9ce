"""The login of one session: HELLO, then SCRAM or SASL EXTERNAL, under the session's
login deadline.  Kept apart from the request handlers: until it succeeds the
session serves nothing, and nothing here runs once it has.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import Codes, Error
from ..protocol import PROTOCOL_VERSION, Msg
from ..protocol.messages import AuthOk, Hello, HelloOk, SaslInitial
from .audit import clean
from .auth import ScramException, ScramLogin, mechanism_for
from .certauth import EXTERNAL, certificate_refusal, external_refusal

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Login"]

log = logging.getLogger("casemate.server")


class Login:
    """Runs the login on behalf of one :class:`Session` and sets its user and group."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self.server = session.server

    async def run(self) -> bool:
        """HELLO, then SCRAM (or SASL EXTERNAL); False once the session was told why not."""
        hello = Hello.decode((await self.s.next_login_message()).body)
        if hello.protocol != PROTOCOL_VERSION:
            self.s.fatal(Error(f"unsupported protocol version {hello.protocol!r}; this "
                              f"server speaks version {PROTOCOL_VERSION}",
                              Codes.UNSUPPORTED_VERSION, "upgrade the Casemate client"))
            return False
        self.s.program = clean(hello.program)  # shown to admins: no forged rows
        features = hello.features
        self.s.result_frames = isinstance(features, tuple) and "result" in features
        self.s.client_host = clean(hello.host)
        if refusal := self.server.admission_error(self.s):
            self.s.fatal(refusal)
            return False
        encrypted = self.s.tls_version is not None
        mech = mechanism_for(encrypted)
        self.s.send(Msg.HELLO_OK, HelloOk(
            PROTOCOL_VERSION, encrypted, [mech, EXTERNAL] if self.s.client_cert_der else [mech],
            self.server.settings.limits.max_message_bytes).wire())
        initial = SaslInitial.decode((await self.s.next_login_message()).body)
        if self.s.client_cert_der and initial is not None and initial.mechanism == EXTERNAL:
            return await self._external(initial.message, hello.statement_timeout)
        if initial is None or initial.mechanism != mech:
            self.s.fatal(Error(f"expected a {mech} login", Codes.INVALID_AUTHORIZATION,
                              "connections to an encrypted server must use channel binding"
                              if encrypted else None))
            return False
        scram = ScramLogin(self.server.backend, mech, self.s.cb_data)
        throttle = self.server.throttle
        counted = False
        try:
            self.s.rights_version = self.server.backend.grants_version()  # before the lookup
            challenge = await self.s.runner.call(scram.first, initial.message)
            if scram.user is not None and (why := self._cert_refusal(
                    certificate_refusal, scram.user.name, scram.user.group)):
                return self._failed(scram.username, why, certificate=True)
            self.s.send(Msg.SASL_CHALLENGE, challenge)
            m = await self.s.next_login_message()
            if not isinstance(m.body, str):
                raise ScramException("malformed client-final message")
            # Counted as a failure before the verdict and queued behind the attempts in
            # flight, so parallel guesses see it too (audit.Throttle); a success clears it.
            left = self.s.deadline - asyncio.get_running_loop().time() - 0.05
            counted = True
            if not await throttle.wait_turn(self.s.peer_ip, scram.username, left):
                return self._failed(scram.username, "too many attempts in flight",
                                          throttled=True)
            server_final = await self.s.runner.call(scram.final, m.body)
        except ScramException as e:
            if not counted:
                throttle.failed(self.s.peer_ip, scram.username, time.monotonic())
            return self._failed(scram.username, str(e))
        throttle.succeeded(self.s.peer_ip, scram.username)
        assert scram.user is not None
        self._logged_in(scram.user.name, scram.user.group, server_final,
                        hello.statement_timeout)
        return True

    def _cert_refusal(self, rule: Callable[[str, list[str], str], str | None], user: str,
                      group: str) -> str | None:
        """What the user's auth method says about this connection's certificate."""
        method = self.server.settings.auth.method_for(user, group)
        return rule(method, self.server.cert_users.users(self.s.client_cert_der), user)

    async def _external(self, name: str, wanted_timeout: Any) -> bool:
        """SASL EXTERNAL: the client certificate alone, for users whose method allows it."""
        self.s.rights_version = self.server.backend.grants_version()  # before the lookup
        user = await self.s.runner.call(self.server.backend.get_user, name)
        why = "no such user" if user is None else self._cert_refusal(
            external_refusal, user.name, user.group)
        if user is None or why:
            return self._failed(name, why or "", certificate=True)
        self.s.send(Msg.SASL_CHALLENGE, "")  # RFC 4422 EXTERNAL: empty challenge and response
        if (await self.s.next_login_message()).body != "":
            self.s.fatal(Error("malformed EXTERNAL login", Codes.PROTOCOL_VIOLATION))
            return False
        self._logged_in(user.name, user.group, None, wanted_timeout)
        return True

    def _logged_in(self, user: str, group: str, server_final: str | None,
                   wanted_timeout: Any) -> None:
        self.s.proto.max_frame = self.server.settings.limits.max_message_bytes
        if self.s.ticket is not None:
            self.s.ticket.release()
        self.s.user, self.s.group = user, group
        method = self.server.settings.auth.method_for(user, group)
        by_cert = f"certificate {self.s.client_cert_subject}" if "certificate" in method else ""
        self.s.authenticated_by = {"scram": "password", "certificate": by_cert}.get(
            method, f"{by_cert} + password")
        self.s.send(Msg.AUTH_OK, AuthOk(server_final, self.s.id, self.server.version,
                                        self.server.backend.name,
                                        self.server.settings.network.publication_name,
                                        self.s.user, self.s.group).wire())
        self._hello_timeout(wanted_timeout)

    def _hello_timeout(self, wanted: Any) -> None:
        """The client's statement_timeout (seconds, in HELLO); one over the limit is lowered
        to it, with a notice, rather than failing the login."""
        if wanted is None:
            return
        try:
            if not isinstance(wanted, int | float) or isinstance(wanted, bool) or wanted < 0:
                raise Error(f"invalid statement_timeout {wanted!r}", Codes.DATA)
            self.s.set_timeout(float(wanted))
        except Error as e:
            self.s.notice(Codes.WARNING, f"{e.message}; statement_timeout stays "
                        f"{self.s.statement_timeout:g} s")

    def _failed(self, name: str, reason: str, throttled: bool = False,
                      certificate: bool = False) -> bool:
        name = clean(name)  # the client's choice, shown in logs
        log.warning("login failed for user %r from %s (%s)", name, self.s.peer, reason)
        self.server.audit.event("login_failed", user=name, address=self.s.peer_ip,
                                encrypted=self.s.tls_version is not None,
                                tls_version=self.s.tls_version, cipher=self.s.cipher,
                                client_certificate=self.s.client_cert_subject,
                                **({"reason": "throttled"} if throttled else
                                   {"reason": clean(reason)} if certificate else {}))
        if throttled:  # refused unheard: the password was not checked
            self.s.fatal(Error(f'too many login attempts in progress for user "{name}" or from '
                              f"{self.s.peer_ip}", Codes.TOO_MANY_CONNECTIONS,
                              "wait and try again (failed logins are throttled)"))
            return False
        if certificate:
            self.s.fatal(Error(f'certificate authentication failed for user "{name}"',
                              Codes.INVALID_AUTHORIZATION, "the administrator maps client "
                              "certificates to users ([auth] in casemate.toml)"))
            return False
        self.s.fatal(Error(f'password authentication failed for user "{name}"',
                          Codes.INVALID_PASSWORD,
                          "check the user name and password (user names are case-sensitive)"))
        return False
