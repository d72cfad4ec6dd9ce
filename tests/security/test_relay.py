"""Encryption under attack: recording, certificate-swapping and stripping relays, CA checks,
downgrades, raw clients, and a server switched between plain and encrypted."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from pathlib import Path

import pytest
from cryptography import x509

import casemate
from casemate import tls
from casemate.client.known import KnownServers
from casemate.protocol import Msg, codec, encode_frame
from tests.conftest import ADMIN_PASSWORD, set_setting

from .relay import TLS_ALERT_HANDSHAKE_FAILURE, Relay, mitm_server_context

MARKER = "MARKER-8f3a61c2d9e04b7a"


def _roundtrip_marker(conn: casemate.Connection) -> None:
    cur = conn.cursor()
    cur.execute("CREATE TABLE secrets (v TEXT)")
    cur.execute("INSERT INTO secrets (v) VALUES (?)", (MARKER,))
    conn.commit()
    cur.execute("SELECT v FROM secrets")
    assert cur.fetchall() == [(MARKER,)]
    cur.close()


def _spki(db: Path) -> str:
    cert = x509.load_pem_x509_certificate((db / "Resources" / "cert.pem").read_bytes())
    return tls.spki_fingerprint(cert)


def _relay_key(relay: Relay) -> str:
    return f"127.0.0.1:{relay.port}"


def _wait_for_log(server, text: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """The server's output is read by a thread: wait until ``text`` shows up."""
    deadline = time.monotonic() + timeout
    while text not in server.log():
        assert time.monotonic() < deadline, f"{text!r} not in server log:\n{server.log()}"
        time.sleep(0.05)


# -- recording relay: the test itself can fail ---------------------------------

def test_recording_relay_sees_marker_with_plain_server(plain_server) -> None:  # type: ignore[no-untyped-def]
    with Relay(plain_server.port) as relay:
        with casemate.connect(relay.url(ADMIN_PASSWORD)) as conn:
            assert conn.security.level == "plain"
            _roundtrip_marker(conn)
        relay.wait_idle()
        # Control: without encryption, an eavesdropper reads the value both ways.
        assert MARKER.encode() in relay.c2s
        assert MARKER.encode() in relay.s2c
        assert ADMIN_PASSWORD.encode() not in relay.c2s  # SCRAM never sends the password


def test_recording_relay_sees_nothing_with_encrypted_server(tls_server) -> None:  # type: ignore[no-untyped-def]
    with Relay(tls_server.port) as relay:
        with casemate.connect(relay.url(ADMIN_PASSWORD)) as conn:
            assert conn.security.encrypted
            _roundtrip_marker(conn)
        relay.wait_idle()
        assert relay.flows, "the client did not go through the relay"
        for flow in relay.flows:
            assert bytes(flow.c2s[:1]) == b"\x16"  # a TLS handshake record, from the first byte
            assert MARKER.encode() not in flow.c2s
            assert MARKER.encode() not in flow.s2c
            assert b"secrets" not in flow.c2s
        assert len(relay.c2s) > 100 and len(relay.s2c) > 100


# -- certificate-swapping man in the middle --------------------------------------

def test_mitm_refused_for_pinned_client(tls_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    real_fp = _spki(tls_server.db)
    with Relay(tls_server.port) as relay:
        # First meeting, through an honest path: the key is pinned for the relay's address.
        with casemate.connect(relay.url(ADMIN_PASSWORD)) as conn:
            assert conn.security.fingerprint == real_fp
        relay.wait_idle()
        pinned = KnownServers().get(_relay_key(relay))
        assert pinned is not None and pinned.mode == "encrypted" and pinned.fingerprint == real_fp

        ctx = mitm_server_context(tmp_path / "mitm")
        mitm_fp = tls.spki_fingerprint(x509.load_pem_x509_certificate(
            (tmp_path / "mitm" / "mitm-cert.pem").read_bytes()))
        assert mitm_fp != real_fp
        relay.mitm_context = ctx
        relay.mode = "mitm"
        n = len(relay.flows)
        with pytest.raises(casemate.SecurityError) as ei:
            casemate.connect(relay.url(ADMIN_PASSWORD))
        msg = str(ei.value)
        assert real_fp in msg and mitm_fp in msg, msg
        relay.wait_idle()
        attacked = relay.flows[n:]
        assert attacked and all(f.mode == "mitm" for f in attacked)
        for f in attacked:
            assert bytes(f.c2s) == b"", f"the client sent {bytes(f.c2s)!r} to the attacker"
        # The pin is unchanged.
        assert KnownServers().get(_relay_key(relay)) == pinned


def test_mitm_refused_on_first_contact(tls_server, tmp_path: Path,  # type: ignore[no-untyped-def]
                                       casemate_home: Path) -> None:
    assert not (casemate_home / "known_servers").exists()
    ctx = mitm_server_context(tmp_path / "mitm")
    with Relay(tls_server.port, mode="mitm", mitm_context=ctx) as relay:
        with pytest.raises(casemate.OperationalError) as ei:
            casemate.connect(relay.url(ADMIN_PASSWORD), connect_timeout=20)
        relay.wait_idle()
        # The attacker did decrypt the login, so the refusal really came from channel binding.
        assert any(f.client_handshake_ok and f.upstream_connected for f in relay.flows)
        assert b"admin" in relay.c2s
        assert not any(bytes(f.s2c[:1]) == Msg.AUTH_OK.value for f in relay.flows)
        assert b"server_final" not in relay.s2c
    assert ei.value.code in ("28P01", "28000", "08P03"), str(ei.value)
    known = KnownServers().all()
    assert not any(k.key == _relay_key(relay) for k in known), known
    _wait_for_log(tls_server, "channel-bindings-dont-match")
    # The real server is still reachable directly (and only that gets pinned).
    with tls_server.connect() as conn:
        assert conn.security.level == "encrypted-unverified"
    assert [k.key for k in KnownServers().all()] == [f"127.0.0.1:{tls_server.port}"]


# -- stripping relay --------------------------------------------------------------

def test_strip_relay_refused_as_downgrade(tls_server, plain_server, tmp_path: Path,  # type: ignore[no-untyped-def]
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with Relay(tls_server.port) as relay:
        with casemate.connect(relay.url(ADMIN_PASSWORD)) as conn:
            assert conn.security.encrypted
        relay.wait_idle()
        assert KnownServers().get(_relay_key(relay)).mode == "encrypted"  # type: ignore[union-attr]

        relay.mode, relay.upstream_port = "strip", plain_server.port
        n = len(relay.flows)
        with pytest.raises(casemate.SecurityError) as ei:
            casemate.connect(relay.url(ADMIN_PASSWORD))
        assert "downgrade" in str(ei.value)
        relay.wait_idle()
        attacked = relay.flows[n:]
        assert attacked and all(f.refused_tls for f in attacked)
        assert all(not f.upstream_connected for f in attacked)  # nothing in plaintext

        # Control: the relay really strips -- a client that never met this address
        # (first contact, no pin) is led to plaintext, as documented for trust-on-first-use.
        monkeypatch.setenv("CASEMATE_HOME", str(tmp_path / "other-home"))
        with casemate.connect(relay.url(ADMIN_PASSWORD)) as conn:
            assert conn.security.level == "plain"
            _roundtrip_marker(conn)
        relay.wait_idle()
        assert MARKER.encode() in relay.c2s


def test_strip_relay_refused_with_encryption_required(plain_server) -> None:  # type: ignore[no-untyped-def]
    with Relay(plain_server.port, mode="strip") as relay:
        with pytest.raises(casemate.SecurityError) as ei:
            casemate.connect(relay.url(ADMIN_PASSWORD), encryption="required")
        relay.wait_idle()
        assert all(not f.upstream_connected for f in relay.flows)
    assert ei.value.code == "08P03"


# -- CA verification -------------------------------------------------------------

def test_tls_ca_verified(tls_server) -> None:  # type: ignore[no-untyped-def]
    ca = tls_server.db / "Resources" / "cert.pem"
    with tls_server.connect(tls_ca=str(ca)) as conn:
        assert conn.security.level == "encrypted-verified"
        assert conn.security.verified_by == "CA"
        assert conn.security.fingerprint == _spki(tls_server.db)


def test_tls_ca_wrong_host_refused(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db(encrypted=True)
    res = db / "Resources"
    for name in ("key.pem", "cert.pem", ".generated-cert"):  # replace what init generated
        (res / name).unlink(missing_ok=True)
    key = tls.generate_key()
    tls.write_key(res / "key.pem", key)
    tls.write_cert(res / "cert.pem", tls.make_self_signed(key, "other", ["other.example"]))
    server = server_factory(db)
    assert _spki(db) == tls.spki_fingerprint(tls.make_self_signed(key, "x", ["x"]))
    with pytest.raises(casemate.SecurityError) as ei:
        server.connect(tls_ca=str(res / "cert.pem"))
    assert "verification" in str(ei.value)
    assert not (KnownServers().path).exists() or not KnownServers().all()
    # Control: the same certificate is fine without tls_ca (pinning, not host names).
    with server.connect() as conn:
        assert conn.security.fingerprint == _spki(db)


def test_tls_ca_against_other_certificate_refused(tls_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key = tls.generate_key()
    other = tmp_path / "other-ca.pem"
    tls.write_cert(other, tls.make_self_signed(key, "other", ["127.0.0.1"]))
    with pytest.raises(casemate.SecurityError):
        tls_server.connect(tls_ca=str(other))


# -- encryption levels -----------------------------------------------------------

def test_required_against_plain_server(plain_server) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(casemate.SecurityError) as ei:
        plain_server.connect(encryption="required")
    assert ei.value.code == "08P03"
    assert not KnownServers().all()


def test_security_levels(plain_server, tls_server) -> None:  # type: ignore[no-untyped-def]
    with plain_server.connect() as conn:
        s = conn.security
        assert s.level == "plain" and not s.encrypted
        assert s.tls_version is None and s.cipher is None and s.fingerprint is None
    fp = _spki(tls_server.db)
    with tls_server.connect() as conn:
        s = conn.security
        assert s.level == "encrypted-unverified" and s.encrypted
        assert s.verified_by is None and s.fingerprint == fp
        assert s.tls_version in ("TLSv1.2", "TLSv1.3") and s.cipher
    with tls_server.connect() as conn:
        s = conn.security
        assert s.level == "encrypted-verified" and s.verified_by == "pinned key"
        assert s.fingerprint == fp
        assert s.tls_version in ("TLSv1.2", "TLSv1.3") and s.cipher
    with tls_server.connect(encryption="required") as conn:
        assert conn.security.level == "encrypted-verified"


# -- raw clients -----------------------------------------------------------------

def _read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    out = bytearray()
    while True:
        data = sock.recv(4096)
        if not data:
            return bytes(out)
        out += data


def test_plaintext_hello_to_encrypted_server(tls_server) -> None:  # type: ignore[no-untyped-def]
    with socket.create_connection(("127.0.0.1", tls_server.port), 5) as sock:
        sock.sendall(encode_frame(Msg.HELLO, {"protocol": 1, "program": "raw", "host": "x"}))
        data = _read_all(sock)
    assert data[:1] == Msg.ERROR.value, data
    (length,) = struct.unpack(">I", data[1:5])
    body = codec.unpack(data[5:5 + length])
    assert body["code"] == "08P02", body
    assert len(data) == 5 + length


def test_raw_tls_to_plain_server_fails_fast(plain_server) -> None:  # type: ignore[no-untyped-def]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", plain_server.port), 10) as sock:
        sock.settimeout(10)  # a hang would raise TimeoutError, not SSLError
        with pytest.raises(ssl.SSLError) as ei:
            ctx.wrap_socket(sock, server_hostname="127.0.0.1").close()
    assert time.monotonic() - t0 < 5
    assert "HANDSHAKE_FAILURE" in str(ei.value).upper()
    # And the alert bytes are exactly what the stripping relay imitates.
    with socket.create_connection(("127.0.0.1", plain_server.port), 5) as sock:
        sock.sendall(b"\x16\x03\x01\x00\x05hello")
        sock.shutdown(socket.SHUT_WR)
        assert _read_all(sock) == TLS_ALERT_HANDSHAKE_FAILURE


# -- a server switched between plain and encrypted --------------------------------

def test_switch_plain_to_encrypted_and_back(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    server = server_factory(db)
    port = server.port
    key = f"127.0.0.1:{port}"

    def connect() -> casemate.Connection:
        return casemate.connect(f"casemate://admin:{ADMIN_PASSWORD}@127.0.0.1:{port}")

    with connect() as conn:
        assert conn.security.level == "plain"
    assert KnownServers().get(key).mode == "plain"  # type: ignore[union-attr]

    server.stop()
    set_setting(db, "encrypt_client_server_connections", "true")
    server = server_factory(db, port=port)
    assert server.port == port
    with connect() as conn:
        assert conn.security.level == "encrypted-unverified"
        _roundtrip_marker(conn)
    entry = KnownServers().get(key)
    assert entry is not None and entry.mode == "encrypted" and entry.fingerprint == _spki(db)

    server.stop()
    set_setting(db, "encrypt_client_server_connections", "false")
    server = server_factory(db, port=port)
    with pytest.raises(casemate.SecurityError) as ei:
        connect()
    assert "downgrade" in str(ei.value)
    assert KnownServers().get(key) == entry  # the pin survives the refused attempt
