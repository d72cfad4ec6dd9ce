"""TLS: server and client contexts, certificate generation, inspection and checks.

Casemate uses direct TLS (TLS from the first byte, ALPN ``casemate/1``) when
the database's ``encrypt_client_server_connections`` is on.  This module never
sees a Casemate message; it builds :class:`ssl.SSLContext` objects and checks
key/certificate files so that a server with bad files fails closed.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ipaddress
import os
import socket
import ssl
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "ALPN",
    "CertificateError",
    "CertInfo",
    "generate_key",
    "make_self_signed",
    "make_csr",
    "write_key",
    "inspect_cert",
    "check_pair",
    "server_context",
    "client_context",
    "spki_fingerprint",
    "spki_fingerprint_der",
    "cert_fingerprint",
    "channel_binding_data",
    "default_sans",
    "record_layer",
]

ALPN = "casemate/1"
MAX_DAYS = 366  # Mozilla's TLS profiles: certificates valid at most 366 days
EXPIRY_WARNING_DAYS = 30
# Mozilla "intermediate" TLS 1.2 suites: AEAD with forward secrecy only (no DHE: no dhparams).
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


class CertificateError(Exception):
    """A key or certificate file is missing, unreadable, malformed, mismatched or expired."""


PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A new ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def default_sans(listen: tuple[str, ...] = ()) -> list[str]:
    """localhost, this host's name, 127.0.0.1, ::1 and the listen addresses (not wildcards)."""
    names = ["localhost", socket.gethostname(), "127.0.0.1", "::1"]
    for a in listen:
        if a not in WILDCARDS and a not in names:
            names.append(a)
    return list(dict.fromkeys(names))


WILDCARDS = ("0.0.0.0", "::", "")


def wildcard_warning(listen: tuple[str, ...], sans: tuple[str, ...], folder: Path) -> str | None:
    """For a server listening on a wildcard address: clients that verify the certificate
    against a CA (``tls_ca``) reach it by LAN names and addresses the certificate must list;
    it lists only ``sans``.  None when no listen address is a wildcard."""
    if not any(a in WILDCARDS for a in listen):
        return None
    hint = " ".join(f"--san {a}" for a in _lan_addresses() if a not in sans) or "--san NAME"
    return (f"the server listens on a wildcard address "
            f"({', '.join(a or '*' for a in listen if a in WILDCARDS)}): clients that "
            f"verify the certificate with tls_ca must connect by a name it lists "
            f"({', '.join(sans) or 'none'}); to add the LAN names on the same key (pinned "
            f"clients keep working), run: casemate cert {folder} generate --keep-key {hint}")


def _lan_addresses() -> list[str]:
    """This host's non-loopback addresses, as its own name resolves (may be none)."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    out = [str(i[4][0]) for i in infos]
    return [a for a in dict.fromkeys(out) if not ipaddress.ip_address(a.split("%")[0]).is_loopback]


def _san_entries(sans: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for s in sans:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(s)))
        except ValueError:
            out.append(x509.DNSName(s))
    return out


def make_self_signed(key: PrivateKey, subject: str, sans: list[str],
                     days: int = 365) -> x509.Certificate:
    """A self-signed server certificate; raises ValueError if ``days`` exceeds 366."""
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"--days must be between 1 and {MAX_DAYS} (Mozilla's TLS profiles)")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    pub = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_san_entries(sans)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=isinstance(key, rsa.RSAPrivateKey),
            content_commitment=False, data_encipherment=False, key_agreement=False,
            key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    )
    return builder.sign(key, hashes.SHA256())


def make_csr(key: PrivateKey, subject: str, sans: list[str]) -> x509.CertificateSigningRequest:
    """A certificate signing request for ``key``, to send to a certificate authority."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (
        x509.CertificateSigningRequestBuilder().subject_name(name)
        .add_extension(x509.SubjectAlternativeName(_san_entries(sans)), critical=False)
        .sign(key, hashes.SHA256())
    )


def write_key(path: Path, key: PrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, created with mode 0600 (never wider)."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def spki_fingerprint(cert: x509.Certificate) -> str:
    """``sha256:HEX`` of the certificate's SubjectPublicKeyInfo (survives renewal, same key)."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


@functools.lru_cache(maxsize=64)
def spki_fingerprint_der(der_cert: bytes) -> str:
    """:func:`spki_fingerprint` of a DER certificate (remembered: a client meets the same
    server certificate at every connect)."""
    return spki_fingerprint(x509.load_der_x509_certificate(der_cert))


def cert_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint of the whole certificate, colon-separated (as openssl prints it)."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


@functools.lru_cache(maxsize=64)
def channel_binding_data(der_cert: bytes) -> bytes:
    """RFC 5929 ``tls-server-end-point``: hash of the server certificate (SHA-256 at least)."""
    cert = x509.load_der_x509_certificate(der_cert)
    algo = cert.signature_hash_algorithm
    if algo is None or algo.name in ("md5", "sha1"):
        algo = hashes.SHA256()
    h = hashes.Hash(algo)
    h.update(der_cert)
    return h.finalize()


@dataclass(frozen=True)
class CertInfo:
    subject: str
    issuer: str
    sans: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    key_type: str
    spki_sha256: str
    sha256: str
    self_signed: bool

    @property
    def days_left(self) -> int:
        return (self.not_after - dt.datetime.now(dt.UTC)).days


def _key_type(cert: x509.Certificate) -> str:
    pub = cert.public_key()
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return f"ECDSA {pub.curve.name}"
    if isinstance(pub, rsa.RSAPublicKey):
        return f"RSA {pub.key_size}"
    return type(pub).__name__


def inspect_cert(cert: x509.Certificate) -> CertInfo:
    """Describe a certificate (subject, SANs, validity, key, fingerprints)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(str(v) for v in san.get_values_for_type(x509.DNSName)) + tuple(
            str(v) for v in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        sans = ()
    return CertInfo(
        subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(), sans=sans,
        not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
        key_type=_key_type(cert), spki_sha256=spki_fingerprint(cert),
        sha256=cert_fingerprint(cert), self_signed=cert.issuer == cert.subject,
    )


def _read(path: Path, what: str) -> bytes:
    if not path.exists():
        raise CertificateError(f"{what} {path} is missing")
    try:
        return path.read_bytes()
    except OSError as e:
        raise CertificateError(f"{what} {path} cannot be read: {e.strerror}") from e


def load_key(path: Path) -> PrivateKey:
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as e:
        raise CertificateError(
            f"private key {path} is encrypted with a passphrase; the server needs it "
            "unencrypted (protect it with file permissions, mode 0600)") from e
    except (ValueError, Exception) as e:
        raise CertificateError(f"private key {path} is not a valid PEM private key ({e})") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateError(f"private key {path} is {type(key).__name__}; use RSA or ECDSA")
    return key


def load_chain(path: Path) -> list[x509.Certificate]:
    data = _read(path, "certificate")
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise CertificateError(f"certificate {path} is not a valid PEM certificate ({e})") from e
    return chain


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_pair(key_path: Path, cert_path: Path) -> tuple[list[x509.Certificate], list[str]]:
    """Validate key and certificate files; return (chain, warnings) or raise CertificateError.

    Checks: both readable PEM, key matches the first certificate, chain in order
    (each certificate issued by the next), none expired or not yet valid.
    Warnings: expiry within 30 days, key readable by group or others.
    """
    key = load_key(key_path)
    chain = load_chain(cert_path)
    leaf = chain[0]
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        if any(_public_der(key.public_key()) == _public_der(c.public_key()) for c in chain[1:]):
            raise CertificateError(
                f"chain in {cert_path} is out of order: the certificate for {key_path} must "
                "come first, followed by its issuers")
        raise CertificateError(
            f"private key {key_path} does not match certificate {cert_path} "
            "(they are from different key pairs)")
    now = dt.datetime.now(dt.UTC)
    for i, c in enumerate(chain):
        where = "certificate" if i == 0 else f"chain certificate #{i + 1}"
        if c.not_valid_after_utc < now:
            raise CertificateError(
                f"{where} in {cert_path} expired on {c.not_valid_after_utc:%Y-%m-%d}; "
                "install a new one (casemate cert DIR generate, or request/install)")
        if c.not_valid_before_utc > now:
            raise CertificateError(
                f"{where} in {cert_path} is not valid before {c.not_valid_before_utc:%Y-%m-%d}")
    for i in range(len(chain) - 1):
        if chain[i].issuer != chain[i + 1].subject:
            raise CertificateError(
                f"chain in {cert_path} is out of order: certificate #{i + 1} was issued by "
                f"{chain[i].issuer.rfc4514_string()}, but #{i + 2} is "
                f"{chain[i + 1].subject.rfc4514_string()}")
        try:
            chain[i].verify_directly_issued_by(chain[i + 1])
        except (ValueError, TypeError, Exception) as e:
            raise CertificateError(
                f"chain in {cert_path}: certificate #{i + 1} is not signed by #{i + 2} ({e})"
            ) from e
    _check_strength(chain, cert_path)
    _check_openssl_accepts(key_path, cert_path)
    return chain, _warnings(key_path, leaf)


MIN_RSA_BITS = 2048  # NIST SP 800-57: 112-bit security at least, as OpenSSL's level 2
MIN_EC_BITS = 256    # P-256 and larger


def weak_key(cert: x509.Certificate) -> str | None:
    """What is too weak about the certificate's key (below RSA-2048 or P-256), or None."""
    pub = cert.public_key()
    if isinstance(pub, rsa.RSAPublicKey) and pub.key_size < MIN_RSA_BITS:
        return f"an RSA-{pub.key_size} key (at least RSA-{MIN_RSA_BITS} is required)"
    if isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.key_size < MIN_EC_BITS:
        return f"an ECDSA {pub.curve.name} key (at least P-256 is required)"
    return None


def _check_strength(chain: list[x509.Certificate], cert_path: Path) -> None:
    """Casemate's own floor, whatever OpenSSL's configuration allows: RSA-2048, P-256."""
    for i, c in enumerate(chain):
        if weak := weak_key(c):
            where = "certificate" if i == 0 else f"chain certificate #{i + 1}"
            raise CertificateError(
                f"{where} in {cert_path} has {weak}; make a new key and certificate "
                "(casemate cert DIR generate, or request/install)")


def _check_openssl_accepts(key_path: Path, cert_path: Path) -> None:
    """Load the pair into a context configured as the server's is, so OpenSSL's security
    level (key sizes, signature digests of the chain) refuses here what it would refuse at
    start or reload."""
    ctx = _server_base_context()
    try:
        ctx.load_cert_chain(str(cert_path), str(key_path))
    except ssl.SSLError as e:
        raise CertificateError(
            f"OpenSSL refuses {cert_path} at its security level {ctx.security_level}: "
            f"{e.reason or e}; make a new key and "
            "certificate (casemate cert DIR generate, or request/install)") from e


def _warnings(key_path: Path, leaf: x509.Certificate) -> list[str]:
    out = []
    days = (leaf.not_valid_after_utc - dt.datetime.now(dt.UTC)).days
    if days < EXPIRY_WARNING_DAYS:
        out.append(f"certificate expires in {days} days ({leaf.not_valid_after_utc:%Y-%m-%d}); "
                   "renew it soon")
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        out.append(f"private key {key_path} is readable by group or others (mode {mode:o}); "
                   f"run: chmod 600 {key_path}")
    return out


_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _server_base_context() -> ssl.SSLContext:
    """The server context before its certificate: what decides which keys OpenSSL accepts."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers(TLS12_CIPHERS)
    return ctx


def server_context(key_path: Path, cert_path: Path, min_version: str = "1.2",
                   client_ca: Path | None = None,
                   client_crl: Path | None = None, extra_chain: bytes = b"") -> ssl.SSLContext:
    """A server context: min TLS version, AEAD+PFS suites, no compression or renegotiation."""
    ctx = _server_base_context()
    ctx.minimum_version = _VERSIONS[min_version]
    # Python 3.11 can set one key-exchange group only (OpenSSL's default list adds X448 and
    # P-521, which Mozilla's intermediate profile rejects).  X25519: in the profile, and the
    # key share every mainstream client (OpenSSL, BoringSSL, NSS, Go, Java 11+) sends first,
    # so the handshake needs no HelloRetryRequest round trip; with P-256 each connect paid
    # one, and a third more handshake CPU (measured).  A client offering only P-256 cannot
    # connect.
    ctx.set_ecdh_curve("X25519")
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols([ALPN])
    _load_chain(ctx, key_path, cert_path, extra_chain)
    # One TLS 1.3 session ticket per connection (OpenSSL sends two): a Casemate client keeps
    # one, and each costs both sides work at every connect.
    ctx.num_tickets = 1
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(client_ca))
        if client_crl is not None:
            check_crl(client_crl, client_ca)
            ctx.load_verify_locations(str(client_crl))  # OpenSSL takes CRLs from a "CA" file
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def _load_chain(ctx: ssl.SSLContext, key_path: Path, cert_path: Path, extra: bytes) -> None:
    """cert.pem, plus ``extra`` certificates sent after its chain (the key's successor
    endorsements, see continuity.py); OpenSSL reads a chain from a file only."""
    if not extra:
        ctx.load_cert_chain(str(cert_path), str(key_path))
        return
    with tempfile.TemporaryDirectory() as d:
        served = Path(d) / "served-chain.pem"
        served.write_bytes(cert_path.read_bytes().rstrip(b"\n") + b"\n" + extra)
        ctx.load_cert_chain(str(served), str(key_path))


def record_layer(sslobj: ssl.SSLObject) -> Any:
    """The C object behind an ``ssl.SSLObject``, whose ``read``, ``write`` and ``pending``
    the wrapper only passes on (ssl.py, 3.7-3.14): called once or twice per message on
    the request path, the wrapper's own Python frames are spared.  The wrapper itself
    where a Python has no such attribute."""
    return getattr(sslobj, "_sslobj", sslobj)


def peer_chain(sslobj: object) -> list[bytes]:
    """The certificates the server sent (DER), unverified, leaf first; [] where this
    Python cannot tell (the public method is 3.13+, the private one 3.10+)."""
    get = getattr(sslobj, "get_unverified_chain", None) or getattr(
        getattr(sslobj, "_sslobj", None), "get_unverified_chain", None)
    if get is None:
        return []
    return [c if isinstance(c, bytes) else c.public_bytes(2)  # _ssl.ENCODING_DER
            for c in (get() or [])]


def check_crl(crl_path: Path, ca_path: Path) -> None:
    """A revocation list must parse, be signed by one of the client CAs and be current:
    OpenSSL would otherwise refuse every client certificate (fail closed, but at each
    connect instead of once, here).  Raises CertificateError."""
    data = _read(crl_path, "revocation list")
    try:
        crls = [x509.load_pem_x509_crl(b"-----BEGIN X509 CRL-----" + part)
                for part in data.split(b"-----BEGIN X509 CRL-----")[1:]]
    except ValueError as e:
        raise CertificateError(f"revocation list {crl_path} is not a valid PEM CRL ({e})") from e
    if not crls:
        raise CertificateError(f"revocation list {crl_path} holds no PEM CRL")
    cas = load_chain(ca_path)
    now = dt.datetime.now(dt.UTC)
    for crl in crls:
        if not any(crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
                   for ca in cas):
            raise CertificateError(f"revocation list {crl_path} ({crl.issuer.rfc4514_string()}) "
                                   f"is not signed by a CA of {ca_path}")
        nxt = crl.next_update_utc
        if nxt is not None and nxt < now:
            raise CertificateError(f"revocation list {crl_path} expired on {nxt:%Y-%m-%d}; "
                                   "publish a current one")
    for ca in cas:  # OpenSSL would refuse every certificate of a CA without a CRL
        if not any(crl.issuer == ca.subject for crl in crls):
            raise CertificateError(f"revocation list {crl_path} has no CRL of "
                                   f"{ca.subject.rfc4514_string()} (in {ca_path}): add one, "
                                   "even empty, for each client CA")


def client_context(ca_file: Path | None, cert: Path | None = None,
                   key: Path | None = None) -> ssl.SSLContext:
    """A client context: strict CA + host-name checks when ``ca_file`` is given.

    Without a CA the context does not verify the chain; the caller then MUST
    check the server's key fingerprint against its pin or prove it by the
    channel-bound SCRAM login before trusting the server (see client.known).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols([ALPN])
    if ca_file is not None:
        ctx.load_verify_locations(str(ca_file))
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a pinned self-signed cert.pem is a valid anchor
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx
