"""Client certificates that name users (``[auth]``), as PostgreSQL's ``cert`` method.

With ``require_client_certificate``, the TLS layer has already checked the
certificate against ``Resources/client-ca.pem`` (and ``client-crl.pem`` when
present).  This module answers the one remaining question: which user names
may this certificate stand for?

* ``certificate_names = "cn"``: the common name is the user name.
* ``certificate_names = "map"``: ``Resources/client-users.conf``, one rule a
  line, as PostgreSQL's ``pg_ident.conf``::

      # CERT-NAME                     USER
      CN=alice-laptop                 alice
      email:bob@example.com           bob
      /^CN=(.*)-kiosk$                \\1

  A certificate's names are its subject (``CN=...,O=...``), each RDN alone
  (``CN=alice-laptop``) and each subjectAltName (``email:``, ``dns:``,
  ``uri:``, ``ip:``); a pattern starting with ``/`` is a regular expression
  whose first group may be used as ``\\1`` in USER.  The file is re-read when
  it changes, so no reload is needed.

The login then applies the user's method (``auth.method``, per group, per
user): ``scram`` ignores the certificate, ``certificate`` accepts the
certificate alone (SASL ``EXTERNAL``), ``certificate+scram`` wants both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..settings import AuthSettings

__all__ = ["CertUsers", "certificate_names", "certificate_refusal", "external_refusal",
           "EXTERNAL"]

EXTERNAL = "EXTERNAL"  # the SASL mechanism of a certificate-only login (RFC 4422 appendix A)


def certificate_names(der: bytes) -> list[str]:
    """The names a certificate goes by: full subject, each RDN, each subjectAltName."""
    cert = x509.load_der_x509_certificate(der)
    names = [cert.subject.rfc4514_string()]
    names += [a.rfc4514_string() for a in cert.subject]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return list(dict.fromkeys(names))
    kinds = ((x509.RFC822Name, "email"), (x509.DNSName, "dns"),
             (x509.UniformResourceIdentifier, "uri"), (x509.IPAddress, "ip"))
    for cls, prefix in kinds:
        names += [f"{prefix}:{v}" for v in san.get_values_for_type(cls)]
    return list(dict.fromkeys(names))


def _common_name(der: bytes) -> str | None:
    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[-1].value) if cns else None


@dataclass(frozen=True)
class _Rule:
    pattern: str
    user: str

    def users(self, names: list[str]) -> list[str]:
        if not self.pattern.startswith("/"):
            return [self.user] if self.pattern in names else []
        rx = re.compile(self.pattern[1:])
        out = []
        for n in names:
            if m := rx.search(n):
                group = m.group(1) if rx.groups else ""
                out.append(self.user.replace("\\1", group))
        return out


class CertUsers:
    """Which users a client certificate may log in as, from the settings and the map file."""

    def __init__(self, auth: AuthSettings, map_path: Path) -> None:
        self.auth = auth
        self.map_path = map_path
        self._stamp: tuple[int, int] | None = None
        self._rules: list[_Rule] = []

    def users(self, der: bytes | None) -> list[str]:
        """The user names ``der`` stands for (empty without a certificate or a match)."""
        if der is None:
            return []
        if self.auth.certificate_names == "cn":
            cn = _common_name(der)
            return [cn] if cn else []
        names = certificate_names(der)
        return list(dict.fromkeys(u for r in self._load() for u in r.users(names)))

    def _load(self) -> list[_Rule]:
        try:
            st = self.map_path.stat()
        except FileNotFoundError:
            return []
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._rules, self._stamp = parse_map(self.map_path.read_text(encoding="utf-8")), stamp
        return self._rules


def parse_map(text: str) -> list[_Rule]:
    """Rules of a client-users.conf; a malformed line (or bad regex) is skipped."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            continue
        if parts[0].startswith("/"):
            try:
                re.compile(parts[0][1:])
            except re.error:
                continue
        rules.append(_Rule(parts[0], parts[1]))
    return rules


def certificate_refusal(method: str, cert_users: list[str], user: str) -> str | None:
    """Why ``method`` refuses ``user`` for want of a certificate naming them, or None."""
    if "certificate" in method and user not in cert_users:
        return f"the client certificate does not name this user (auth method {method})"
    return None


def external_refusal(method: str, cert_users: list[str], user: str) -> str | None:
    """Why a certificate-only login (no password) is refused for ``user``, or None."""
    if method != "certificate":
        return f"this user must also give a password (auth method {method})"
    return certificate_refusal(method, cert_users, user)
