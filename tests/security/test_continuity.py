"""Key continuity: pinned clients follow a rotation the old key signed, and nothing else.

Real servers, real blocking and asyncio clients, the CLI for rotate/install/reload,
and the relay of tests/security/relay.py for the attacks.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

import casemate
import casemate.aio
from casemate import continuity, tls
from casemate.client.known import KnownServers
from casemate.testing import ADMIN_PASSWORD, ServerProcess

from .relay import Relay
from .test_client_cert import _ca


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "casemate", *args], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def key_of(db: Path) -> str:
    return tls.spki_fingerprint(tls.load_chain(db / "Resources" / "cert.pem")[0])


def reload(server: ServerProcess) -> None:
    n = server.log().count("certificate reloaded")
    cli("cert", str(server.db), "reload")
    deadline = time.monotonic() + 10
    while server.log().count("certificate reloaded") == n:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)


def connect(port: int, **kw: Any) -> casemate.Connection:
    return casemate.connect(host="127.0.0.1", port=port, user="admin", password=ADMIN_PASSWORD,
                            reconnect_attempts=0, **kw)


async def aconnect(port: int) -> Any:
    conn = await casemate.aio.connect(host="127.0.0.1", port=port, user="admin",
                                      password=ADMIN_PASSWORD)
    try:
        assert await conn.fetch("SELECT 1") == [(1,)]
        return conn.security
    finally:
        await conn.close()


def test_rotation_followed_by_pinned_blocking_and_asyncio_clients(
        tls_server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    k1 = key_of(tls_server.db)
    homes = [tmp_path / "blocking-home", tmp_path / "asyncio-home"]
    monkeypatch.setenv("CASEMATE_HOME", str(homes[0]))
    connect(tls_server.port).close()
    monkeypatch.setenv("CASEMATE_HOME", str(homes[1]))
    assert asyncio.run(aconnect(tls_server.port)).fingerprint == k1
    out = cli("cert", str(tls_server.db), "rotate").stdout
    assert "vouches for the new one for 30 days" in out
    reload(tls_server)
    k2 = key_of(tls_server.db)
    assert k2 != k1
    # No command on the clients' side: each follows the endorsed key, once.
    monkeypatch.setenv("CASEMATE_HOME", str(homes[0]))
    with connect(tls_server.port) as conn:
        sec = conn.security
        assert (sec.level, sec.fingerprint, sec.verified_by) == (
            "encrypted-verified", k2, "pinned key's endorsed successor")
        assert sec.note and k1 in sec.note and k2 in sec.note and "signed by the pinned" in sec.note
        assert "Note: the server's key changed" in str(sec)
    assert KnownServers().get(f"127.0.0.1:{tls_server.port}").fingerprint == k2  # type: ignore[union-attr]
    with connect(tls_server.port) as conn:  # said once: the pin is the new key now
        assert conn.security.verified_by == "pinned key" and conn.security.note is None
    monkeypatch.setenv("CASEMATE_HOME", str(homes[1]))
    sec = asyncio.run(aconnect(tls_server.port))
    assert sec.fingerprint == k2 and sec.note and "changed" in sec.note
    assert asyncio.run(aconnect(tls_server.port)).note is None


def _mitm_context(folder: Path, key: Any, extra: bytes) -> tuple[Any, str]:
    """The relay's TLS context: its own key, and ``extra`` certificates after its own."""
    folder.mkdir()
    cert = tls.make_self_signed(key, "Evil Relay", ["127.0.0.1"])
    kp, cp = folder / "mitm-key.pem", folder / "mitm-cert.pem"
    tls.write_key(kp, key)
    tls.write_cert(cp, cert)
    return tls.server_context(kp, cp, extra_chain=extra), tls.spki_fingerprint(cert)


def _forged(pinned_cert: x509.Certificate, signer: Any, new_public: Any) -> bytes:
    """An endorsement that claims the pinned key as its author but is signed by another."""
    old_spki = pinned_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Casemate key successor")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(new_public).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.UnrecognizedExtension(continuity.ENDORSEMENT_OID, old_spki),
                           critical=False)
            .sign(signer, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_relay_with_an_unendorsed_new_key_is_refused(tls_server: ServerProcess,
                                                     tmp_path: Path) -> None:
    pinned_cert = tls.load_chain(tls_server.db / "Resources" / "cert.pem")[0]
    k1 = tls.spki_fingerprint(pinned_cert)
    with Relay(tls_server.port) as relay:
        connect(relay.port).close()  # pins k1 under the relay's address
        cli("cert", str(tls_server.db), "rotate")
        reload(tls_server)
        genuine = (tls_server.db / "Resources" / "successor.pem").read_bytes()
        evil_key = tls.generate_key()
        # The attacker's key, with: nothing; the genuine endorsement (of another key)
        # replayed; an endorsement naming the pinned key but signed by its own key.
        forged = _forged(pinned_cert, evil_key, evil_key.public_key())
        for i, extra in enumerate((b"", genuine, forged, genuine + forged)):
            ctx, evil_fp = _mitm_context(tmp_path / f"mitm{i}", evil_key, extra)
            relay.mitm_context, relay.mode = ctx, "mitm"
            with pytest.raises(casemate.SecurityError) as e:
                connect(relay.port)
            assert e.value.code == "08P03"
            assert "not endorsed by the pinned key" in e.value.message
            assert k1 in e.value.message and evil_fp in e.value.message
            assert f"compare {evil_fp}" in (e.value.hint or "")
        assert not any(f.c2s for f in relay.flows if f.mode == "mitm")  # nothing was sent
        relay.mode = "transparent"  # the real server's endorsed key is still followed
        with connect(relay.port) as conn:
            assert conn.security.fingerprint == key_of(tls_server.db)


def test_rollback_to_the_retired_key_refused(tls_server: ServerProcess, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    db, res = tls_server.db, tls_server.db / "Resources"
    k1 = key_of(db)
    monkeypatch.setenv("CASEMATE_HOME", str(tmp_path / "stale-home"))
    connect(tls_server.port).close()  # a client that will sleep through the transition
    monkeypatch.setenv("CASEMATE_HOME", str(tmp_path / "home"))
    connect(tls_server.port).close()
    cli("cert", str(db), "rotate")
    reload(tls_server)
    k2 = key_of(db)
    connect(tls_server.port).close()  # followed: pinned to k2
    # The transition ends: the endorsement is 31 days old (as if rotated a month ago).
    old_key = tls.load_key(res / "key.pem.old")
    ended = continuity.make_endorsement(old_key, tls.load_key(res / "key.pem").public_key(), 30,
                                        issued=dt.datetime.now(dt.UTC) - dt.timedelta(days=31))
    (res / "successor.pem").write_bytes(ended.public_bytes(serialization.Encoding.PEM))
    # Rollback: the retired key and certificate come back (an attacker with the old files,
    # or an old backup restored).
    shutil.copy(res / "cert.pem", tmp_path / "cert-k2.pem")
    shutil.copy(res / "key.pem", tmp_path / "key-k2.pem")
    _put(res, res / "cert.pem.old", res / "key.pem.old")
    reload(tls_server)
    assert key_of(db) == k1
    with pytest.raises(casemate.SecurityError) as e:
        connect(tls_server.port)
    assert f"expected {k2}, got {k1}, not endorsed" in e.value.message
    # The client that slept through the whole transition, with the new key in service:
    # refused, told that its pin is older than the transition, and what to compare.
    _put(res, tmp_path / "cert-k2.pem", tmp_path / "key-k2.pem")
    reload(tls_server)
    monkeypatch.setenv("CASEMATE_HOME", str(tmp_path / "stale-home"))
    with pytest.raises(casemate.SecurityError) as e:
        connect(tls_server.port)
    assert f"expected {k1}, got {k2}" in e.value.message
    assert "transition ended on" in e.value.message and "older than it" in e.value.message
    assert f"compare {k2}" in (e.value.hint or "")


def _put(res: Path, cert: Path, key: Path) -> None:
    shutil.copy(cert, res / "cert.pem.tmp")
    (res / "cert.pem.tmp").replace(res / "cert.pem")
    (res / "key.pem").unlink()
    shutil.copy(key, res / "key.pem")
    (res / "key.pem").chmod(0o600)


def test_ca_issued_new_key_followed_and_ca_clients_unaffected(
        tls_server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tls_server.db
    k1 = key_of(db)
    connect(tls_server.port).close()
    ca_key, ca = _ca()
    out = cli("cert", str(db), "request", "--san", "127.0.0.1", "--san", "localhost").stdout
    assert "request.csr" in out
    csr = x509.load_pem_x509_csr((db / "Resources" / "request.csr").read_bytes())
    now = dt.datetime.now(dt.UTC)
    leaf = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(ca.subject)
            .public_key(csr.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=90))
            .add_extension(csr.extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value, critical=False)
            .sign(ca_key, hashes.SHA256()))
    signed = tmp_path / "signed.pem"
    signed.write_bytes(leaf.public_bytes(serialization.Encoding.PEM)
                       + ca.public_bytes(serialization.Encoding.PEM))
    out = cli("cert", str(db), "install", "--key", str(db / "Resources" / "request.key"),
              "--cert", str(signed)).stdout
    assert "vouches for the new one" in out
    reload(tls_server)
    k2 = key_of(db)
    assert k2 != k1
    with connect(tls_server.port) as conn:
        assert conn.security.fingerprint == k2 and conn.security.note
    # A client verifying against the CA is not confused by the endorsement in the chain.
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    monkeypatch.setenv("CASEMATE_HOME", str(tmp_path / "ca-home"))
    with connect(tls_server.port, tls_ca=str(ca_file)) as conn:
        assert conn.security.verified_by == "CA"


def test_rotate_no_endorse_keeps_the_refusal(tls_server: ServerProcess) -> None:
    connect(tls_server.port).close()
    out = cli("cert", str(tls_server.db), "rotate", "--no-endorse").stdout
    assert "vouches" not in out
    reload(tls_server)
    with pytest.raises(casemate.SecurityError, match="not endorsed by the pinned key") as e:
        connect(tls_server.port)
    assert re.match(rf"compare {key_of(tls_server.db)} with", e.value.hint or "")
    assert not (tls_server.db / "Resources" / "successor.pem").exists()


def test_shell_says_so_once(tls_server: ServerProcess) -> None:
    def shell() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "casemate", "shell", tls_server.url,
                               "-c", "SELECT 1;"], capture_output=True, text=True, timeout=60)
    assert shell().returncode == 0
    cli("cert", str(tls_server.db), "rotate")
    reload(tls_server)
    first, second = shell(), shell()
    assert first.returncode == 0 and "Note: the server's key changed" in first.stderr
    assert second.returncode == 0 and "Note:" not in second.stderr


def test_key_generated_on_the_web_page_is_followed(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    from tests.web import prepare_web_db, web_url
    from tests.web.test_web_http import Web
    server = server_factory(prepare_web_db(make_db, encrypted=True))
    connect(server.port).close()  # pinned
    k1 = key_of(server.db)
    web = Web(web_url(server), cafile=server.db / "Resources" / "cert.pem")
    web.login()
    assert web.post("/certificate/generate", {"csrf": web.csrf("/certificate")}).status == 303
    with connect(server.port) as conn:
        assert conn.security.fingerprint == key_of(server.db) != k1
        assert conn.security.verified_by == "pinned key's endorsed successor"
