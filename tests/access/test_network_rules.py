"""IP access rules (IPv4 and IPv6, loopback only) and login throttling, against real servers.

The server listens on 127.0.0.1 and ::1 at once, so one process shows a rule applying to
one family and not the other.  IPv6 parts are skipped when ::1 is not usable here.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

import casemate
from tests.conftest import ADMIN_PASSWORD, HAVE_V6, ServerProcess, set_setting

needs_v6 = pytest.mark.skipif(not HAVE_V6, reason="no IPv6 loopback (::1) on this machine")
BOTH = ("--host", "127.0.0.1", "--host", "::1")


def add_rules(db: Path, *rules: tuple[str, str]) -> None:
    """Append [[access.rules]] tables; [access] is the last section of casemate.toml."""
    text = "".join(f'\n[[access.rules]]\naction = "{a}"\nfrom = "{f}"\n' for a, f in rules)
    with open(db / "casemate.toml", "a", encoding="utf-8") as fh:
        fh.write(text)


def start(server_factory: Any, db: Path) -> ServerProcess:
    return server_factory(db, extra=BOTH if HAVE_V6 else ())  # type: ignore[no-any-return]


def connect(server: ServerProcess, host: str, password: str = ADMIN_PASSWORD,
            **kw: Any) -> casemate.Connection:
    return casemate.connect(host=host, port=server.port, user="admin", password=password, **kw)


def audit(db: Path) -> list[dict[str, Any]]:
    path = db / "Logs" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def wait_events(db: Path, kind: str, n: int, timeout: float = 5) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in audit(db) if e["event"] == kind]
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def raw_refusal(host: str, port: int) -> tuple[bytes, dict[str, Any]]:
    """Connect without sending a byte; return (type byte, body) of what the server sends."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect((host, port))
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert len(data) >= 5, data
    kind, length = struct.unpack(">cI", data[:5])
    assert len(data) == 5 + length, data  # exactly one frame, then end of file
    return kind, msgpack.unpackb(data[5:])


def assert_refused(server: ServerProcess, host: str) -> None:
    with pytest.raises(casemate.OperationalError) as ei:
        connect(server, host)
    assert ei.value.code == "28000", ei.value
    assert "access rules" in ei.value.message
    kind, body = raw_refusal(host, server.port)
    assert kind == b"E"
    assert body["code"] == "28000" and "access rules" in body["message"]


def assert_works(server: ServerProcess, host: str) -> None:
    with connect(server, host) as conn:
        assert conn.execute("SELECT 1 + 1").fetchall() == [(2,)]


# -- IP rules --------------------------------------------------------------------------------
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_deny_ipv4_loopback(make_db, server_factory, encrypted: bool) -> None:  # type: ignore[no-untyped-def]
    db = make_db(encrypted=encrypted)
    add_rules(db, ("deny", "127.0.0.1"))
    server = start(server_factory, db)
    assert_refused(server, "127.0.0.1")
    if HAVE_V6:
        assert_works(server, "::1")
    refused = wait_events(db, "connection_refused", 1)
    assert refused and all(e["address"] == "127.0.0.1" and e["rule"] == "127.0.0.1"
                           for e in refused)
    assert not [e for e in audit(db) if e["event"] == "login_ok" and e["address"] == "127.0.0.1"]
    if HAVE_V6:
        accepted = [e for e in audit(db) if e["event"] == "connection_accepted"]
        assert accepted and all(e["address"] == "::1" and e["rule"] is None for e in accepted)


@needs_v6
def test_allow_ipv6_deny_everything_else(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    add_rules(db, ("allow", "::1"), ("deny", "*"))
    server = start(server_factory, db)
    assert_works(server, "::1")
    assert_refused(server, "127.0.0.1")
    events = audit(db)
    refused = [e for e in events if e["event"] == "connection_refused"]
    assert refused and all(e == {**e, "address": "127.0.0.1", "rule": "*"} for e in refused)
    accepted = [e for e in events if e["event"] == "connection_accepted"]
    assert accepted and all(e["address"] == "::1" and e["rule"] == "::1" for e in accepted)
    logins = [e for e in events if e["event"] == "login_ok"]
    assert logins and {e["address"] for e in logins} == {"::1"}


def test_cidr_rules_first_match_wins(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    # ::1 is denied by the first rule; 127.0.0.1 allowed by the CIDR before the catch-all deny.
    add_rules(db, ("deny", "::1/128"), ("allow", "127.0.0.0/8"), ("deny", "*"))
    server = start(server_factory, db)
    assert_works(server, "127.0.0.1")
    if HAVE_V6:
        assert_refused(server, "::1")
        assert {e["rule"] for e in audit(db) if e["event"] == "connection_refused"} == {"::1/128"}
    assert {e["rule"] for e in audit(db) if e["event"] == "connection_accepted"} == {"127.0.0.0/8"}


def test_bad_rule_stops_the_server_from_starting(make_db) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    add_rules(db, ("deny", "localhost-ish"))
    r = subprocess.run([sys.executable, "-m", "casemate", "serve", str(db), "--port", "0"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "access.rules" in r.stdout + r.stderr and "localhost-ish" in r.stdout + r.stderr


# -- throttling ------------------------------------------------------------------------------
def _attempt(server: ServerProcess, password: str) -> tuple[float, casemate.Error | None]:
    t = time.monotonic()
    try:
        conn = connect(server, "127.0.0.1", password=password)
    except casemate.Error as e:
        return time.monotonic() - t, e
    conn.close()
    return time.monotonic() - t, None


def test_throttling_slows_guessing_without_locking_out(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    set_setting(db, "throttle_after_failures", "3")
    set_setting(db, "throttle_base_delay_seconds", "0.1")
    set_setting(db, "throttle_max_delay_seconds", "0.8")
    set_setting(db, "throttle_forget_seconds", "3.0")
    server = server_factory(db)
    _, err = _attempt(server, ADMIN_PASSWORD)  # a correct login costs little
    assert err is None
    # A bounded brute force: expected delays 0, 0, 0, 0.1, 0.2, 0.4, 0.8 (cap), 0.8.
    times = []
    for i in range(8):
        took, err = _attempt(server, f"wrong-guess-{i}")
        assert isinstance(err, casemate.OperationalError) and err.code == "28P01", err
        times.append(took)
    assert max(times[:3]) < 0.3, times
    assert times[3] >= 0.09 and times[4] >= 0.19 and times[5] >= 0.38, times
    assert times[6] >= 0.75 and times[7] >= 0.75, times
    assert max(times) < 0.8 + 1.0, times  # capped at throttle_max_delay_seconds
    assert sum(times[5:]) > 4 * sum(times[:3]) + 1.5, times
    # The right password still works while throttled: delayed, not locked out.
    took, err = _attempt(server, ADMIN_PASSWORD)
    assert err is None
    assert took >= 0.75, took
    # Success cleared the counters; fail again, then wait out throttle_forget_seconds.
    for i in range(6):  # delays 0, 0, 0, 0.1, 0.2, 0.4: the next attempt would wait 0.8 s
        _, err = _attempt(server, f"again-{i}")
        assert err is not None
    time.sleep(3.2)
    took, err = _attempt(server, ADMIN_PASSWORD)
    assert err is None
    assert took < 0.4, took
    failed = [e for e in audit(db) if e["event"] == "login_failed"]
    assert len(failed) == 14 and {e["user"] for e in failed} == {"admin"}
    assert {e["address"] for e in failed} == {"127.0.0.1"}
