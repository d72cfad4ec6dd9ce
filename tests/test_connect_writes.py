"""What a blocking client writes to connect (issue 16, resumed connect time): the client's
TLS Finished goes out with the login's first message, not by itself, so an encrypted
connect makes one write more than a plain one (its ClientHello), full handshake or
resumed, and the server is woken once fewer."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from casemate.client import blocking
from casemate.testing import ServerProcess


class CountingSocket:
    """A connected socket that counts its ``sendall`` calls (everything else passes)."""

    def __init__(self, sock: socket.socket, writes: list[int]) -> None:
        self._sock = sock
        self._writes = writes

    def sendall(self, data: Any) -> None:
        self._writes.append(len(data))
        self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def writes_to_connect(server: ServerProcess, monkeypatch: pytest.MonkeyPatch
                      ) -> tuple[list[int], bool]:
    """The sizes of the writes made to connect and log in, and whether TLS resumed."""
    writes: list[int] = []
    real = blocking._tcp
    monkeypatch.setattr(blocking, "_tcp", lambda params: CountingSocket(real(params), writes))
    conn = server.connect()
    try:
        done = list(writes)
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the connection works
        return done, bool(getattr(conn._chan.sock, "session_reused", False))
    finally:
        conn.close()


def test_an_encrypted_connect_writes_once_more_than_a_plain_one(
        make_db: Any, server_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    plain_server = server_factory(make_db())
    first, _ = writes_to_connect(plain_server, monkeypatch)  # tries TLS first, then plain
    plain, _ = writes_to_connect(plain_server, monkeypatch)  # known plain: plain only
    assert first[0] > 500 and len(first) == len(plain) + 1  # (the refused ClientHello)
    tls_server = server_factory(make_db(encrypted=True))
    full, reused = writes_to_connect(tls_server, monkeypatch)  # first contact
    assert not reused
    resumed, reused = writes_to_connect(tls_server, monkeypatch)
    assert reused
    assert len(full) == len(resumed) == len(plain) + 1, (plain, full, resumed)
