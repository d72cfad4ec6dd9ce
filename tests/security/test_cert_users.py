"""Client certificates that name users: [auth] method, the map file, the revocation list.

Real server, real blocking and asyncio clients; certificates made in the test.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

import casemate
import casemate.aio
from casemate import tls
from casemate.database import make_verifier
from casemate.testing import ADMIN_PASSWORD, ServerProcess
from tests.conftest import set_setting

from .test_client_cert import _ca

MAP = """\
# CERT-NAME              USER
CN=alice-laptop          alice
email:bob@example.com    bob
/^CN=(.*)-kiosk$         \\1
"""


def _cert(tmp: Path, ca_key: Any, ca: x509.Certificate, cn: str,
          email: str | None = None) -> tuple[str, str, int]:
    key = tls.generate_key()
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(ca.subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=9)))
    if email:
        b = b.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    kp, cp = tmp / f"{cn}.key", tmp / f"{cn}.pem"
    tls.write_key(kp, key)
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(cp), str(kp), cert.serial_number


def _crl(ca_key: Any, ca: x509.Certificate, serials: list[int]) -> bytes:
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
         .last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=7)))
    for s in serials:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(s)
                                      .revocation_date(now - dt.timedelta(minutes=1)).build())
    return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _auth(db: Path, lines: str) -> None:
    p = db / "casemate.toml"
    text = p.read_text()
    assert text.count('\nmethod = "scram"\n') == 1
    p.write_text(text.replace('\nmethod = "scram"\n', "\n" + lines + "\n"))


@pytest.fixture
def setup(make_db, server_factory, tmp_path: Path) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    db = make_db(encrypted=True)
    set_setting(db, "require_client_certificate", "true")
    _auth(db, 'method = "scram"\nusers = { alice = "certificate", carol = "certificate", '
              'bob = "certificate+scram" }')
    set_setting(db, "certificate_names", '"map"')
    (db / "Resources" / "client-users.conf").write_text(MAP)
    ca_key, ca = _ca()
    (db / "Resources" / "client-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server: ServerProcess = server_factory(db)
    certs = {cn: _cert(tmp_path, ca_key, ca, cn, email) for cn, email in (
        ("alice-laptop", None), ("mallory-laptop", None), ("bob-phone", "bob@example.com"),
        ("carol-kiosk", None), ("admin-desk", None))}
    admin = _connect(server, "admin", certs["admin-desk"], ADMIN_PASSWORD)
    for name in ("alice", "bob", "carol", "mallory"):
        rec = make_verifier(name, f"{name}-pw", "readwrite")
        admin.admin("user_add", name=name, group="readwrite",
                    verifier=[rec.salt, rec.stored_key, rec.server_key, rec.iterations])
    return {"db": db, "server": server, "certs": certs, "admin": admin, "ca": (ca_key, ca)}


def _connect(server: ServerProcess, user: str, cert: tuple[str, str, int],
             password: str | None = None, **kw: Any) -> casemate.Connection:
    kw.setdefault("tls_ca", str(server.db / "Resources" / "cert.pem"))
    return casemate.connect(host="127.0.0.1", port=server.port, user=user, password=password,
                            tls_cert=cert[0], tls_key=cert[1], reconnect_attempts=0, **kw)


def test_certificate_only_login_for_a_mapped_user(setup: dict[str, Any]) -> None:
    server, certs, admin = setup["server"], setup["certs"], setup["admin"]
    with _connect(server, "alice", certs["alice-laptop"]) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        cols, rows = admin.admin_table("sessions")
        mine = [dict(zip(cols, r, strict=True)) for r in rows
                if r[cols.index("user")] == "alice"]
        assert mine[0]["authenticated_by"] == "certificate CN=alice-laptop"
    # A regular expression rule: CN=carol-kiosk names carol.
    with _connect(server, "carol", certs["carol-kiosk"]) as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)
    cols, rows = admin.admin_table("sessions")
    by_user = {r[cols.index("user")]: r[cols.index("authenticated_by")] for r in rows}
    assert by_user["admin"] == "password"


def test_asyncio_client_certificate_only(setup: dict[str, Any]) -> None:
    server, certs = setup["server"], setup["certs"]

    async def main() -> Any:
        conn = await casemate.aio.connect(
            host="127.0.0.1", port=server.port, user="alice", tls_cert=certs["alice-laptop"][0],
            tls_key=certs["alice-laptop"][1], tls_ca=str(server.db / "Resources" / "cert.pem"))
        try:
            return await conn.fetch("SELECT 3")
        finally:
            await conn.close()
    assert asyncio.run(main()) == [(3,)]


def test_unmapped_certificate_refused(setup: dict[str, Any]) -> None:
    server, certs = setup["server"], setup["certs"]
    for user, cert, password in (
            ("alice", "mallory-laptop", None),        # names mallory... nobody: unmapped
            ("alice", "mallory-laptop", "alice-pw"),  # the password does not replace it
            ("alice", "bob-phone", None),             # another user's certificate
            ("bob", "bob-phone", None),               # certificate+scram: password needed too
            ("bob", "alice-laptop", "bob-pw"),        # right password, wrong certificate
            ("mallory", "mallory-laptop", None),      # a scram user: no certificate-only login
            ("nobody", "alice-laptop", None)):
        with pytest.raises(casemate.OperationalError) as e:
            _connect(server, user, certs[cert], password)
        assert e.value.code == "28000", (user, cert, e.value)
        assert "certificate authentication failed" in e.value.message
    with _connect(server, "bob", certs["bob-phone"], "bob-pw") as conn:  # both: accepted
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert "the client certificate does not name this user" in server.log()


def test_certificate_only_needs_a_trusted_server_key(setup: dict[str, Any], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    server, certs = setup["server"], setup["certs"]
    monkeypatch.setenv("CASEMATE_HOME", str(tmp_path / "never-met"))  # no pin, no CA
    with pytest.raises(casemate.SecurityError, match="first contact"):
        _connect(server, "alice", certs["alice-laptop"], tls_ca=None)


def test_revoked_certificate_refused_after_reload(setup: dict[str, Any]) -> None:
    db, server, certs = setup["db"], setup["server"], setup["certs"]
    ca_key, ca = setup["ca"]
    (db / "Resources" / "client-crl.pem").write_bytes(
        _crl(ca_key, ca, [certs["alice-laptop"][2]]))
    server.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while "certificate reloaded" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(casemate.OperationalError):
        _connect(server, "alice", certs["alice-laptop"])
    with _connect(server, "carol", certs["carol-kiosk"]) as conn:  # not revoked: still in
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_common_name_is_the_user_name(make_db, server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = make_db(encrypted=True)
    set_setting(db, "require_client_certificate", "true")
    _auth(db, 'method = "certificate"')
    ca_key, ca = _ca()
    (db / "Resources" / "client-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server = server_factory(db)
    with _connect(server, "admin", _cert(tmp_path, ca_key, ca, "admin")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(casemate.OperationalError):
        _connect(server, "admin", _cert(tmp_path, ca_key, ca, "administrator"))


def test_certificate_methods_need_client_certificates(make_db) -> None:  # type: ignore[no-untyped-def]
    from casemate.settings import SettingsError, load_settings
    db = make_db(encrypted=True)
    _auth(db, 'method = "certificate+scram"')
    with pytest.raises(SettingsError, match="require_client_certificate"):
        load_settings(db / "casemate.toml")


def test_revocation_list_missing_a_client_ca_stops_the_start(make_db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys
    db = make_db(encrypted=True)
    set_setting(db, "require_client_certificate", "true")
    ca_key, ca = _ca()
    other_key = tls.generate_key()
    other = tls.make_self_signed(other_key, "Branch Office CA", [])  # a second client CA
    (db / "Resources" / "client-ca.pem").write_bytes(
        ca.public_bytes(serialization.Encoding.PEM) + other.public_bytes(serialization.Encoding.PEM))
    (db / "Resources" / "client-crl.pem").write_bytes(_crl(ca_key, ca, []))
    r = subprocess.run([sys.executable, "-m", "casemate", "serve", str(db), "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "has no CRL of CN=Branch Office CA" in r.stderr


def test_web_page_refuses_a_user_bound_to_a_certificate(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    from tests.web import web_url
    from tests.web.test_web_http import Web, audit_events
    db = make_db(encrypted=True)
    set_setting(db, "require_client_certificate", "true")
    set_setting(db, "enabled", "true")
    _auth(db, 'method = "scram"\nusers = { admin = "certificate" }')
    _, ca = _ca()
    (db / "Resources" / "client-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server = server_factory(db)
    web = Web(web_url(server), cafile=db / "Resources" / "cert.pem")
    r = web.login()  # the right password, but admin logs in with a certificate only
    assert r.status == 401 and "Wrong user name or password." in r.text and not web.token
    assert any(e.get("reason") == "auth method needs a client certificate"
               for e in audit_events(db) if e["event"] == "login_failed")
