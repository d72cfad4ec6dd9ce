"""What a client says when it is refused or falls back, against real servers.

* An encrypted server that denies the client's address sends the refusal inside TLS,
  after the handshake proved its key: a client that pinned the key reports the refusal
  (28000), not "possible downgrade attack", and keeps its pin (issue 21, item 4).
* A forged plaintext refusal (a relay in front of the server) is not authenticated: the
  pinned client still refuses to continue in plaintext, sends nothing but its TLS
  ClientHello, and its hint does not tell the user to drop the pin.
* A fresh ``auto`` client whose TLS attempt failed and that retried in plaintext says so
  in ``conn.security`` and in a login error that follows (issue 10, item 10).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import casemate
import casemate.aio
from casemate.client.known import KnownServer, KnownServers
from casemate.errors import Codes
from casemate.testing import ADMIN_PASSWORD, ServerProcess
from tests.security.relay import Relay


def _deny_loopback(db: Path) -> None:
    with open(db / "casemate.toml", "a", encoding="utf-8") as fh:
        fh.write('\n[[access.rules]]\naction = "deny"\nfrom = "127.0.0.1"\n')


def _connect(port: int, use_aio: bool, password: str = ADMIN_PASSWORD, **kw: Any) -> Any:
    """Connect with either client; return (security text) or raise what it raised."""
    args = dict(host="127.0.0.1", port=port, user="admin", password=password, **kw)
    if use_aio:
        async def main() -> str:
            conn = await casemate.aio.connect(**args)
            try:
                return str(conn.security)
            finally:
                await conn.close()
        return asyncio.run(main())
    with casemate.connect(**args) as conn:
        return str(conn.security)


def _pins() -> list[KnownServer]:
    return KnownServers().all()


@pytest.fixture
def pinned_then_denied(make_db, server_factory) -> ServerProcess:  # type: ignore[no-untyped-def]
    """An encrypted server this client has pinned, restarted with 127.0.0.1 denied."""
    db = make_db(encrypted=True)
    server = server_factory(db)
    assert "encrypted" in _connect(server.port, False)  # first contact: key pinned
    port = server.port
    server.stop()
    _deny_loopback(db)
    return server_factory(db, port=port)  # type: ignore[no-any-return]


@pytest.mark.parametrize("use_aio", [False, True], ids=["blocking", "asyncio"])
def test_pinned_client_reports_a_refusal_not_a_downgrade(pinned_then_denied: ServerProcess,
                                                         use_aio: bool) -> None:
    before = _pins()
    with pytest.raises(casemate.OperationalError) as info:
        _connect(pinned_then_denied.port, use_aio)
    err = info.value
    assert err.code == Codes.INVALID_AUTHORIZATION, err
    assert "refused by the server's access rules" in err.message
    assert "downgrade" not in str(err) and "trust forget" not in str(err)
    assert _pins() == before  # the pin stays, still "encrypted"


@pytest.mark.parametrize("use_aio", [False, True], ids=["blocking", "asyncio"])
def test_forged_plaintext_refusal_does_not_unpin_or_downgrade(tls_server: ServerProcess,
                                                              use_aio: bool) -> None:
    relay = Relay(tls_server.port)
    try:
        assert "encrypted" in _connect(relay.port, use_aio)  # pinned through the relay
        relay.mode = "refuse"  # now answers anything with a plaintext "access rules" refusal
        with pytest.raises(casemate.SecurityError) as info:
            _connect(relay.port, use_aio)
        relay.wait_idle()
        err = info.value
        assert err.code == Codes.NOT_ENCRYPTED and "possible downgrade attack" in err.message
        assert err.hint is not None and "Do not drop the pin on this message alone" in err.hint
        flow = relay.flows[-1]
        assert flow.first_byte == 0x16 and flow.c2s[:1] == b"\x16"  # only TLS was sent
        assert b"admin" not in flow.c2s  # no plaintext HELLO / login
        assert len(relay.flows) == 2  # no second, plaintext, attempt
        pin = KnownServers().get(f"127.0.0.1:{relay.port}")
        assert pin is not None and pin.mode == "encrypted" and pin.fingerprint
    finally:
        relay.close()


@pytest.mark.parametrize("use_aio", [False, True], ids=["blocking", "asyncio"])
def test_fresh_auto_client_says_tls_failed_and_retried_in_plaintext(
        plain_server: ServerProcess, use_aio: bool) -> None:
    with pytest.raises(casemate.OperationalError) as info:
        _connect(plain_server.port, use_aio, password="wrong")
    err = info.value
    assert err.code == Codes.INVALID_PASSWORD, err
    assert "TLS failed: " in err.message and "; retried in plaintext" in err.message, err
    security = _connect(plain_server.port, use_aio)  # still fresh: the failure recorded nothing
    assert security.startswith("plain: NOT encrypted (TLS failed: "), security
    assert security.endswith("; retried in plaintext)"), security
    # Known as plain now: plaintext first, no TLS attempt, nothing to say.
    assert _connect(plain_server.port, use_aio) == "plain: NOT encrypted"


def test_plaintext_first_client_gets_the_refusal_from_an_encrypted_server(
        make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    """A client that knows the server as plain speaks plaintext first: the encrypted server
    has read its first byte, and still gets the refusal to it (not a reset)."""
    db = make_db(encrypted=True)
    _deny_loopback(db)
    server = server_factory(db)
    for _ in range(5):
        KnownServers().record(f"127.0.0.1:{server.port}", "plain", None)
        with pytest.raises(casemate.OperationalError) as info:
            _connect(server.port, False)
        assert info.value.code == Codes.INVALID_AUTHORIZATION, info.value
