"""require_client_certificate: only clients with a certificate from Resources/client-ca.pem get in."""

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

import casemate
from casemate import tls
from tests.conftest import set_setting


def _ca() -> tuple[Any, x509.Certificate]:
    key = tls.generate_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Client CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _client_cert(tmp: Path, ca_key: Any, ca_cert: x509.Certificate, cn: str) -> tuple[Path, Path]:
    key = tls.generate_key()
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(ca_key, hashes.SHA256()))
    kp, cp = tmp / f"{cn}.key", tmp / f"{cn}.pem"
    tls.write_key(kp, key)
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return kp, cp


def test_client_certificate_required(make_db, server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = make_db(encrypted=True)
    set_setting(db, "require_client_certificate", "true")
    ca_key, ca_cert = _ca()
    pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    (db / "Resources" / "client-ca.pem").write_bytes(pem)
    server = server_factory(db)
    key, cert = _client_cert(tmp_path, ca_key, ca_cert, "workstation-7")
    with server.connect(tls_cert=str(cert), tls_key=str(key)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # Without a certificate the handshake is refused, and never retried in plaintext.
    with pytest.raises(casemate.OperationalError):
        server.connect()
    # A certificate from another CA is refused too.
    other_key, other_ca = _ca()
    k2, c2 = _client_cert(tmp_path, other_key, other_ca, "intruder")
    with pytest.raises(casemate.OperationalError):
        server.connect(tls_cert=str(c2), tls_key=str(k2))
    assert "CN=workstation-7" in server.log()


def test_client_ca_missing_stops_server(make_db) -> None:  # type: ignore[no-untyped-def]
    db = make_db(encrypted=True)
    set_setting(db, "require_client_certificate", "true")
    r = subprocess.run([sys.executable, "-m", "casemate", "serve", str(db), "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "client-ca.pem is missing" in r.stderr
