"""``casemate.toml`` -> frozen :class:`Settings`, with an error naming key, value and what is allowed.

The schema below is the single source of truth: it validates the file, it
gives defaults for missing keys, and :func:`render_default_toml` writes the
commented file that ``casemate init`` creates.  Settings are read once, at
server start.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_PORT",
    "SettingsError",
    "Settings",
    "NetworkSettings",
    "StorageSettings",
    "LimitsSettings",
    "AccessSettings",
    "AuthSettings",
    "AdminWebSettings",
    "AccessRule",
    "load_settings",
    "parse_settings",
    "render_default_toml",
    "set_toml_value",
]

DEFAULT_PORT = 19812


class SettingsError(ValueError):
    """A setting is unknown, of the wrong type or out of range; the message says which."""


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    default: Any
    kind: type | tuple[type, ...]
    comment: str
    check: Callable[[Any], str | None] | None = None  # returns "what is allowed" on failure
    example: tuple[str, ...] = ()  # rendered commented out instead of "key = default"


def _range(lo: float, hi: float) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if lo <= v <= hi else f"a number from {lo} to {hi}"
    return check


def _choice(*options: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in options else "one of " + ", ".join(repr(o) for o in options)
    return check


def _listen_list(v: Any) -> str | None:
    if not v or not all(isinstance(x, str) and x for x in v):
        return "a non-empty list of host names or IP addresses, e.g. [\"127.0.0.1\", \"::1\"]"
    return None


def _nonempty(v: Any) -> str | None:
    return None if v.strip() else "a non-empty string"


_RULES_HELP = ('a list of [[access.rules]] tables, each with action = "allow" or "deny" and '
               'from = an address, a CIDR such as "10.0.0.0/8" or "::1/128", or "*"')


def _rules(v: Any) -> str | None:
    for r in v:
        if not isinstance(r, dict) or set(r) != {"action", "from"}:
            return _RULES_HELP
        if r["action"] not in ("allow", "deny") or not isinstance(r["from"], str):
            return _RULES_HELP
        if r["from"] != "*":
            try:
                ipaddress.ip_network(r["from"], strict=False)
            except ValueError:
                return _RULES_HELP + f" (not an address or CIDR: {r['from']!r})"
    return None


AUTH_METHODS = ("scram", "certificate", "certificate+scram")


def _methods_table(v: Any) -> str | None:
    if all(isinstance(k, str) and m in AUTH_METHODS for k, m in v.items()):
        return None
    return "a table of names to one of " + ", ".join(repr(m) for m in AUTH_METHODS)


_SCHEMA: dict[str, list[_Field]] = {
    "network": [
        _Field("publication_name", "Casemate", str,
               "Name under which the server publishes this database (also the certificate subject).",
               _nonempty),
        _Field("listen", ["127.0.0.1"], list,
               "Addresses to listen on; use [\"0.0.0.0\", \"::\"] to accept remote workstations.",
               _listen_list),
        _Field("port", DEFAULT_PORT, int,
               f"TCP port (Casemate's default is {DEFAULT_PORT}; 0 picks a free port).",
               _range(0, 65535)),
        _Field("encrypt_client_server_connections", False, bool,
               "Encrypt all client/server connections with TLS (takes effect at the next start)."),
        _Field("min_tls_version", "1.2", str,
               "Lowest TLS version accepted when encryption is on: \"1.2\" or \"1.3\".",
               _choice("1.2", "1.3")),
        _Field("require_client_certificate", False, bool,
               "When encrypted, also require a client certificate signed by Resources/client-ca.pem."),
        _Field("event_loop", "auto", str,
               "Event loop of the server: \"uvloop\" (faster; pip install 'casemate[uvloop]'), "
               "\"asyncio\" (the standard library's), or \"auto\" (uvloop when installed).",
               _choice("auto", "uvloop", "asyncio")),
        _Field("keepalive_seconds", 30.0, (int, float),
               "A client silent this long that does not answer TCP keepalive probes is dead: "
               "its session ends and its transaction is rolled back (0 = off).",
               _range(0, 3600)),
        _Field("key_transition_days", 30, int,
               "After 'cert rotate' or a new key installed, the old key vouches for the new "
               "one this many days: pinned clients follow it meanwhile.", _range(1, 366)),
        _Field("publish_on_lan", "auto", str,
               "Announce this server on the LAN (DNS-SD/mDNS, _casemate._tcp): \"on\", \"off\", "
               "or \"auto\" (on when listening beyond loopback).", _choice("auto", "on", "off")),
    ],
    "storage": [
        _Field("backend", "sqlite", str,
               "Storage engine: \"sqlite\" (embedded, data in Data/) or \"postgresql\".",
               _choice("sqlite", "postgresql")),
        _Field("dsn", "", str,
               "PostgreSQL connection string (libpq), without the password; sslmode=require "
               "or verify-full for TLS to PostgreSQL."),
        _Field("password_env", "CASEMATE_PG_PASSWORD", str,
               "Environment variable holding the PostgreSQL password (if any)."),
        _Field("password_file", "", str,
               "File holding the PostgreSQL password (first line), if not in the environment."),
        _Field("pool_size", 20, int,
               "Most PostgreSQL connections this server opens (sessions in a transaction "
               "each hold one).", _range(1, 10000)),
        _Field("busy_timeout_seconds", 5.0, (int, float),
               "How long a writer waits for another session's write lock before \"database is busy\".",
               _range(0, 600)),
        _Field("worker_threads", 16, int,
               "Threads that run storage calls, so no session stalls the others.", _range(1, 256)),
        _Field("sqlite_mmap_mb", 1024, int,
               "SQLite: read the data file through a memory map of up to this many MiB "
               "(shared by all connections, no read() per page; 0 = off).", _range(0, 1 << 20)),
        _Field("inline_limit_ms", 0.2, (int, float),
               "SQLite calls seen to take less than this run in the event loop, without a "
               "thread hand-over (0 = always in worker threads).", _range(0, 100)),
    ],
    "limits": [
        _Field("max_sessions", 1000, int, "Most sessions connected at once.", _range(1, 100000)),
        _Field("max_message_bytes", 16 * 1024 * 1024, int,
               "Largest protocol message accepted (statement plus parameters).",
               _range(4096, 1024 * 1024 * 1024)),
        _Field("login_timeout_seconds", 10.0, (int, float),
               "A client must finish TLS, handshake and login within this time.", _range(0.1, 600)),
        _Field("max_unauthenticated_connections", 256, int,
               "Most connections at once that have not finished login (more are refused).",
               _range(1, 100000)),
        _Field("log_file_max_kb", 10240, int,
               "Logs/server.log and Logs/audit.jsonl start a new file past this size (KiB).",
               _range(16, 100 * 1024 * 1024)),
        _Field("log_files_kept", 5, int,
               "Rotated log files kept (audit.jsonl.1 is the newest; older ones are deleted).",
               _range(1, 1000)),
        _Field("idle_timeout_seconds", 0.0, (int, float),
               "Close sessions idle this long, rolling back their transaction (0 = never).",
               _range(0, 30 * 86400)),
        _Field("idle_in_transaction_timeout_seconds", 60.0, (int, float),
               "End sessions idle this long inside a transaction, rolling it back and "
               "releasing its locks (0 = never).", _range(0, 30 * 86400)),
        _Field("max_statement_bytes", 1024 * 1024, int,
               "Longest SQL statement text accepted.", _range(64, 1024 * 1024 * 1024)),
        _Field("max_result_buffer_bytes", 4 * 1024 * 1024, int,
               "Result bytes the server buffers for one slow-reading session before pausing.",
               _range(64 * 1024, 1024 * 1024 * 1024)),
        _Field("max_value_bytes", 16 * 1024 * 1024, int,
               "SQLite: largest text or blob a statement may make, store or read (zeroblob, "
               "repeat...); raise it together with max_message_bytes.",
               _range(1024, 1_000_000_000)),
        _Field("max_sqlite_memory_mb", 1024, int,
               "SQLite: most memory all sessions' statements use together; a statement going "
               "beyond fails with \"out of memory\" (0 = no limit).", _range(0, 1 << 20)),
        _Field("statement_timeout_seconds", 300.0, (int, float),
               "A statement (or method) running longer is cancelled (0 = never); sessions may "
               "lower it, only admins may raise it.", _range(0, 30 * 86400)),
    ],
    "methods": [
        _Field("time_limit_seconds", 30.0, (int, float),
               "A server method running longer is stopped and its changes undone.",
               _range(0.01, 86400)),
    ],
    "admin_web": [
        _Field("enabled", False, bool,
               "Serve the web administration page (admin users only)."),
        _Field("listen", ["127.0.0.1"], list,
               "Addresses of the web page; beyond loopback it is always HTTPS.", _listen_list),
        _Field("port", DEFAULT_PORT + 1, int, "TCP port of the web page (0 picks a free port).",
               _range(0, 65535)),
        _Field("session_minutes", 30, int, "Web login lifetime.", _range(1, 24 * 60)),
    ],
    "auth": [
        _Field("method", "scram", str,
               "How users log in: \"scram\" (password), \"certificate\" (client certificate "
               "alone) or \"certificate+scram\" (both); certificates need "
               "require_client_certificate.", _choice(*AUTH_METHODS)),
        _Field("groups", {}, dict, "Per-group method, overriding auth.method.", _methods_table,
               example=('groups = { clerks = "certificate+scram" }',)),
        _Field("users", {}, dict, "Per-user method, overriding the group's.", _methods_table,
               example=('users = { alice = "certificate" }',)),
        _Field("certificate_names", "cn", str,
               "Which user a client certificate names: \"cn\" (its common name is the user "
               "name) or \"map\" (Resources/client-users.conf, lines CERT-NAME USER).",
               _choice("cn", "map")),
    ],
    "access": [
        _Field("max_sessions_per_address", 100, int,
               "Most sessions from one client IP address.", _range(1, 100000)),
        _Field("max_unauthenticated_per_address", 64, int,
               "Most connections from one client IP address that have not finished login.",
               _range(1, 100000)),
        _Field("throttle_after_failures", 3, int,
               "Failed logins (per address and per user) before each new attempt is delayed.",
               _range(1, 1000)),
        _Field("throttle_base_delay_seconds", 0.5, (int, float),
               "First delay; it doubles with each further failure.", _range(0, 60)),
        _Field("throttle_max_delay_seconds", 5.0, (int, float),
               "Cap of the delay (keep it below limits.login_timeout_seconds).", _range(0, 60)),
        _Field("throttle_forget_seconds", 600.0, (int, float),
               "Failures older than this are forgotten, so nobody is locked out for good.",
               _range(1, 86400)),
        _Field("rules", [], list,
               "Ordered IP rules, first match wins; no rule matching = allowed. Checked before "
               "TLS or any protocol byte.", _rules,
               example=("[[access.rules]]", 'action = "allow"', 'from = "127.0.0.1"',
                        "[[access.rules]]", 'action = "deny"', 'from = "*"')),
    ],
}


@dataclasses.dataclass(frozen=True)
class NetworkSettings:
    publication_name: str
    listen: tuple[str, ...]
    port: int
    encrypt_client_server_connections: bool
    min_tls_version: str
    require_client_certificate: bool
    event_loop: str
    keepalive_seconds: float
    key_transition_days: int
    publish_on_lan: str


@dataclasses.dataclass(frozen=True)
class StorageSettings:
    backend: str
    dsn: str
    password_env: str
    password_file: str
    pool_size: int
    busy_timeout_seconds: float
    worker_threads: int
    sqlite_mmap_mb: int
    inline_limit_ms: float


@dataclasses.dataclass(frozen=True)
class LimitsSettings:
    max_sessions: int
    max_message_bytes: int
    login_timeout_seconds: float
    max_unauthenticated_connections: int
    log_file_max_kb: int
    log_files_kept: int
    idle_timeout_seconds: float
    idle_in_transaction_timeout_seconds: float
    max_statement_bytes: int
    max_result_buffer_bytes: int
    max_value_bytes: int
    max_sqlite_memory_mb: int
    statement_timeout_seconds: float


@dataclasses.dataclass(frozen=True)
class MethodsSettings:
    time_limit_seconds: float


@dataclasses.dataclass(frozen=True)
class AdminWebSettings:
    enabled: bool
    listen: tuple[str, ...]
    port: int
    session_minutes: int

    def needs_https(self, encrypted: bool) -> bool:
        """HTTPS when connections are encrypted, and always beyond loopback."""
        loopback = {"127.0.0.1", "::1", "localhost"}
        return encrypted or any(a not in loopback for a in self.listen)


@dataclasses.dataclass(frozen=True)
class AuthSettings:
    method: str
    groups: tuple[tuple[str, str], ...]
    users: tuple[tuple[str, str], ...]
    certificate_names: str

    def method_for(self, user: str, group: str) -> str:
        """The user's own method, else the group's, else ``method``."""
        return dict(self.users).get(user) or dict(self.groups).get(group) or self.method

    @property
    def uses_certificates(self) -> bool:
        return any("certificate" in m for m in (self.method, *dict(self.groups).values(),
                                                 *dict(self.users).values()))


@dataclasses.dataclass(frozen=True)
class AccessRule:
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


@dataclasses.dataclass(frozen=True)
class AccessSettings:
    max_sessions_per_address: int
    max_unauthenticated_per_address: int
    throttle_after_failures: int
    throttle_base_delay_seconds: float
    throttle_max_delay_seconds: float
    throttle_forget_seconds: float
    rules: tuple[AccessRule, ...]

    def check_address(self, address: str) -> AccessRule | None:
        """The first rule matching ``address``, or None (no rule: allowed)."""
        for rule in self.rules:
            if rule.matches(address):
                return rule
        return None


@dataclasses.dataclass(frozen=True)
class Settings:
    network: NetworkSettings
    storage: StorageSettings
    limits: LimitsSettings
    methods: MethodsSettings
    admin_web: AdminWebSettings
    access: AccessSettings
    auth: AuthSettings

    def replace_network(self, **changes: Any) -> Settings:
        """Return a copy with network settings overridden (``serve --host/--port``)."""
        return dataclasses.replace(self, network=dataclasses.replace(self.network, **changes))


def _rule(r: dict[str, str]) -> AccessRule:
    net = None if r["from"] == "*" else ipaddress.ip_network(r["from"], strict=False)
    return AccessRule(r["action"], net, r["from"])


_SECTION_CLASSES = {"access": AccessSettings, "auth": AuthSettings,
                    "admin_web": AdminWebSettings,
                    "methods": MethodsSettings,
                    "network": NetworkSettings,
                    "storage": StorageSettings, "limits": LimitsSettings}


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if set(kinds) == {int, float}:
        return "a number"  # not "an integer or a number"
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _check_value(section: str, f: _Field, value: Any, source: str) -> Any:
    key = f"{section}.{f.name}"
    bad_bool = isinstance(value, bool) and f.kind is not bool
    if bad_bool or not isinstance(value, f.kind):
        raise SettingsError(
            f"{source}: {key} = {value!r} is not valid: expected {_type_name(f.kind)}"
        )
    if f.check is not None and (allowed := f.check(value)) is not None:
        raise SettingsError(f"{source}: {key} = {value!r} is not valid: expected {allowed}")
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return tuple(sorted(value.items()))
    if f.kind == (int, float):
        return float(value)  # type: ignore[arg-type]
    return value


def parse_settings(data: dict[str, Any], source: str = "casemate.toml") -> Settings:
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
        body = dict(data.get(section, {}))
        known = {f.name for f in fields}
        for key in body:
            if key not in known:
                raise SettingsError(
                    f"{source}: unknown setting {section}.{key}; known settings in "
                    f"[{section}]: " + ", ".join(sorted(known))
                )
        values = {f.name: _check_value(section, f, body.get(f.name, f.default), source)
                  for f in fields}
        if section == "access":
            values["rules"] = tuple(_rule(r) for r in values["rules"])
        sections[section] = _SECTION_CLASSES[section](**values)
    _check_listen(sections["network"].listen, source)
    if sections["storage"].backend == "postgresql" and not sections["storage"].dsn.strip():
        raise SettingsError(f"{source}: storage.dsn = '' is not valid: the postgresql backend "
                            "needs a libpq connection string, e.g. \"host=db.example.com "
                            "dbname=casemate user=casemate sslmode=verify-full\"")
    net = sections["network"]
    if sections["auth"].uses_certificates and not (
            net.require_client_certificate and net.encrypt_client_server_connections):
        raise SettingsError(f"{source}: auth methods with \"certificate\" need "
                            "network.require_client_certificate = true and "
                            "encrypt_client_server_connections = true")
    delay, login = (sections["access"].throttle_max_delay_seconds,
                    sections["limits"].login_timeout_seconds)
    if delay >= login:
        raise SettingsError(
            f"{source}: access.throttle_max_delay_seconds = {delay:g} is not valid: it must be "
            f"below limits.login_timeout_seconds ({login:g}), or every throttled login would "
            "time out and a user could be locked out")
    return Settings(**sections)


def _check_listen(addresses: tuple[str, ...], source: str) -> None:
    for a in addresses:
        if a.startswith("[") or " " in a:
            raise SettingsError(
                f"{source}: network.listen entry {a!r} is not valid: expected a host name or an "
                "IP address without brackets or spaces"
            )


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


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        # TOML basic strings cannot hold control characters (a publication name taken
        # from a folder name may): escape them, as well as backslash and quote.
        text = v.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + "".join(f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F else c
                             for c in text) + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def render_default_toml(**overrides: Any) -> str:
    """The commented settings file with every key at its default (``overrides`` by name)."""
    lines = ["# Casemate database settings. Read once at server start:",
             "# restart the server after changing them.", ""]
    for section, fields in _SCHEMA.items():
        lines.append(f"[{section}]")
        for f in fields:
            lines.append(f"# {f.comment}")
            if f.example:
                lines.append("# For example:")
                lines.extend(f"# {e}" for e in f.example)
                continue
            lines.append(f"{f.name} = {_toml_value(overrides.get(f.name, f.default))}")
        lines.append("")
    return "\n".join(lines)


def set_toml_value(text: str, section: str, key: str, value: Any) -> str:
    """Return ``text`` with ``key`` in ``[section]`` set to ``value`` (comments kept).

    Raises SettingsError if the key is not in the file (every key is, in a
    file that ``casemate init`` wrote).
    """
    lines = text.splitlines()
    current = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[") and not stripped.startswith("[["):
            current = stripped.strip("[] ")
        elif current == section and re.match(rf"{re.escape(key)}\s*=", stripped):
            lines[i] = f"{key} = {_toml_value(value)}"
            return "\n".join(lines) + "\n"
    raise SettingsError(f"{section}.{key} is not in the settings file; add it under [{section}]")


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
