"""Connecting, shared by the blocking and asyncio clients, with no I/O.

:class:`ConnectPlan` walks the transports :func:`~.core.plan_attempts` chose and
decides, after each step a client's I/O shell reports, whether to try the next
one or which error to raise: a TLS handshake that failed as a plaintext server
makes it fail (fallback, or a downgrade refused), a login refused because the
server requires encryption (retry over TLS), a login timeout, any other error
(explained: the TLS failure before a fallback, a possible interceptor on first
contact).  :func:`accept_server` applies the trust rules to the handshake's
result.  The error texts for socket and TLS failures are here once too, so both
clients say the same thing.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

from .. import tls
from ..errors import Codes, Error, OperationalError, SecurityError
from .core import (
    PLAIN,
    TLS,
    check_server_key,
    downgrade_error,
    explain_login_failure,
    plan_attempts,
    record_trust,
)
from .known import KnownServers
from .params import ConnectParams, Security

__all__ = ["ConnectPlan", "NotTLS", "accept_server", "tcp_error", "verify_error"]

_NAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


class NotTLS(Exception):
    """The TLS handshake failed in a way that a plaintext server would cause."""


class ConnectPlan:
    """The attempts of one connect and what each outcome means."""

    def __init__(self, params: ConnectParams) -> None:
        self.params = params
        known = KnownServers()
        self.known = next(filter(None, map(known.get, params.trust_keys)), None)
        self.attempts = plan_attempts(params, self.known)
        self.tls_failure = ""
        self._later: list[str] = []

    @property
    def pin(self) -> str | None:
        """The server key this client trusts, if it pinned one."""
        return self.known.fingerprint if self.known is not None else None

    def __iter__(self) -> Iterator[str]:
        for i, mode in enumerate(self.attempts):
            self._later = self.attempts[i + 1:]
            yield mode

    def not_tls(self, e: NotTLS) -> None:
        """The handshake failed: go on in plaintext if the plan allows it, else refuse."""
        self.tls_failure = str(e)
        if PLAIN not in self._later:
            raise downgrade_error(self.params, self.known, self.tls_failure) from None

    def plain(self) -> Security:
        return Security(PLAIN, tls_failure=self.tls_failure or None)

    def failed(self, e: Exception, security: Security) -> Error | None:
        """The login failed with ``e`` (an Error or TimeoutError): None to try the next
        transport, else the error to raise (explained)."""
        if isinstance(e, SecurityError) and e.code == Codes.ENCRYPTION_REQUIRED and (
                TLS in self._later):
            return None
        err = e if isinstance(e, Error) else OperationalError(
            f"{self.params.server_key} did not complete the login within "
            f"{self.params.connect_timeout} s", Codes.CANNOT_CONNECT)
        explain_login_failure(err, security)
        return err

    def succeeded(self, security: Security) -> None:
        record_trust(self.params, security)

    def exhausted(self) -> OperationalError:
        return OperationalError(f"cannot connect to {self.params.server_key}",
                                Codes.CANNOT_CONNECT)


def accept_server(params: ConnectParams, plan: ConnectPlan, sslobj: Any) -> tuple[
        Security, bytes]:
    """After the TLS handshake: the trust rules (SecurityError) and the channel binding."""
    der = sslobj.getpeercert(binary_form=True)
    if der is None:
        raise SecurityError("the server sent no certificate", Codes.NOT_ENCRYPTED)
    c = sslobj.cipher()
    security = check_server_key(params, plan.known, der, sslobj.version(),
                                c[0] if c else None, sslobj)
    return security, tls.channel_binding_data(der)


def verify_error(params: ConnectParams, e: ssl.SSLCertVerificationError) -> SecurityError:
    """A certificate that failed verification against ``tls_ca``."""
    if e.verify_code in _NAME_MISMATCH:
        hint = (f"the certificate does not name {params.host}: on the server run 'casemate "
                f"cert DIR generate --keep-key --san {params.host}' (same key: pinned clients "
                "keep working), then 'casemate cert DIR reload', and give clients the new "
                "cert.pem")
    else:
        hint = "check tls_ca and that the host name is in the certificate"
    return SecurityError(f"the certificate of {params.server_key} failed verification "
                         f"against {params.tls_ca}: {e.verify_message}", Codes.NOT_ENCRYPTED,
                         hint)


def tcp_error(params: ConnectParams, e: Exception) -> OperationalError:
    """No TCP connection (refused, unreachable, timed out)."""
    if isinstance(e, TimeoutError):
        return OperationalError(
            f"cannot connect to {params.server_key}: timed out after {params.connect_timeout} s",
            Codes.CANNOT_CONNECT, "check the host, port and firewall")
    return OperationalError(
        f"cannot connect to {params.server_key}: {getattr(e, 'strerror', None) or e}", Codes.CANNOT_CONNECT,
        "is the server running (casemate serve DIR) and is the port right?")

