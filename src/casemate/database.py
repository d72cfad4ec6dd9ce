"""A database folder: settings, Resources/ (key and certificate), Data/, Logs/, users.

``casemate init`` calls :func:`create_database`; the server and the ``user``
and ``cert`` commands open an existing folder with :class:`DatabaseFolder`.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from scramp import ScramMechanism

from . import tls
from .settings import Settings, load_settings
from .settings_file import render_default_toml
from .storage import Backend, UserRecord, open_backend

__all__ = ["DatabaseFolder", "DatabaseError", "create_database", "make_verifier",
           "make_private_dir", "write_private", "loose_permissions"]

log = logging.getLogger("casemate.database")
SETTINGS_FILE = "casemate.toml"
GENERATED_MARKER = ".generated-cert"  # records the fingerprint of a cert the server made itself
# Like PostgreSQL's data directory: the folder holds password verifiers (Data/system.sqlite),
# the data and the logs, so only the server's user may enter it or read them.
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600
PRIVATE_UMASK = 0o077  # what serve, backup and restore create is private too


class DatabaseError(Exception):
    """The folder is not a Casemate database, or an operation on it failed; says why."""


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if missing, mode 0700; an existing folder is left as is
    (the server's start-up check reports one that is wider)."""
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(PRIVATE_DIR)


def write_private(path: Path, text: str) -> None:
    """Write ``path`` (created or truncated) with mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def loose_permissions(paths: list[Path]) -> list[str]:
    """A warning for each of ``paths`` (folders, and the files directly in them) that the
    group or others may use, with the chmod that fixes it."""
    out = []
    for d in paths:
        for p in [d, *sorted(d.iterdir())] if d.is_dir() else []:
            try:
                st = p.lstat()
            except OSError:
                continue  # a -wal file checkpointed away meanwhile
            mode = stat.S_IMODE(st.st_mode)
            want = PRIVATE_DIR if stat.S_ISDIR(st.st_mode) else PRIVATE_FILE
            if mode & 0o077 and (p == d or stat.S_ISREG(st.st_mode)):
                out.append(f"{p} is open to group or others (mode {mode:o}): it holds data, "
                           f"password verifiers or logs; run: chmod {want:o} {p}")
    return out


def make_verifier(name: str, password: str, group: str) -> UserRecord:
    """A SCRAM-SHA-256 verifier (salted, iterated): the password itself is never stored."""
    if not password:
        raise DatabaseError("a password must not be empty")
    if not group:
        raise DatabaseError("a user needs a group")
    salt, stored, server, iters = ScramMechanism("SCRAM-SHA-256").make_auth_info(password)
    return UserRecord(name, group, salt, stored, server, iters)


@dataclass
class DatabaseFolder:
    path: Path

    @property
    def settings_path(self) -> Path:
        return self.path / SETTINGS_FILE

    @property
    def resources(self) -> Path:
        return self.path / "Resources"

    @property
    def key_path(self) -> Path:
        return self.resources / "key.pem"

    @property
    def cert_path(self) -> Path:
        return self.resources / "cert.pem"

    @property
    def client_ca_path(self) -> Path:
        return self.resources / "client-ca.pem"

    @property
    def data_dir(self) -> Path:
        return self.path / "Data"

    @property
    def logs_dir(self) -> Path:
        return self.path / "Logs"

    def loose_permissions(self) -> list[str]:
        """Warnings for the folder, Data/, Logs/ and their files when wider than 0700/0600."""
        return loose_permissions([self.path, self.data_dir, self.logs_dir])

    def check(self) -> None:
        """Raise DatabaseError unless this looks like a Casemate database folder."""
        if not self.settings_path.is_file():
            raise DatabaseError(
                f"{self.path} is not a Casemate database (no {SETTINGS_FILE}); "
                f"create one with: casemate init {self.path}")

    def settings(self) -> Settings:
        self.check()
        return load_settings(self.settings_path)

    def backend(self, settings: Settings | None = None) -> Backend:
        s = settings or self.settings()
        return open_backend(s.storage, self.data_dir, s.limits)

    # -- certificates -----------------------------------------------------
    def ensure_certificate(self, settings: Settings) -> str | None:
        """Generate key.pem and cert.pem if both are missing; return the new fingerprint.

        Never overwrites: if exactly one of the two exists, that is left for
        the fail-closed check to report.
        """
        if self.key_path.exists() or self.cert_path.exists():
            return None
        self.resources.mkdir(parents=True, exist_ok=True)
        key = tls.generate_key()
        cert = tls.make_self_signed(key, settings.network.publication_name,
                                    tls.default_sans(settings.network.listen))
        tls.write_key(self.key_path, key)
        tls.write_cert(self.cert_path, cert)
        fp = tls.cert_fingerprint(cert)
        write_private(self.resources / GENERATED_MARKER, tls.spki_fingerprint(cert) + "\n")
        log.info("generated a key pair and self-signed certificate for this database; "
                 "SHA-256 fingerprint %s", fp)
        return fp

    def is_self_generated(self) -> bool:
        marker = self.resources / GENERATED_MARKER
        if not marker.exists() or not self.cert_path.exists():
            return False
        try:
            chain = tls.load_chain(self.cert_path)
        except tls.CertificateError:
            return False
        return marker.read_text().strip() == tls.spki_fingerprint(chain[0])

    def renew_if_due(self, settings: Settings, days: int = tls.EXPIRY_WARNING_DAYS) -> bool:
        """Renew a self-generated certificate (same key) that expires within ``days``."""
        if not self.is_self_generated():
            return False
        cert = tls.load_chain(self.cert_path)[0]
        info = tls.inspect_cert(cert)
        if info.days_left >= days:
            return False
        key = tls.load_key(self.key_path)
        new = tls.make_self_signed(key, settings.network.publication_name, list(info.sans))
        tmp = self.cert_path.with_suffix(".pem.new")
        tls.write_cert(tmp, new)
        os.replace(tmp, self.cert_path)
        log.info("renewed the self-generated certificate (same key) until %s",
                 new.not_valid_after_utc.date())
        return True


def create_database(path: Path, name: str | None, admin_password: str | None,
                    storage: str = "sqlite", dsn: str = "") -> tuple[DatabaseFolder, str | None]:
    """Create a new database folder; return it and the generated admin password, if any.

    Raises DatabaseError if ``path`` already holds a database or is a non-empty folder.
    """
    if (path / SETTINGS_FILE).exists():
        raise DatabaseError(f"{path} already holds a Casemate database; refusing to overwrite it")
    if path.exists() and any(path.iterdir()):
        raise DatabaseError(f"{path} is not empty; choose a new or empty folder")
    generated = None
    if not admin_password:
        admin_password = generated = secrets.token_urlsafe(15)
    db = DatabaseFolder(path)
    for d in (path, db.resources, db.data_dir, db.logs_dir, path / "Methods"):
        make_private_dir(d)
    path.chmod(PRIVATE_DIR)  # also when it existed, empty
    pub = name or path.resolve().name or "Casemate"
    write_private(db.settings_path, render_default_toml(publication_name=pub, backend=storage,
                                                        dsn=dsn))
    settings = db.settings()
    db.ensure_certificate(settings)
    backend = db.backend(settings)
    try:
        backend.initialize()
        try:
            backend.add_user(make_verifier("admin", admin_password, "admin"))
        except KeyError:
            if storage == "sqlite":
                raise
            # A shared PostgreSQL database already has its users: keep them.
    finally:
        backend.close()
    return db, generated
