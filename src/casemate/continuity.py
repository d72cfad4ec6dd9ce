"""Key continuity: a pinned client follows the server to a new key the old key vouched for.

Clients pin the server's key (client.known).  When the administrator replaces
the key (``casemate cert DIR rotate``, or ``install`` of a certificate on a new
key), the *old* key signs an **endorsement**: an X.509 certificate whose
subject key is the new key, issued and signed by the old key, valid until the
end of the transition (``network.key_transition_days``), and carrying the old
key's SubjectPublicKeyInfo in a private extension (:data:`ENDORSEMENT_OID`) so
that a client holding only the old key's fingerprint can check the signature.
This is SSH's host-key update idea (``hostkeys-00@openssh.com``) in the shape of
a cross-signed certificate.

The server keeps the endorsements in ``Resources/successor.pem`` and sends the
ones still valid after its certificate chain in the TLS handshake; a client
whose pin differs from the presented key walks them from its pin to the
presented key (:func:`follow`).  Nothing else changes the pin: an unendorsed
key, an endorsement past its end (a pin older than the whole transition), an
endorsement of another key (replay) and a way back to a retired key (nothing
endorses an *older* key) are all refused as a forged certificate is.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from .tls import PrivateKey, spki_fingerprint

__all__ = ["ENDORSEMENT_OID", "MAX_STEPS", "Endorsement", "make_endorsement", "parse",
           "follow", "Verdict", "served_chain", "pem_blocks", "kept",
           "fingerprint_of", "endorse"]

# A UUID-based OID (ITU-T X.667, arc 2.25): private, and collision-free without registration.
ENDORSEMENT_OID = x509.ObjectIdentifier("2.25.239569576002275383847644614149029884236")
RECENTLY_ENDED = dt.timedelta(days=366)
MAX_STEPS = 8  # rotations a client may follow in one connect: bounds the work a server causes


def _spki_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _fp(spki_der: bytes) -> str:
    return "sha256:" + hashlib.sha256(spki_der).hexdigest()


def fingerprint_of(key: PrivateKey) -> str:
    """``sha256:HEX`` of a private key's public half, as clients pin it."""
    return _fp(_spki_der(key.public_key()))


def make_endorsement(old_key: PrivateKey, new_public: object, days: int,
                     publication: str = "Casemate",
                     issued: dt.datetime | None = None) -> x509.Certificate:
    """The old key's signature over the new key, valid ``days`` days from ``issued`` (now)."""
    now = issued or dt.datetime.now(dt.UTC)
    old_spki = _spki_der(old_key.public_key())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Casemate key successor"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, publication[:64])])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Casemate key " +
                                           _fp(old_spki)[:39])])
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(new_public)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.UnrecognizedExtension(ENDORSEMENT_OID, old_spki), critical=False)
            .sign(old_key, hashes.SHA256()))


@dataclass(frozen=True)
class Endorsement:
    old: str  # fingerprint of the endorsing (old) key
    new: str  # fingerprint of the endorsed (new) key
    until: dt.datetime
    valid_signature: bool
    pem: bytes

    def valid_at(self, now: dt.datetime) -> bool:
        return self.valid_signature and now < self.until


def _signed_by(cert: x509.Certificate, spki_der: bytes) -> bool:
    try:
        pub = serialization.load_der_public_key(spki_der)
        algo = cert.signature_hash_algorithm
        if algo is None:
            return False
        if isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algo))
        elif isinstance(pub, rsa.RSAPublicKey):
            pub.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algo)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _endorsement(cert: x509.Certificate) -> Endorsement | None:
    try:
        ext = cert.extensions.get_extension_for_oid(ENDORSEMENT_OID).value
    except x509.ExtensionNotFound:
        return None
    old_spki = ext.value  # type: ignore[attr-defined]
    return Endorsement(_fp(old_spki), spki_fingerprint(cert), cert.not_valid_after_utc,
                       _signed_by(cert, old_spki),
                       cert.public_bytes(serialization.Encoding.PEM))


def parse(ders_or_pems: Iterable[bytes]) -> list[Endorsement]:
    """The endorsements among certificates (DER from a handshake, or PEM blocks);
    anything else (the server's own chain) is skipped, as is anything unparsable."""
    out = []
    for data in ders_or_pems:
        try:
            cert = (x509.load_pem_x509_certificate(data) if data.startswith(b"-----")
                    else x509.load_der_x509_certificate(data))
        except ValueError:
            continue
        if (e := _endorsement(cert)) is not None:
            out.append(e)
    return out


def pem_blocks(data: bytes) -> list[bytes]:
    marker = b"-----BEGIN CERTIFICATE-----"
    return [marker + part for part in data.split(marker)[1:]]


def endorse(successor_path: Path, old_key: PrivateKey, new_cert: x509.Certificate, days: int,
            publication: str = "Casemate") -> bool:
    """Have ``old_key`` endorse ``new_cert``'s key in successor.pem (mode 0600), keeping the
    endorsements worth sending; False (nothing written) when the key is the same."""
    if spki_fingerprint(new_cert) == fingerprint_of(old_key):
        return False
    e = make_endorsement(old_key, new_cert.public_key(), days, publication)
    old = kept(successor_path.read_bytes()) if successor_path.exists() else []
    data = b"".join(k.pem for k in old) + e.public_bytes(serialization.Encoding.PEM)
    fd = os.open(successor_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


def served_chain(successor_path: Path) -> bytes:
    """What the server sends after its certificate chain: the valid endorsements of
    ``Resources/successor.pem`` (PEM), or b"" (none, or no file)."""
    try:
        data = successor_path.read_bytes()
    except FileNotFoundError:
        return b""
    return b"".join(e.pem for e in kept(data))


def kept(data: bytes) -> list[Endorsement]:
    """The endorsements of a successor.pem worth sending (the last MAX_STEPS): the valid
    ones, and those that ended less than a year ago, so that a client whose pin is older
    than the transition is told so, and when it ended, not only "a different key"."""
    now = dt.datetime.now(dt.UTC)
    recent = [e for e in parse(pem_blocks(data))
              if e.valid_signature and e.until > now - RECENTLY_ENDED]
    return recent[-MAX_STEPS:]


@dataclass(frozen=True)
class Verdict:
    """What the endorsements say about moving from ``pin`` to ``presented``."""

    endorsed: bool
    path: tuple[Endorsement, ...] = ()
    expired: Endorsement | None = None  # an endorsement from the pin that ended


def follow(pin: str, presented: str, endorsements: list[Endorsement],
           now: dt.datetime | None = None) -> Verdict:
    """Walk valid endorsements from ``pin`` to ``presented`` (at most MAX_STEPS)."""
    now = now or dt.datetime.now(dt.UTC)
    by_old: dict[str, list[Endorsement]] = {}
    for e in endorsements:
        by_old.setdefault(e.old, []).append(e)
    expired = next((e for e in by_old.get(pin, []) if e.valid_signature and not e.valid_at(now)),
                   None)
    path: list[Endorsement] = []
    cur, seen = pin, {pin}
    for _ in range(MAX_STEPS):
        step = next((e for e in by_old.get(cur, []) if e.valid_at(now) and e.new not in seen),
                    None)
        if step is None:
            break
        path.append(step)
        cur = step.new
        seen.add(cur)
        if cur == presented:
            return Verdict(True, tuple(path))
    return Verdict(False, (), expired)
