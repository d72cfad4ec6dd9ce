"""``casemate cert DIR show|generate|request|install``, run as the administrator would."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from casemate import tls


def _run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "casemate", *map(str, argv)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def _cert_cli(db: Path, sub: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """``casemate cert DIR SUB ARGS``, the documented order."""
    return _run("cert", db, sub, *args)


def _files(db: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((db / "Resources").iterdir()) if p.is_file()}


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _cert(subject: str, key: Any, issuer: str | None = None, issuer_key: Any = None, *,
          ca: bool = False, past: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    start, end = ((now - dt.timedelta(days=60), now - dt.timedelta(days=1)) if past
                  else (now - dt.timedelta(minutes=5), now + dt.timedelta(days=90)))
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or subject)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(end)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(subject), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


def _chain(tmp: Path) -> dict[str, Any]:
    """root CA -> intermediate CA -> leaf, with the leaf's key written to tmp/leaf.key."""
    root_key, inter_key, leaf_key = tls.generate_key(), tls.generate_key(), tls.generate_key()
    root = _cert("Test Root CA", root_key, ca=True)
    inter = _cert("Test Intermediate CA", inter_key, "Test Root CA", root_key, ca=True)
    leaf = _cert("db.example.test", leaf_key, "Test Intermediate CA", inter_key)
    key_file = tmp / "leaf.key"
    tls.write_key(key_file, leaf_key)
    return {"root": root, "root_key": root_key, "inter": inter, "inter_key": inter_key,
            "leaf": leaf, "leaf_key": leaf_key, "key_file": key_file}


# -- show ------------------------------------------------------------------------------
def test_show_describes_the_certificate(make_db) -> None:  # type: ignore[no-untyped-def]
    db = make_db(name="Acme Ledger")
    cert = x509.load_pem_x509_certificate((db / "Resources" / "cert.pem").read_bytes())
    proc = _cert_cli(db, "show")
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "Subject:        CN=Acme Ledger\n" in out
    assert "(self-signed)" in out
    sans = next(line for line in out.splitlines() if line.startswith("SANs:"))
    for name in ("localhost", "127.0.0.1", "::1"):
        assert name in sans
    valid = next(line for line in out.splitlines() if line.startswith("Valid:"))
    assert f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}" in valid
    assert "Key:            ECDSA secp256r1\n" in out
    assert f"SHA-256:        {tls.cert_fingerprint(cert)}\n" in out
    assert f"Key SHA-256:    {tls.spki_fingerprint(cert)}" in out
    assert "PROBLEM" not in out


def test_show_reports_a_mismatched_pair(make_db) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    other = tls.generate_key()
    (db / "Resources" / "cert.pem").write_bytes(_pem(_cert("other", other)))
    proc = _cert_cli(db, "show")
    assert proc.returncode != 0
    assert "Subject:        CN=other" in proc.stdout
    assert "PROBLEM:" in proc.stdout and "does not match certificate" in proc.stdout


# -- generate --------------------------------------------------------------------------
def test_generate_needs_force_and_limits_days(make_db) -> None:  # type: ignore[no-untyped-def]
    db = make_db(name="Acme Ledger")
    res = db / "Resources"
    before = _files(db)

    proc = _cert_cli(db, "generate")
    assert proc.returncode != 0
    assert "exists; pass --keep-key" in proc.stderr and "--force to replace both" in proc.stderr
    assert _files(db) == before

    proc = _cert_cli(db, "generate", "--force", "--days", "400")
    assert proc.returncode != 0
    assert "'--days': 400 is not in the range 1<=x<=366" in proc.stderr
    assert _files(db) == before

    proc = _cert_cli(db, "generate", "--force", "--days", "30")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "New self-signed certificate installed" in proc.stdout
    new = x509.load_pem_x509_certificate((res / "cert.pem").read_bytes())
    assert new.not_valid_after_utc - new.not_valid_before_utc <= dt.timedelta(days=30, hours=1)
    assert new.not_valid_after_utc - new.not_valid_before_utc >= dt.timedelta(days=30)
    assert new.subject.rfc4514_string() == "CN=Acme Ledger"
    assert (res / "cert.pem").read_bytes() != before["cert.pem"]
    assert (res / "key.pem").read_bytes() != before["key.pem"]
    assert stat.S_IMODE((res / "key.pem").stat().st_mode) == 0o600
    # The old pair is kept aside, and the new one is a valid pair.
    assert (res / "cert.pem.old").read_bytes() == before["cert.pem"]
    assert (res / "key.pem.old").read_bytes() == before["key.pem"]
    tls.check_pair(res / "key.pem", res / "cert.pem")
    assert f"SHA-256:        {tls.cert_fingerprint(new)}" in proc.stdout


# -- request ---------------------------------------------------------------------------
def test_request_writes_a_private_key_and_a_valid_csr(make_db) -> None:  # type: ignore[no-untyped-def]
    db = make_db(name="Acme Ledger")
    res = db / "Resources"
    before = _files(db)
    proc = _cert_cli(db, "request", "--san", "db.example.test", "--san", "10.0.0.7")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    key_path, csr_path = res / "request.key", res / "request.csr"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=Acme Ledger"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["db.example.test"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert (key.public_key().public_bytes(serialization.Encoding.DER, spki)
            == csr.public_key().public_bytes(serialization.Encoding.DER, spki))
    # The key and certificate in service are untouched.
    assert {k: v for k, v in _files(db).items() if k in before} == before
    # A second request does not overwrite the pending key.
    again = _cert_cli(db, "request")
    assert again.returncode != 0
    assert "exists; install or remove the pending request first" in again.stderr
    assert key_path.read_bytes() == key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


# -- install ---------------------------------------------------------------------------
def _refused(db: Path, key: Path, cert: Path, fragment: str) -> None:
    before = _files(db)
    proc = _cert_cli(db, "install", "--key", key, "--cert", cert)
    assert proc.returncode != 0, proc.stdout
    assert proc.stderr.startswith("error: not installed: "), proc.stderr
    assert fragment in proc.stderr, proc.stderr
    assert _files(db) == before


def test_install_refuses_a_mismatched_pair(make_db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    c = _chain(tmp_path)
    cert = tmp_path / "other.pem"
    cert.write_bytes(_pem(_cert("other", tls.generate_key())))
    _refused(db, c["key_file"], cert,
             f"private key {c['key_file']} does not match certificate {cert}")


def test_install_refuses_an_expired_certificate(make_db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    key = tls.generate_key()
    key_file, cert_file = tmp_path / "old.key", tmp_path / "old.pem"
    tls.write_key(key_file, key)
    expired = _cert("old", key, past=True)
    cert_file.write_bytes(_pem(expired))
    _refused(db, key_file, cert_file,
             f"certificate in {cert_file} expired on {expired.not_valid_after_utc:%Y-%m-%d}")


def test_install_refuses_a_chain_out_of_order(make_db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    c = _chain(tmp_path)
    cert = tmp_path / "misordered.pem"
    cert.write_bytes(_pem(c["leaf"], c["root"], c["inter"]))
    _refused(db, c["key_file"], cert, f"chain in {cert} is out of order")


def test_install_refuses_a_chain_with_the_ca_first(make_db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The leaf is in the file but not first: the message must say so, not 'different key pairs'."""
    db = make_db()
    c = _chain(tmp_path)
    cert = tmp_path / "ca-first.pem"
    cert.write_bytes(_pem(c["inter"], c["leaf"]))
    _refused(db, c["key_file"], cert, "out of order")


def test_install_accepts_a_leaf_with_its_chain(make_db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    res = db / "Resources"
    before = _files(db)
    assert ".generated-cert" in before
    c = _chain(tmp_path)
    cert = tmp_path / "chain.pem"
    cert.write_bytes(_pem(c["leaf"], c["inter"], c["root"]))
    proc = _cert_cli(db, "install", "--key", c["key_file"], "--cert", cert)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Installed:" in proc.stdout
    assert "CN=db.example.test" in proc.stdout
    assert (res / "cert.pem").read_bytes() == cert.read_bytes()
    assert (res / "key.pem").read_bytes() == c["key_file"].read_bytes()
    assert stat.S_IMODE((res / "key.pem").stat().st_mode) == 0o600
    assert not (res / ".generated-cert").exists()  # no longer self-generated: never auto-renewed
    assert (res / "cert.pem.old").read_bytes() == before["cert.pem"]
    assert (res / "key.pem.old").read_bytes() == before["key.pem"]
    chain, _ = tls.check_pair(res / "key.pem", res / "cert.pem")
    assert [x.subject for x in chain] == [c["leaf"].subject, c["inter"].subject, c["root"].subject]


def test_request_then_install_the_signed_certificate(make_db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = make_db(name="Acme Ledger")
    res = db / "Resources"
    assert _cert_cli(db, "request", "--san", "db.example.test").returncode == 0
    csr = x509.load_pem_x509_csr((res / "request.csr").read_bytes())
    ca_key = tls.generate_key()
    ca = _cert("Test CA", ca_key, ca=True)
    now = dt.datetime.now(dt.UTC)
    signed = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(ca.subject)
              .public_key(csr.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5))
              .not_valid_after(now + dt.timedelta(days=90))
              .add_extension(csr.extensions.get_extension_for_class(
                  x509.SubjectAlternativeName).value, critical=False)
              .sign(ca_key, hashes.SHA256()))
    cert = tmp_path / "signed.pem"
    cert.write_bytes(_pem(signed, ca))
    proc = _cert_cli(db, "install", "--key", res / "request.key", "--cert", cert)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning" not in proc.stdout.lower()
    assert (res / "cert.pem").read_bytes() == cert.read_bytes()
    tls.check_pair(res / "key.pem", res / "cert.pem")


@pytest.mark.parametrize("sub", ["show", "generate", "request"])
def test_cert_commands_refuse_a_folder_that_is_not_a_database(tmp_path: Path, sub: str) -> None:
    proc = _cert_cli(tmp_path / "nothing-here", sub)
    assert proc.returncode != 0
    assert "is not a Casemate database" in proc.stderr
    assert not (tmp_path / "nothing-here").exists()


def test_documented_argument_order(make_db) -> None:  # type: ignore[no-untyped-def]
    """README, tls.py and the client's key-mismatch hint all say ``casemate cert DIR show``."""
    db = make_db(name="Acme Ledger")
    proc = _run("cert", db, "show")
    assert proc.returncode == 0, proc.stderr
    assert "Subject:        CN=Acme Ledger" in proc.stdout


def _weak_pair(tmp: Path, key: Any, name: str) -> tuple[Path, Path]:
    key_file, cert_file = tmp / f"{name}.key", tmp / f"{name}.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    cert_file.write_bytes(_pem(_cert("localhost", key)))
    return key_file, cert_file


WEAK_KEYS = {
    "rsa1024": lambda: rsa.generate_private_key(65537, 1024),
    "p192": lambda: ec.generate_private_key(ec.SECP192R1()),
}


@pytest.mark.parametrize("kind", sorted(WEAK_KEYS))
def test_weak_keys_are_refused_by_install_show_start_and_reload(
        make_db, server_factory, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    """The same check everywhere: Casemate's floor (RSA-2048, P-256) and OpenSSL's level."""
    db = make_db(encrypted=True)
    key_file, cert_file = _weak_pair(tmp_path, WEAK_KEYS[kind](), kind)
    before = _files(db)
    r = _cert_cli(db, "install", "--key", key_file, "--cert", cert_file)
    assert r.returncode != 0 and "not installed" in r.stderr and "key" in r.stderr, r
    assert _files(db) == before
    server = server_factory(db)  # a good pair in service, then the weak one copied in
    (db / "Resources" / "key.pem").unlink()
    (db / "Resources" / "cert.pem").write_bytes(cert_file.read_bytes())
    (db / "Resources" / "key.pem").write_bytes(key_file.read_bytes())
    (db / "Resources" / "key.pem").chmod(0o600)
    r = _cert_cli(db, "show")
    assert r.returncode == 1 and "PROBLEM" in r.stdout, r
    r = _cert_cli(db, "reload")
    assert r.returncode == 0, r
    log = db / "Logs" / "server.log"
    deadline = time.monotonic() + 10
    while "certificate reload failed" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "certificate reload failed" in log.read_text()
    with server.connect() as conn:  # still serving with the good certificate
        assert conn.execute("SELECT 1").fetchone() == (1,)
    server.stop()
    r = _run("serve", db, "--port", "0")
    assert r.returncode == 2 and "key" in r.stderr, r.stderr


def test_openssl_level_is_checked_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pair within Casemate's floor that the server's OpenSSL context still refuses
    (here: a context at security level 4, which wants 192-bit keys) is refused by check_pair."""
    key_file, cert_file = _weak_pair(tmp_path, rsa.generate_private_key(65537, 2048), "rsa2048")
    tls.check_pair(key_file, cert_file)
    base = tls._server_base_context

    def strict() -> Any:
        ctx = base()
        ctx.set_ciphers(tls.TLS12_CIPHERS + ":@SECLEVEL=4")
        return ctx
    monkeypatch.setattr(tls, "_server_base_context", strict)
    with pytest.raises(tls.CertificateError, match="security level 4"):
        tls.check_pair(key_file, cert_file)
