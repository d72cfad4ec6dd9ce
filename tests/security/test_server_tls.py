"""The encrypted server seen from outside: openssl, sslyze, fail-closed start, generation, rotation.

Every test runs a real ``casemate serve`` process on 127.0.0.1, port 0.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import casemate
from casemate import tls
from tests.conftest import set_setting

pytestmark = pytest.mark.filterwarnings(
    # sslyze's bundled trust stores hold a certificate with a negative serial number.
    "ignore::cryptography.utils.CryptographyDeprecationWarning")


# -- helpers ------------------------------------------------------------------
def _key_path(db: Path) -> Path:
    return db / "Resources" / "key.pem"


def _cert_path(db: Path) -> Path:
    return db / "Resources" / "cert.pem"


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _self_signed(cn: str, *, days: int = 30, past: bool = False) -> tuple[Any, x509.Certificate]:
    """A new P-256 key and a self-signed certificate (expired if ``past``)."""
    key = tls.generate_key()
    now = dt.datetime.now(dt.UTC)
    if past:
        start, end = now - dt.timedelta(days=60), now - dt.timedelta(days=1)
    else:
        start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _replace_files(db: Path, tmp: Path, key: Any, cert: x509.Certificate) -> None:
    """Install ``key``/``cert`` into db/Resources atomically (rename over the old files)."""
    k, c = tmp / "new-key.pem", tmp / "new-cert.pem"
    k.unlink(missing_ok=True)
    tls.write_key(k, key)
    tls.write_cert(c, cert)
    os.replace(k, _key_path(db))
    os.replace(c, _cert_path(db))


def _served_cert(port: int) -> x509.Certificate:
    """The certificate the server presents to a brand-new TLS client (no session reuse)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([tls.ALPN])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _wait_for(server: Any, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in server.log():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the server log within {timeout} s:\n{server.log()}")


def _serve_fails(db: Path) -> subprocess.CompletedProcess[str]:
    """Run ``casemate serve`` on ``db``; it must exit on its own (not listen)."""
    proc = subprocess.run(
        [sys.executable, "-m", "casemate", "serve", str(db), "--port", "0"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "listening on" not in out, out
    assert "The server did not start" in proc.stderr, out
    assert "never falls back to plaintext" in proc.stderr, out
    return proc


# -- openssl s_client -----------------------------------------------------------
def test_openssl_s_client_sees_tls13_alpn_and_the_database_certificate(tls_server) -> None:  # type: ignore[no-untyped-def]
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    proc = subprocess.run(
        [openssl, "s_client", "-connect", f"127.0.0.1:{tls_server.port}",
         "-alpn", tls.ALPN, "-servername", "localhost"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = re.search(r"New, (TLSv[\d.]+), Cipher is (\S+)", out)
    assert m is not None, out
    assert m.group(1) == "TLSv1.3"
    assert re.search(r"(?m)^ALPN protocol: casemate/1$", out), out
    assert re.search(r"(?m)^Compression: NONE$", out), out
    pem = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", out, re.S)
    assert pem is not None, out
    served = x509.load_pem_x509_certificate(pem.group(0).encode())
    on_disk = _load_cert(_cert_path(tls_server.db))
    assert served.subject == on_disk.subject
    assert served.fingerprint(hashes.SHA256()) == on_disk.fingerprint(hashes.SHA256())


# -- sslyze -----------------------------------------------------------------------
def _sslyze(port: int, commands: set[Any]) -> Any:
    from sslyze import (
        Scanner,
        ServerNetworkLocation,
        ServerScanRequest,
        ServerScanStatusEnum,
    )
    request = ServerScanRequest(
        server_location=ServerNetworkLocation(hostname="localhost", port=port,
                                              ip_address="127.0.0.1"),
        scan_commands=commands)
    scanner = Scanner()
    scanner.queue_scans([request])
    results = list(scanner.get_results())
    assert len(results) == 1
    r = results[0]
    assert r.scan_status == ServerScanStatusEnum.COMPLETED, r.connectivity_error_trace
    return r


def _completed(attempt: Any) -> Any:
    from sslyze import ScanCommandAttemptStatusEnum
    assert attempt.status == ScanCommandAttemptStatusEnum.COMPLETED, (
        attempt.error_reason, attempt.error_trace)
    return attempt.result


@pytest.fixture(scope="module")
def sslyze_available() -> None:
    pytest.importorskip("sslyze")


def test_sslyze_protocols_suites_and_vulnerabilities(tls_server, sslyze_available) -> None:  # type: ignore[no-untyped-def]
    from sslyze.mozilla_tls_profile.tls_config_checker import (
        SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    )
    r = _sslyze(tls_server.port, set(SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER))
    res = r.scan_result
    for name in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"):
        scan = _completed(getattr(res, f"{name}_cipher_suites"))
        assert not scan.is_tls_version_supported, name
        assert scan.accepted_cipher_suites == [], name
    tls12 = _completed(res.tls_1_2_cipher_suites)
    assert tls12.is_tls_version_supported
    names12 = [c.cipher_suite.name for c in tls12.accepted_cipher_suites]
    assert names12
    for n in names12:
        assert n.startswith("TLS_ECDHE_"), n
        assert "_GCM_" in n or n.endswith("_CHACHA20_POLY1305_SHA256"), n
    tls13 = _completed(res.tls_1_3_cipher_suites)
    assert tls13.is_tls_version_supported
    assert tls13.accepted_cipher_suites
    assert not _completed(res.tls_compression).supports_compression
    reneg = _completed(res.session_renegotiation)
    assert reneg.supports_secure_renegotiation
    assert not reneg.is_vulnerable_to_client_renegotiation_dos
    assert _completed(res.tls_fallback_scsv).supports_fallback_scsv
    assert not _completed(res.heartbleed).is_vulnerable_to_heartbleed
    assert not _completed(res.openssl_ccs_injection).is_vulnerable_to_ccs_injection


def test_sslyze_mozilla_intermediate_profile(tls_server, sslyze_available) -> None:  # type: ignore[no-untyped-def]
    """Mozilla's intermediate profile passes, except trust in the self-signed certificate."""
    from sslyze.mozilla_tls_profile.tls_config_checker import (
        SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
        MozillaTlsConfiguration,
        ServerNotCompliantWithTlsConfiguration,
        TlsConfigurationEnum,
        check_server_against_tls_configuration,
    )
    r = _sslyze(tls_server.port, set(SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER))
    profile = MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
    try:
        check_server_against_tls_configuration(r, profile)
        issues: dict[str, str] = {}
    except ServerNotCompliantWithTlsConfiguration as e:
        issues = dict(e.issues)
    # A self-signed certificate cannot chain to a public root: expected, and the only issue.
    issues.pop("certificate_path_validation", None)
    assert issues == {}


def test_min_tls_version_13_rejects_tls12(make_db, server_factory, sslyze_available) -> None:  # type: ignore[no-untyped-def]
    from sslyze import ScanCommand
    db = make_db(encrypted=True)
    set_setting(db, "min_tls_version", '"1.3"')
    server = server_factory(db)
    assert "TLS 1.3 minimum" in server.log()
    r = _sslyze(server.port, {ScanCommand.TLS_1_2_CIPHER_SUITES, ScanCommand.TLS_1_3_CIPHER_SUITES})
    tls12 = _completed(r.scan_result.tls_1_2_cipher_suites)
    assert not tls12.is_tls_version_supported
    assert tls12.accepted_cipher_suites == []
    assert _completed(r.scan_result.tls_1_3_cipher_suites).is_tls_version_supported
    with server.connect() as conn:
        assert conn.security.tls_version == "TLSv1.3"


# -- fail closed at start -----------------------------------------------------------
def _no_key(db: Path) -> str:
    _key_path(db).unlink()
    return f"private key {_key_path(db)} is missing"


def _no_cert(db: Path) -> str:
    _cert_path(db).unlink()
    return f"certificate {_cert_path(db)} is missing"


def _unreadable_key(db: Path) -> str:
    # Tests run as root, for whom chmod 000 does not stop reading: a directory cannot be read.
    _key_path(db).unlink()
    _key_path(db).mkdir()
    return f"private key {_key_path(db)} cannot be read"


def _garbage_key(db: Path) -> str:
    _key_path(db).write_bytes(b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    return f"private key {_key_path(db)} is not a valid PEM private key"


def _garbage_cert(db: Path) -> str:
    _cert_path(db).write_bytes(b"this is not a certificate\n")
    return f"certificate {_cert_path(db)} is not a valid PEM certificate"


def _mismatched(db: Path) -> str:
    _, other = _self_signed("someone else")
    tls.write_cert(_cert_path(db), other)
    return f"private key {_key_path(db)} does not match certificate {_cert_path(db)}"


def _expired(db: Path) -> str:
    key, cert = _self_signed("expired", past=True)
    _key_path(db).unlink()
    tls.write_key(_key_path(db), key)
    tls.write_cert(_cert_path(db), cert)
    return f"certificate in {_cert_path(db)} expired on {cert.not_valid_after_utc:%Y-%m-%d}"


@pytest.mark.parametrize("damage", [_no_key, _no_cert, _unreadable_key, _garbage_key,
                                    _garbage_cert, _mismatched, _expired],
                         ids=lambda f: f.__name__.strip("_"))
def test_bad_key_or_certificate_fails_closed(make_db, damage: Callable[[Path], str]) -> None:  # type: ignore[no-untyped-def]
    db = make_db(encrypted=True)
    expected = damage(db)
    before = {p.name: p.read_bytes() for p in (db / "Resources").iterdir() if p.is_file()}
    proc = _serve_fails(db)
    assert expected in proc.stderr
    assert proc.stderr.startswith("error: cannot start encrypted: ")
    # Nothing was generated or rewritten to "repair" the folder.
    after = {p.name: p.read_bytes() for p in (db / "Resources").iterdir() if p.is_file()}
    assert after == before


def test_world_readable_key_gives_a_warning(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db(encrypted=True)
    _key_path(db).chmod(0o644)
    server = server_factory(db)
    assert server.mode == "encrypted"
    log = server.log()
    assert re.search(r"WARNING casemate\.server: private key \S*key\.pem is readable by group or "
                     r"others \(mode 644\); run: chmod 600 ", log), log
    with server.connect() as conn:
        assert conn.security.encrypted


# -- generation -----------------------------------------------------------------------
def test_missing_key_and_cert_are_generated_and_never_overwritten(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db(encrypted=True, name="Acme Ledger")
    _key_path(db).unlink()
    _cert_path(db).unlink()
    server = server_factory(db)
    assert "generated a key pair and self-signed certificate" in server.log()
    assert stat.S_IMODE(_key_path(db).stat().st_mode) == 0o600
    cert = _load_cert(_cert_path(db))
    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert isinstance(pub.curve, ec.SECP256R1)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cns] == ["Acme Ledger"]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    ips = san.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("127.0.0.1") in ips
    assert ipaddress.ip_address("::1") in ips
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(days=366)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert b"casemate" not in der.lower()
    assert casemate.__version__.encode() not in der
    # The key in key.pem is the one in the certificate, and it is what the server serves.
    key = serialization.load_pem_private_key(_key_path(db).read_bytes(), None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert (key.public_key().public_bytes(serialization.Encoding.DER, spki)
            == pub.public_bytes(serialization.Encoding.DER, spki))
    assert _served_cert(server.port) == cert

    # A restart keeps the files exactly as they are.
    files = (_key_path(db), _cert_path(db))
    snapshot = [(p.read_bytes(), p.stat().st_mtime_ns) for p in files]
    server.stop()
    server2 = server_factory(db)
    assert [(p.read_bytes(), p.stat().st_mtime_ns) for p in files] == snapshot
    assert "generated a key pair" not in server2.log()
    assert _served_cert(server2.port) == cert


# -- rotation (SIGHUP) -----------------------------------------------------------------
def test_sighup_rotates_for_new_clients_and_refuses_a_bad_reload(  # type: ignore[no-untyped-def]
        make_db, server_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = make_db(encrypted=True)
    server = server_factory(db)
    old_cert = _load_cert(_cert_path(db))
    assert _served_cert(server.port) == old_cert
    with server.connect() as before:  # pins the old key in this CASEMATE_HOME
        assert before.security.fingerprint == tls.spki_fingerprint(old_cert)

        new_key, new_cert = _self_signed("rotated")
        _replace_files(db, tmp_path, new_key, new_cert)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        _wait_for(server, "certificate reloaded: CN=rotated")

        # The connection opened before the reload keeps working.
        assert before.execute("SELECT 1").fetchone() == (1,)
        # New clients get the new certificate.
        assert _served_cert(server.port) == new_cert
        ca = tmp_path / "new-ca.pem"
        tls.write_cert(ca, new_cert)
        with server.connect(tls_ca=str(ca)) as fresh:
            assert fresh.security.level == "encrypted-verified"
            assert fresh.security.fingerprint == tls.spki_fingerprint(new_cert)
        monkeypatch.setenv("CASEMATE_HOME", str(tmp_path / "other-home"))
        with server.connect() as fresh_home:
            assert fresh_home.security.fingerprint == tls.spki_fingerprint(new_cert)

        # A bad file: the reload is refused and the current certificate stays in service.
        _cert_path(db).write_bytes(b"garbage\n")
        server.proc.send_signal(signal.SIGHUP)
        _wait_for(server, "certificate reload failed")
        assert "keeping the current certificate" in server.log()
        assert str(_cert_path(db)) in server.log()
        assert server.proc.poll() is None
        assert _served_cert(server.port) == new_cert
        with server.connect(tls_ca=str(ca)) as again:
            assert again.execute("SELECT 2").fetchone() == (2,)
        assert before.execute("SELECT 3").fetchone() == (3,)


# -- settings change while running --------------------------------------------------------
def test_settings_change_is_logged_while_running(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db(encrypted=True)
    server = server_factory(db)
    assert "settings changed" not in server.log()
    set_setting(db, "max_sessions", "999")
    _wait_for(server, "settings changed: restart the server to apply", timeout=6)
    with server.connect() as conn:  # still serving with the settings it started with
        assert conn.execute("SELECT 1").fetchone() == (1,)
