"""Certificates that name the LAN address, on the same key: ``cert generate --keep-key
--san``, the start-up warning of a server listening on a wildcard, and the tls_ca
name-mismatch hint that names the command."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import casemate
from casemate import tls
from tests.conftest import ADMIN_PASSWORD, ServerProcess


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "casemate", *map(str, args)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def _connect(port: int, host: str = "127.0.0.1", **kw: object) -> casemate.Connection:
    return casemate.connect(host=host, port=port, user="admin", password=ADMIN_PASSWORD,
                            **kw)  # type: ignore[arg-type]


def _wait_for(path: Path, text: str) -> None:
    deadline = time.monotonic() + 10
    while text not in path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert text in path.read_text()


def test_keep_key_adds_a_lan_name_and_pinned_clients_keep_working(
        make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db(encrypted=True)
    res = db / "Resources"
    key_before = (res / "key.pem").read_bytes()
    old = tls.inspect_cert(tls.load_chain(res / "cert.pem")[0])
    server = server_factory(db, extra=("--host", "127.0.0.2"))
    with _connect(server.port, "127.0.0.2") as conn:  # trust on first use: pins the key
        assert conn.security.encrypted
    with pytest.raises(casemate.SecurityError) as ei:  # the LAN address is not in the SANs
        _connect(server.port, "127.0.0.2", tls_ca=str(res / "cert.pem"))
    assert "generate --keep-key --san 127.0.0.2" in (ei.value.hint or ""), ei.value

    r = _cli("cert", db, "generate", "--keep-key", "--san", "127.0.0.2", "--san", "db.lan")
    assert r.returncode == 0, r.stderr
    assert (res / "key.pem").read_bytes() == key_before
    assert (res / "cert.pem.old").exists()
    new = tls.inspect_cert(tls.load_chain(res / "cert.pem")[0])
    assert new.spki_sha256 == old.spki_sha256 and new.sha256 != old.sha256
    assert set(old.sans) | {"127.0.0.2", "db.lan"} <= set(new.sans)
    tls.check_pair(res / "key.pem", res / "cert.pem")
    assert _cli("cert", db, "reload").returncode == 0
    _wait_for(db / "Logs" / "server.log", "certificate reloaded")
    with _connect(server.port, "127.0.0.2") as conn:  # the pin still holds
        assert conn.execute("SELECT 1").fetchone() == (1,)
    given = db.parent / "given-to-clients.pem"  # the new cert.pem, handed out
    given.write_bytes((res / "cert.pem").read_bytes())
    with _connect(server.port, "127.0.0.2", tls_ca=str(given)) as conn:
        assert conn.security.verified_by == "CA"


def test_keep_key_needs_a_key(make_db) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    (db / "Resources" / "key.pem").unlink()
    r = _cli("cert", db, "generate", "--keep-key", "--san", "db.lan")
    assert r.returncode != 0 and "no " in r.stderr and "key.pem" in r.stderr, r.stderr
    r = _cli("cert", db, "generate", "--san", "db.lan")  # the cert is still there
    assert r.returncode != 0 and "--keep-key" in r.stderr, r.stderr


def test_wildcard_listener_warns_about_lan_names(make_db) -> None:  # type: ignore[no-untyped-def]
    """Run in a network namespace of its own, so the wildcard reaches no real network."""
    db = make_db(encrypted=True)
    s = ServerProcess(db, extra=("--host", "0.0.0.0"), prefix=("unshare", "-n")).start()
    try:
        _wait_for(db / "Logs" / "server.log", "wildcard")
    finally:
        s.stop()
    log = (db / "Logs" / "server.log").read_text()
    assert "tls_ca" in log and f"casemate cert {db} generate --keep-key --san" in log, log


def test_no_wildcard_no_warning(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db(encrypted=True)
    server_factory(db)
    assert "wildcard" not in (db / "Logs" / "server.log").read_text()
