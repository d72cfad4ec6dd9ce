"""Server side of SCRAM-SHA-256 login (with ``-PLUS`` channel binding under TLS).

An unknown user gets a made-up but stable verifier, so the exchange runs to
the end and fails exactly as a wrong password does: the two are indistinguishable.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from scramp import ScramException, ScramMechanism

from ..storage import Backend, UserRecord

__all__ = ["ScramLogin", "ScramException", "mechanism_for"]

_SECRET = secrets.token_bytes(32)


def mechanism_for(encrypted: bool) -> str:
    """The one mechanism the server offers: channel-bound under TLS."""
    return "SCRAM-SHA-256-PLUS" if encrypted else "SCRAM-SHA-256"


def _fake(name: str) -> tuple[bytes, bytes, bytes, int]:
    def derive(label: bytes) -> bytes:
        return hmac.new(_SECRET, label + name.encode(), hashlib.sha256).digest()
    return derive(b"salt")[:16], derive(b"stored"), derive(b"server"), 4096


class ScramLogin:
    """One login attempt.  Blocking methods (user lookup): call them from a worker thread."""

    def __init__(self, backend: Backend, mechanism: str, cb_data: bytes | None) -> None:
        self.backend = backend
        self.user: UserRecord | None = None
        self.username = ""
        binding = ("tls-server-end-point", cb_data) if cb_data is not None else None
        self._server = ScramMechanism(mechanism).make_server(self._auth_info,
                                                             channel_binding=binding)

    def _auth_info(self, name: str) -> tuple[Any, ...]:
        self.username = name
        self.user = self.backend.get_user(name)
        if self.user is None:
            return _fake(name)
        u = self.user
        return u.salt, u.stored_key, u.server_key, u.iterations

    def first(self, client_first: str) -> str:
        """Take client-first, return server-first. Raises ScramException."""
        self._server.set_client_first(client_first)
        return self._server.get_server_first()  # type: ignore[no-any-return]

    def final(self, client_final: str) -> str:
        """Take client-final, return server-final. Raises ScramException on a bad proof."""
        self._server.set_client_final(client_final)
        if self.user is None:
            raise ScramException("unknown user")
        return self._server.get_server_final()  # type: ignore[no-any-return]
