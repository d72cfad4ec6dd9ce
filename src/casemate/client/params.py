"""Connection parameters: URL or keywords, passwords from env or file, and the security report."""

from __future__ import annotations

import os
import socket
import stat
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from ..errors import Codes, InterfaceError, OperationalError, PasswordsFileWarning
from ..settings import DEFAULT_PORT

__all__ = ["ConnectParams", "Security", "casemate_home", "login_user", "parse_params"]

ENCRYPTION_MODES = ("auto", "required")


def casemate_home() -> Path:
    """``$CASEMATE_HOME``, default ``~/.casemate``: known servers, passwords, trusted CA."""
    return Path(os.environ.get("CASEMATE_HOME") or Path.home() / ".casemate")


@dataclass(frozen=True)
class Security:
    """How a connection is protected (``conn.security``).

    ``level`` is one of ``"plain"`` (not encrypted), ``"encrypted-unverified"``
    (encrypted; server key recorded on this first contact after the
    channel-bound login proved the server knows the password verifier) and
    ``"encrypted-verified"`` (key matched the pin, or chain and host name
    verified against ``tls_ca``; ``verified_by`` says which).  ``tls_failure``:
    on a plain connection, why the TLS attempt before it failed (a fresh
    ``auto`` client retries in plaintext; the user should know it did).
    """

    level: str
    tls_version: str | None = None
    cipher: str | None = None
    fingerprint: str | None = None
    verified_by: str | None = None
    tls_failure: str | None = None
    note: str | None = None  # said once: a key re-pinned, a LAN announcement that differed

    @property
    def fallback_note(self) -> str:
        """"TLS failed: ...; retried in plaintext", or "" if there was no fallback."""
        return f"TLS failed: {self.tls_failure}; retried in plaintext" if self.tls_failure else ""

    @property
    def encrypted(self) -> bool:
        return self.level != "plain"

    def __str__(self) -> str:
        if not self.encrypted:
            return "plain: NOT encrypted" + (f" ({self.fallback_note})" if self.tls_failure else "")
        how = f" by {self.verified_by}" if self.verified_by else ""
        state = "verified" + how if self.level == "encrypted-verified" else (
            "unverified (first contact: key recorded)")
        note = f"\nNote: {self.note}" if self.note else ""
        return (f"encrypted ({self.tls_version}, {self.cipher}), server {state}, "
                f"key {self.fingerprint}{note}")


@dataclass(frozen=True)
class ConnectParams:
    host: str
    port: int
    user: str
    password: str
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    encryption: str = "auto"
    connect_timeout: float = 10.0
    program: str = ""
    reconnect_attempts: int = 10
    reconnect_delay: float = 0.2
    # A server that does not answer TCP keepalive probes (or acknowledge what we sent) for
    # this long is dead: the waiting call fails instead of blocking (0 = off).
    keepalive: float = 30.0
    statement_timeout: float | None = None  # seconds (0 = none); None: the server's default
    announced_fingerprint: str | None = None  # from the LAN announcement: a hint, never trust
    lan_name: str | None = None  # the publication asked for, when the LAN gave the address

    @property
    def server_key(self) -> str:
        """``host:port`` as recorded in known_servers (IPv6 in brackets)."""
        h = self.host.lower()
        return f"[{h}]:{self.port}" if ":" in h else f"{h}:{self.port}"

    @property
    def trust_keys(self) -> tuple[str, ...]:
        """Where this server's mode and key are pinned in known_servers, first one first.
        A server found by its publication name is pinned under that name too: whoever
        announces the name later, from whatever address, must show the same key (the
        announced address alone would make every impostor a first contact)."""
        if self.lan_name is None:
            return (self.server_key,)
        return (f"lan:{quote(self.lan_name.lower(), safe='')}", self.server_key)


def _split_escaped(line: str) -> list[str]:
    """Split a passwords-file line on ``:``, as libpq reads ``.pgpass``: ``\\:`` is a colon
    inside a field and ``\\\\`` a backslash."""
    fields, cur, i = [], [], 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line):
            cur.append(line[i + 1])
            i += 2
            continue
        if ch == ":":
            fields.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    fields.append("".join(cur))
    return fields


def _readable_by_others(path: Path) -> bool:
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return os.name == "posix" and bool(mode & (stat.S_IRWXG | stat.S_IRWXO))


def _password_from_file(host: str, port: int, user: str) -> str | None:
    """The first matching ``host:port:user:password`` line (``*`` matches any field).

    Like libpq's ``.pgpass``, the file is ignored, with a warning, when its mode lets
    group or others in: a password there may already have leaked."""
    path = casemate_home() / "passwords"
    if _readable_by_others(path):
        warnings.warn(PasswordsFileWarning(
            f"{path} is ignored: it has group or world access; its mode should be 0600 "
            f"(chmod 600 {path})"), stacklevel=4)
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = _split_escaped(line)
        if len(fields) < 4:
            continue
        h, p, u, pw = fields[:4]
        if h in ("*", host) and p in ("*", str(port)) and u in ("*", user):
            return pw
    return None


KNOWN_OPTIONS = ("host", "port", "user", "password", "tls_ca", "tls_cert", "tls_key",
                 "encryption", "connect_timeout", "program", "reconnect_attempts",
                 "reconnect_delay", "keepalive", "statement_timeout", "publication")


def _url_options(dsn: str) -> dict[str, Any]:
    """The options a ``casemate://`` URL gives; anything it cannot mean is an error."""
    try:
        u = urlsplit(dsn)
    except ValueError as e:  # e.g. an unterminated [IPv6 address
        raise InterfaceError(f"malformed URL {dsn!r}: {e}") from e
    if u.scheme != "casemate":
        raise InterfaceError(f"not a casemate:// URL: {dsn!r}")
    try:
        port = u.port
    except ValueError as e:
        raise InterfaceError(f"bad port in URL {dsn!r}: {e}") from e
    if u.path not in ("", "/"):
        raise InterfaceError(f"URL path {u.path!r} is not understood: a server serves one "
                             "database, so a casemate:// URL has no database part")
    if u.fragment:
        raise InterfaceError(f"URL fragment {'#' + u.fragment!r} is not understood")
    opts: dict[str, Any] = {
        "host": u.hostname, "port": port, "user": unquote(u.username or "") or None,
        "password": unquote(u.password) if u.password is not None else None}
    try:
        pairs = parse_qsl(u.query, keep_blank_values=True, strict_parsing=bool(u.query))
    except ValueError as e:
        raise InterfaceError(f"malformed option in URL {dsn!r}: {e}") from e
    for k, v in pairs:
        if opts.get(k) is not None:
            raise InterfaceError(f"URL option {k!r} is given twice")
        if not v:
            raise InterfaceError(f"URL option {k!r} has no value")
        opts[k] = v
    return opts


def _number(opts: dict[str, Any], key: str, kind: type[int] | type[float], default: float,
            low: float, high: float) -> Any:
    v = opts.get(key)
    if v is None or v == "":
        return kind(default)
    try:
        n = kind(v)
    except (TypeError, ValueError):
        raise InterfaceError(f"{key} {v!r} is not a number") from None
    if not low <= n <= high:
        raise InterfaceError(f"{key} {v!r} is out of range ({low:g} to {high:g})")
    return n


def _env_defaults(opts: dict[str, Any]) -> dict[str, Any]:
    """``CASEMATE_HOST``, ``CASEMATE_PORT``, ``CASEMATE_USER`` and ``CASEMATE_PASSWORD``
    fill what the URL and keywords left out (as libpq's ``PGHOST``... do)."""
    env = {"host": "CASEMATE_HOST", "port": "CASEMATE_PORT", "user": "CASEMATE_USER",
           "password": "CASEMATE_PASSWORD"}
    out = dict(opts)
    for key, var in env.items():
        given = out.get(key) is not None if key == "port" else bool(out.get(key))
        if not given and os.environ.get(var):  # an explicit port 0 is an error, not unset
            out[key] = os.environ[var]
            if key == "port":  # checked here, to name the variable in the error
                _number({"CASEMATE_PORT": out[key]}, "CASEMATE_PORT", int, 0, 1, 65535)
    return out


def login_user(dsn: str | None) -> str:
    """The user a connection to ``dsn`` logs in as (for a password prompt)."""
    opts = _env_defaults(_url_options(dsn) if dsn else {})
    return str(opts.get("user") or "admin")


def parse_params(dsn: str | None = None, **kw: Any) -> ConnectParams:
    """Merge a ``casemate://user:password@host:port?tls_ca=...`` URL with keywords.

    Keywords win over the URL, which wins over ``CASEMATE_HOST``, ``CASEMATE_PORT``,
    ``CASEMATE_USER`` and ``CASEMATE_PASSWORD``; the passwords file comes last.
    Raises InterfaceError for a malformed URL, a URL path, an unknown option, a value
    out of range, or (code 28P02) no password found.
    """
    opts: dict[str, Any] = _url_options(dsn) if dsn else {}
    opts.update({k: v for k, v in kw.items() if v is not None})
    unknown = set(opts) - set(KNOWN_OPTIONS)
    if unknown:
        raise InterfaceError(f"unknown connection option(s): {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(KNOWN_OPTIONS)}")
    opts = _env_defaults(opts)
    host = opts.get("host") or "localhost"
    port = _number(opts, "port", int, DEFAULT_PORT, 1, 65535)
    announced = lan_name = None
    if opts.get("publication") or host.lower().endswith(".local"):
        host, port, announced, lan_name = _from_lan(
            opts.get("publication"), host, port if opts.get("port") else None,
            _number(opts, "connect_timeout", float, 10.0, 0.001, 86400))
    user = opts.get("user") or "admin"
    password = opts.get("password") or _password_from_file(host, port, user)
    if not password and opts.get("tls_cert"):
        password = ""  # certificate-only login (SASL EXTERNAL)
    elif not password:
        raise InterfaceError(
            f"no password for user {user!r} at {host}:{port}", Codes.NO_PASSWORD,
            f"give it in the URL (casemate://{user}:PASSWORD@...), set "
            f"CASEMATE_PASSWORD, or add the line '{host}:{port}:{user}:PASSWORD' to "
            f"{casemate_home() / 'passwords'} (mode 0600)")
    encryption = opts.get("encryption") or "auto"
    if encryption not in ENCRYPTION_MODES:
        raise InterfaceError(f"encryption {encryption!r}: expected one of "
                             f"{', '.join(ENCRYPTION_MODES)}")
    ca = opts.get("tls_ca")
    if ca is None and (casemate_home() / "Resources" / "cert.pem").exists():
        ca = casemate_home() / "Resources" / "cert.pem"
    def path(v: Any) -> Path | None:
        return Path(v) if v else None
    return ConnectParams(
        host=host, port=port, user=user, password=password, tls_ca=path(ca),
        tls_cert=path(opts.get("tls_cert")), tls_key=path(opts.get("tls_key")),
        encryption=encryption,
        connect_timeout=_number(opts, "connect_timeout", float, 10.0, 0.001, 86400),
        program=opts.get("program") or Path(sys.argv[0]).name or "python",
        reconnect_attempts=_number(opts, "reconnect_attempts", int, 10, 0, 1000),
        reconnect_delay=_number(opts, "reconnect_delay", float, 0.2, 0, 3600),
        keepalive=_keepalive(opts.get("keepalive", 30.0)),
        statement_timeout=(_number(opts, "statement_timeout", float, 0, 0, 10**9)
                           if opts.get("statement_timeout") is not None else None),
        announced_fingerprint=announced, lan_name=lan_name,
    )


def _keepalive(v: Any) -> float:
    try:
        seconds = float(v)
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 <= seconds <= 3600:
        raise InterfaceError(f"keepalive={v!r}: expected seconds from 0 (off) to 3600")
    return seconds


def looks_up_lan(dsn: str | None, kw: dict[str, Any]) -> bool:
    """Whether :func:`parse_params` will listen on the LAN (``publication=`` or a
    ``NAME.local`` host): the asyncio client then runs it in a thread."""
    host = kw.get("host") or (urlsplit(dsn).hostname if dsn else None) or ""
    return bool(kw.get("publication")) or host.lower().endswith(".local")


def _from_lan(publication: str | None, host: str, port: Any,
              timeout: float) -> tuple[str, int, str | None, str | None]:
    """``publication=`` or a ``NAME.local`` host: the address, port and announced key of
    the server announcing NAME on the LAN, and NAME (None when no server announced it).
    A ``.local`` host no server announces is left to the system's resolver; an unknown
    ``publication=`` raises OperationalError."""
    from .. import lan
    name = publication or host[: -len(".local")]
    try:
        # An explicit publication is worth a longer listen; a .local host may be an
        # ordinary mDNS host name, which then waits this long before the system resolver.
        found = lan.find(name, min(timeout, 3.0 if publication else 1.5))
    except lan.Ambiguous as e:
        raise OperationalError(
            f"several servers announce {name!r} on the LAN ({e}): one of them is not the "
            "one you mean", Codes.CANNOT_CONNECT,
            "ask the administrator for the server's address and connect to it by address, "
            "or give each server its own network.publication_name") from None
    except OSError as e:
        if publication:
            raise OperationalError(f"cannot look for {publication!r} on the LAN: {e}",
                                   Codes.CANNOT_CONNECT) from e
        found = None
    if found is None:
        if publication:
            raise OperationalError(
                f"no server announcing the publication {publication!r} was found on the LAN",
                Codes.CANNOT_CONNECT, "check that the server runs with publish_on_lan on and "
                "that this computer is on the same network segment (casemate servers lists them)")
        return host, int(port or DEFAULT_PORT), None, None
    return found.address, int(port or found.port), found.fingerprint, name


def client_hello(params: ConnectParams) -> dict[str, Any]:
    from ..protocol import PROTOCOL_VERSION
    from ..protocol.messages import Hello
    # "result": this client understands RESULT frames (small results in one frame).
    return Hello(PROTOCOL_VERSION, params.program[:200], socket.gethostname()[:200],
                 ("result",), params.statement_timeout).wire()
