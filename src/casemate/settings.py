"""``casemate.toml`` -> frozen :class:`Settings`, with an error naming key, value and what is allowed.

Every setting is declared once, as a field of a frozen section dataclass
below: its type, default, one-line comment and range check.  From that one
declaration come the parsing and its error messages, the defaults of keys
a file lacks (so files written by older versions keep loading), the
commented file that ``casemate init`` writes and ``docs/settings.md``
(both in :mod:`casemate.settings_file`).  A new setting is one more
``name: type = setting(default, comment, check)`` line (then regenerate the
docs); a rule joining two settings goes in ``_CROSS_CHECKS``.  Settings
are read once, at server start.  How a declaration is written and read into
the schema is :mod:`casemate.settings_schema`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .settings_schema import Check, Field, read_schema, setting, type_name

__all__ = [
    "DEFAULT_PORT",
    "SettingsError",
    "Settings",
    "NetworkSettings",
    "StorageSettings",
    "LimitsSettings",
    "MethodsSettings",
    "AccessSettings",
    "AuthSettings",
    "AdminWebSettings",
    "AccessRule",
    "load_settings",
    "parse_settings",
]

DEFAULT_PORT = 19812


class SettingsError(ValueError):
    """A setting is unknown, of the wrong type or out of range; the message says which."""


def _range(lo: float, hi: float) -> Check:
    return Check(f"a number from {lo} to {hi}", lambda v: None if lo <= v <= hi else "")


def _choice(*options: str) -> Check:
    return Check("one of " + ", ".join(repr(o) for o in options),
                  lambda v: None if v in options else "")


def _listen_problem(v: Any) -> str | None:
    if not v or not all(isinstance(x, str) and x for x in v):
        return ""
    bad = [a for a in v if a.startswith("[") or " " in a]
    return f" (without brackets or spaces: {bad[0]!r})" if bad else None


_LISTEN = Check('a non-empty list of host names or IP addresses, e.g. ["127.0.0.1", "::1"]',
                 _listen_problem)
_NONEMPTY = Check("a non-empty string", lambda v: None if v.strip() else "")


def _rules_problem(v: Any) -> str | None:
    for r in v:
        if not isinstance(r, dict) or set(r) != {"action", "from"}:
            return ""
        if r["action"] not in ("allow", "deny") or not isinstance(r["from"], str):
            return ""
        if r["from"] != "*":
            try:
                ipaddress.ip_network(r["from"], strict=False)
            except ValueError:
                return f" (not an address or CIDR: {r['from']!r})"
    return None


AUTH_METHODS = ("scram", "certificate", "certificate+scram")
_METHODS_TABLE = Check("a table of names to one of " + ", ".join(repr(m) for m in AUTH_METHODS),
                        lambda v: None if all(isinstance(k, str) and m in AUTH_METHODS
                                              for k, m in v.items()) else "")
_RULES = Check('a list of [[access.rules]] tables, each with action = "allow" or "deny" and '
                'from = an address, a CIDR such as "10.0.0.0/8" or "::1/128", or "*"',
                _rules_problem)


@dataclasses.dataclass(frozen=True)
class AccessRule:
    """One ``[[access.rules]]`` entry, its address parsed once."""

    action: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None  # None = any address
    text: str

    def matches(self, address: str) -> bool:
        if self.network is None:
            return True
        try:
            return ipaddress.ip_address(address.split("%")[0]) in self.network
        except ValueError:
            return False


def _rules(v: list[dict[str, str]]) -> tuple[AccessRule, ...]:
    return tuple(AccessRule(r["action"], None if r["from"] == "*" else
                            ipaddress.ip_network(r["from"], strict=False), r["from"]) for r in v)


# -- the settings: one field each, in the order of the file ----------------------------------


@dataclasses.dataclass(frozen=True)
class NetworkSettings:
    publication_name: str = setting(
        "Casemate",
        "Name under which the server publishes this database (also the certificate subject).",
        _NONEMPTY)
    listen: tuple[str, ...] = setting(
        ("127.0.0.1",),
        "Addresses to listen on; use [\"0.0.0.0\", \"::\"] to accept remote workstations.",
        _LISTEN)
    port: int = setting(
        DEFAULT_PORT, f"TCP port (Casemate's default is {DEFAULT_PORT}; 0 picks a free port).",
        _range(0, 65535))
    encrypt_client_server_connections: bool = setting(
        False, "Encrypt all client/server connections with TLS (takes effect at the next start).")
    min_tls_version: str = setting(
        "1.2", "Lowest TLS version accepted when encryption is on: \"1.2\" or \"1.3\".",
        _choice("1.2", "1.3"))
    require_client_certificate: bool = setting(
        False, "When encrypted, also require a client certificate signed by "
        "Resources/client-ca.pem.")
    event_loop: str = setting(
        "auto", "Event loop of the server: \"uvloop\" (faster; installed with Casemate except on "
        "Windows), "
        "\"asyncio\" (the standard library's), or \"auto\" (uvloop when installed).",
        _choice("auto", "uvloop", "asyncio"))
    keepalive_seconds: float = setting(
        30.0, "A client silent this long that does not answer TCP keepalive probes is dead: "
        "its session ends and its transaction is rolled back (0 = off).", _range(0, 3600))
    key_transition_days: int = setting(
        30, "After 'cert rotate' or a new key installed, the old key vouches for the new "
        "one this many days: pinned clients follow it meanwhile.", _range(1, 366))
    publish_on_lan: str = setting(
        "auto", "Announce this server on the LAN (DNS-SD/mDNS, _casemate._tcp): \"on\", "
        "\"off\", or \"auto\" (on when listening beyond loopback).", _choice("auto", "on", "off"))


@dataclasses.dataclass(frozen=True)
class StorageSettings:
    backend: str = setting(
        "sqlite", "Storage engine: \"sqlite\" (embedded, data in Data/) or \"postgresql\".",
        _choice("sqlite", "postgresql"))
    dsn: str = setting(
        "", "PostgreSQL connection string (libpq), without the password; sslmode=require "
        "or verify-full for TLS to PostgreSQL.")
    password_env: str = setting(
        "CASEMATE_PG_PASSWORD", "Environment variable holding the PostgreSQL password (if any).")
    password_file: str = setting(
        "", "File holding the PostgreSQL password (first line), if not in the environment.")
    pool_size: int = setting(
        20, "Most PostgreSQL connections this server opens (sessions in a transaction "
        "each hold one).", _range(1, 10000))
    busy_timeout_seconds: float = setting(
        5.0, "How long a writer waits for another session's write lock before "
        "\"database is busy\".", _range(0, 600))
    worker_threads: int = setting(
        16, "Threads that run storage calls, so no session stalls the others.", _range(1, 256))
    sqlite_mmap_mb: int = setting(
        1024, "SQLite: read the data file through a memory map of up to this many MiB "
        "(shared by all connections, no read() per page; 0 = off).", _range(0, 1 << 20))
    inline_limit_ms: float = setting(
        0.2, "SQLite calls seen to take less than this run in the event loop, without a "
        "thread hand-over (0 = always in worker threads).", _range(0, 100))


@dataclasses.dataclass(frozen=True)
class LimitsSettings:
    max_sessions: int = setting(1000, "Most sessions connected at once.", _range(1, 100000))
    max_message_bytes: int = setting(
        16 * 1024 * 1024, "Largest protocol message accepted (statement plus parameters).",
        _range(4096, 1024 * 1024 * 1024))
    login_timeout_seconds: float = setting(
        10.0, "A client must finish TLS, handshake and login within this time.",
        _range(0.1, 600))
    max_unauthenticated_connections: int = setting(
        256, "Most connections at once that have not finished login (more are refused).",
        _range(1, 100000))
    log_file_max_kb: int = setting(
        10240, "Logs/server.log and Logs/audit.jsonl start a new file past this size (KiB).",
        _range(16, 100 * 1024 * 1024))
    log_files_kept: int = setting(
        5, "Rotated log files kept (audit.jsonl.1 is the newest; older ones are deleted).",
        _range(1, 1000))
    idle_timeout_seconds: float = setting(
        0.0, "Close sessions idle this long, rolling back their transaction (0 = never).",
        _range(0, 30 * 86400))
    idle_in_transaction_timeout_seconds: float = setting(
        60.0, "End sessions idle this long inside a transaction, rolling it back and "
        "releasing its locks (0 = never).", _range(0, 30 * 86400))
    max_statement_bytes: int = setting(
        1024 * 1024, "Longest SQL statement text accepted.", _range(64, 1024 * 1024 * 1024))
    max_result_buffer_bytes: int = setting(
        4 * 1024 * 1024,
        "Result bytes the server buffers for one slow-reading session before pausing.",
        _range(64 * 1024, 1024 * 1024 * 1024))
    max_value_bytes: int = setting(
        16 * 1024 * 1024, "SQLite: largest text or blob a statement may make, store or read "
        "(zeroblob, repeat...); raise it together with max_message_bytes.",
        _range(1024, 1_000_000_000))
    max_statement_result_bytes: int = setting(  # PostgreSQL: rows one round trip brings in
        64 * 1024 * 1024, "PostgreSQL: most result bytes one round trip (a query's first 64 "
        "rows, a FETCH, an EXECUTE, a RETURNING) may bring into the server; beyond, it is "
        "cancelled (54000). Unread results of all sessions: pool_size times it (53200).",
        _range(1024 * 1024, 1024 * 1024 * 1024))
    max_sqlite_memory_mb: int = setting(
        1024, "SQLite: most memory all sessions' statements use together; a statement going "
        "beyond fails with \"out of memory\" (0 = no limit).", _range(0, 1 << 20))
    statement_timeout_seconds: float = setting(
        300.0, "A statement (or method) running longer is cancelled (0 = never); sessions may "
        "lower it, only admins may raise it.", _range(0, 30 * 86400))


@dataclasses.dataclass(frozen=True)
class MethodsSettings:
    time_limit_seconds: float = setting(
        30.0, "A server method running longer is stopped and its changes undone.",
        _range(0.01, 86400))


@dataclasses.dataclass(frozen=True)
class AdminWebSettings:
    enabled: bool = setting(False, "Serve the web administration page (admin users only).")
    listen: tuple[str, ...] = setting(
        ("127.0.0.1",), "Addresses of the web page; beyond loopback it is always HTTPS.", _LISTEN)
    port: int = setting(DEFAULT_PORT + 1, "TCP port of the web page (0 picks a free port).",
                        _range(0, 65535))
    session_minutes: int = setting(30, "Web login lifetime.", _range(1, 24 * 60))

    def needs_https(self, encrypted: bool) -> bool:
        """HTTPS when connections are encrypted, and always beyond loopback."""
        loopback = {"127.0.0.1", "::1", "localhost"}
        return encrypted or any(a not in loopback for a in self.listen)


@dataclasses.dataclass(frozen=True)
class AuthSettings:
    method: str = setting(
        "scram", "How users log in: \"scram\" (password), \"certificate\" (client certificate "
        "alone) or \"certificate+scram\" (both); certificates need "
        "require_client_certificate.", _choice(*AUTH_METHODS))
    groups: tuple[tuple[str, str], ...] = setting(
        (), "Per-group method, overriding auth.method.", _METHODS_TABLE, table=True,
        example=('groups = { clerks = "certificate+scram" }',))
    users: tuple[tuple[str, str], ...] = setting(
        (), "Per-user method, overriding the group's.", _METHODS_TABLE, table=True,
        example=('users = { alice = "certificate" }',))
    certificate_names: str = setting(
        "cn", "Which user a client certificate names: \"cn\" (its common name is the user "
        "name) or \"map\" (Resources/client-users.conf, lines CERT-NAME USER).",
        _choice("cn", "map"))

    def method_for(self, user: str, group: str) -> str:
        """The user's own method, else the group's, else ``method``."""
        return dict(self.users).get(user) or dict(self.groups).get(group) or self.method

    @property
    def uses_certificates(self) -> bool:
        return any("certificate" in m for m in (self.method, *dict(self.groups).values(),
                                                 *dict(self.users).values()))


@dataclasses.dataclass(frozen=True)
class AccessSettings:
    max_sessions_per_address: int = setting(
        100, "Most sessions from one client IP address.", _range(1, 100000))
    max_unauthenticated_per_address: int = setting(
        64, "Most connections from one client IP address that have not finished login.",
        _range(1, 100000))
    throttle_after_failures: int = setting(
        3, "Failed logins (per address and per user) before each new attempt is delayed.",
        _range(1, 1000))
    throttle_base_delay_seconds: float = setting(
        0.5, "First delay; it doubles with each further failure.", _range(0, 60))
    throttle_max_delay_seconds: float = setting(
        5.0, "Cap of the delay (keep it below limits.login_timeout_seconds).", _range(0, 60))
    throttle_forget_seconds: float = setting(
        600.0, "Failures older than this are forgotten, so nobody is locked out for good.",
        _range(1, 86400))
    rules: tuple[AccessRule, ...] = setting(
        (), "Ordered IP rules, first match wins; no rule matching = allowed. Checked before "
        "TLS or any protocol byte.", _RULES, convert=_rules,
        example=("[[access.rules]]", 'action = "allow"', 'from = "127.0.0.1"',
                 "[[access.rules]]", 'action = "deny"', 'from = "*"'))

    def check_address(self, address: str) -> AccessRule | None:
        """The first rule matching ``address``, or None (no rule: allowed)."""
        for rule in self.rules:
            if rule.matches(address):
                return rule
        return None


@dataclasses.dataclass(frozen=True)
class Settings:
    """The whole file: one attribute per ``[section]``, in the order of the file."""

    network: NetworkSettings = NetworkSettings()
    storage: StorageSettings = StorageSettings()
    limits: LimitsSettings = LimitsSettings()
    methods: MethodsSettings = MethodsSettings()
    admin_web: AdminWebSettings = AdminWebSettings()
    auth: AuthSettings = AuthSettings()
    access: AccessSettings = AccessSettings()

    def replace_network(self, **changes: Any) -> Settings:
        """Return a copy with network settings overridden (``serve --host/--port``)."""
        return dataclasses.replace(self, network=dataclasses.replace(self.network, **changes))


# -- the schema, read from the declarations above ----------------------------------------------

_SCHEMA = read_schema(Settings)
_SECTION_TYPES: dict[str, Any] = typing.get_type_hints(Settings)


def _all_fields() -> Iterator[Field]:
    for fields in _SCHEMA.values():
        yield from fields


def _check_value(f: Field, value: Any, source: str) -> Any:
    bad_bool = isinstance(value, bool) and bool not in f.kind
    if bad_bool or not isinstance(value, f.kind):
        raise SettingsError(f"{source}: {f.key} = {value!r} is not valid: "
                            f"expected {type_name(f.kind)}")
    if f.check is not None and (detail := f.check.problem(value)) is not None:
        raise SettingsError(f"{source}: {f.key} = {value!r} is not valid: "
                            f"expected {f.check.allowed}{detail}")
    return _convert(f, value)


def _convert(f: Field, value: Any) -> Any:
    """A valid TOML value as the attribute holds it: lists and tables as tuples, numbers as floats."""
    if f.convert is not None:
        return f.convert(value)
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return tuple(sorted(value.items()))
    return float(value) if f.kind == (int, float) else value


# -- checks across settings: (what the docs say, the check giving the error or None) ----------

def _pg_needs_dsn(s: Settings) -> str | None:
    if s.storage.backend == "postgresql" and not s.storage.dsn.strip():
        return ("storage.dsn = '' is not valid: the postgresql backend needs a libpq connection "
                "string, e.g. \"host=db.example.com dbname=casemate user=casemate "
                "sslmode=verify-full\"")
    return None


def _throttle_below_login(s: Settings) -> str | None:
    delay, login = s.access.throttle_max_delay_seconds, s.limits.login_timeout_seconds
    if delay >= login:
        return (f"access.throttle_max_delay_seconds = {delay:g} is not valid: it must be below "
                f"limits.login_timeout_seconds ({login:g}), or every throttled login would time "
                "out and a user could be locked out")
    return None


def _certificates_need_tls(s: Settings) -> str | None:
    net = s.network
    if s.auth.uses_certificates and not (net.require_client_certificate
                                         and net.encrypt_client_server_connections):
        return ("auth methods with \"certificate\" need network.require_client_certificate = "
                "true and encrypt_client_server_connections = true")
    return None


_CROSS_CHECKS: tuple[tuple[str, Callable[[Settings], str | None]], ...] = (
    ("`storage.backend = \"postgresql\"` needs a non-empty `storage.dsn`.", _pg_needs_dsn),
    ("An `[auth]` method with \"certificate\" needs `network.require_client_certificate` and "
     "`network.encrypt_client_server_connections`.", _certificates_need_tls),
    ("`access.throttle_max_delay_seconds` must be below `limits.login_timeout_seconds`.",
     _throttle_below_login),
)


def parse_settings(data: Mapping[str, Any], source: str = "casemate.toml") -> Settings:
    """Validate a parsed TOML document; raises SettingsError naming the bad key."""
    for section, body in data.items():
        if section not in _SCHEMA:
            raise SettingsError(
                f"{source}: unknown section [{section}]; known sections: " + ", ".join(_SCHEMA)
            )
        if not isinstance(body, dict):
            raise SettingsError(f"{source}: {section} must be a [{section}] table")
    sections = {}
    for section, fields in _SCHEMA.items():
        body = data.get(section, {})
        known = {f.name for f in fields}
        for key in body:
            if key not in known:
                raise SettingsError(
                    f"{source}: unknown setting {section}.{key}; known settings in "
                    f"[{section}]: " + ", ".join(sorted(known))
                )
        values = {f.name: _check_value(f, body[f.name], source) for f in fields if f.name in body}
        sections[section] = _SECTION_TYPES[section](**values)  # missing keys: their defaults
    settings = Settings(**sections)
    for _, check in _CROSS_CHECKS:
        if (problem := check(settings)) is not None:
            raise SettingsError(f"{source}: {problem}")
    return settings


def load_settings(path: Path) -> Settings:
    """Read and validate ``path``; raises SettingsError (also for a TOML syntax error)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SettingsError(f"cannot read {path}: {e.strerror}") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"{path}: not valid TOML: {e}") from e
    return parse_settings(data, str(path))
