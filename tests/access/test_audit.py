"""Logs/audit.jsonl against real servers: what each event holds, and what it never holds
(passwords, statement parameters and text, key material)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

import casemate
from casemate.database import make_verifier
from tests.conftest import ADMIN_PASSWORD, ServerProcess

USER_PW = "S3cret-New-User-pw"
WRONG_PW = "Wr0ng-Guess-pw-71"
PARAM = "PARAM-MARKER-1234-secret-value"
SQL_MARK = "SQLTEXT-MARKER-5678"


def audit(db: Path) -> list[dict[str, Any]]:
    text = (db / "Logs" / "audit.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def wait_for(db: Path, pred: Any, timeout: float = 5) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in audit(db) if pred(e)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def connect(server: ServerProcess, user: str = "admin", password: str = ADMIN_PASSWORD,
            **kw: Any) -> casemate.Connection:
    return casemate.connect(host="127.0.0.1", port=server.port, user=user, password=password,
                            **kw)


def add_user(admin: casemate.Connection, name: str, group: str, password: str) -> None:
    rec = make_verifier(name, password, group)
    admin.admin("user_add", name=name, group=group,
                verifier=[rec.salt, rec.stored_key, rec.server_key, rec.iterations])


def session_events(db: Path, session: int) -> dict[str, dict[str, Any]]:
    return {e["event"]: e for e in audit(db) if e.get("session") == session}


def test_every_line_is_a_json_event(plain_server: ServerProcess) -> None:
    with connect(plain_server) as c:
        c.execute("SELECT 1")
    events = wait_for(plain_server.db, lambda e: e["event"] == "disconnect")
    assert events
    for e in audit(plain_server.db):
        assert set(e) >= {"ts", "event"}
        assert e["event"] in {"connection_accepted", "connection_refused", "login_ok",
                              "login_failed", "disconnect", "permission_refused", "admin"}
        assert e["ts"].endswith("+00:00")


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_login_ok_and_disconnect(make_db, server_factory, encrypted: bool) -> None:  # type: ignore[no-untyped-def]
    db = make_db(encrypted=encrypted)
    server = server_factory(db)
    c = connect(server, program="audit-test-program")
    sid = c.session_id
    security = c.security
    assert security.encrypted == encrypted
    time.sleep(0.2)
    c.close()
    assert wait_for(db, lambda e: e["event"] == "disconnect" and e["session"] == sid)
    ev = session_events(db, sid)
    ok = ev["login_ok"]
    assert ok["user"] == "admin" and ok["address"] == "127.0.0.1"
    assert ok["encrypted"] is encrypted
    assert ok["program"] == "audit-test-program"
    assert ok["client_certificate"] is None
    if encrypted:
        assert ok["tls_version"] in ("TLSv1.2", "TLSv1.3")
        assert ok["tls_version"] == security.tls_version
        assert isinstance(ok["cipher"], str) and ok["cipher"] == security.cipher
    else:
        assert ok["tls_version"] is None and ok["cipher"] is None
    bye = ev["disconnect"]
    assert bye["user"] == "admin" and bye["address"] == "127.0.0.1"
    assert isinstance(bye["duration"], float | int) and 0.2 <= bye["duration"] < 10
    assert bye["reason"] == "client closed the session"
    accepted = [e for e in audit(db) if e["event"] == "connection_accepted"]
    assert accepted and all(e["address"] == "127.0.0.1" for e in accepted)


def test_login_failed(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db(encrypted=True)
    server = server_factory(db)
    for user in ("admin", "no-such-user"):
        with pytest.raises(casemate.OperationalError) as ei:
            connect(server, user=user, password=WRONG_PW)
        assert ei.value.code == "28P01"
    failed = [e for e in audit(db) if e["event"] == "login_failed"]
    assert [e["user"] for e in failed] == ["admin", "no-such-user"]
    for e in failed:
        assert e["address"] == "127.0.0.1" and e["encrypted"] is True
        assert e["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert not [e for e in audit(db) if e["event"] == "login_ok"]


def test_permission_refused_and_admin_events(plain_server: ServerProcess) -> None:
    db = plain_server.db
    with connect(plain_server) as admin:
        admin.execute("CREATE TABLE t (x TEXT)")
        admin.commit()
        add_user(admin, "reader", "readonly", USER_PW)
        admin.admin("group_add", name="auditors")
        admin.admin("grant", group="auditors", table="t", privileges=["SELECT"])
        admin_sid = admin.session_id
    with connect(plain_server, user="reader", password=USER_PW) as r:
        sid = r.session_id
        with pytest.raises(casemate.ProgrammingError):
            r.execute("INSERT INTO t VALUES (?)", (PARAM,))
        r.rollback()
        with pytest.raises(casemate.ProgrammingError):
            r.admin("user_list")
    refused = [e for e in audit(db) if e["event"] == "permission_refused"]
    assert len(refused) == 2
    assert all(e["session"] == sid and e["user"] == "reader" and e["address"] == "127.0.0.1"
               for e in refused)
    assert "INSERT on table t" in refused[0]["detail"]
    assert "user_list" in refused[1]["detail"]
    admin_events = [e for e in audit(db) if e["event"] == "admin"]
    assert [(e["command"], e["target"]) for e in admin_events] == [
        ("user_add", "reader"), ("group_add", "auditors"), ("grant", "auditors")]
    assert all(e["user"] == "admin" and e["session"] == admin_sid for e in admin_events)


def test_no_secrets_in_the_logs(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db(encrypted=True)
    server = server_factory(db)
    with connect(server) as admin:
        admin.execute(f"CREATE TABLE t (x TEXT) -- {SQL_MARK}")
        admin.execute(f"INSERT INTO t VALUES (?) -- {SQL_MARK}", (PARAM,))
        admin.commit()
        add_user(admin, "reader", "readonly", USER_PW)
        rec = make_verifier("reader", USER_PW + "-2", "-")
        admin.admin("user_passwd", name="reader",
                    verifier=[rec.salt, rec.stored_key, rec.server_key, rec.iterations])
    with pytest.raises(casemate.OperationalError):
        connect(server, password=WRONG_PW)
    with connect(server, user="reader", password=USER_PW + "-2") as r:
        assert r.execute("SELECT x FROM t WHERE x = ?", (PARAM,)).fetchall() == [(PARAM,)]
        with pytest.raises(casemate.ProgrammingError):
            r.execute(f"UPDATE t SET x = ? -- {SQL_MARK}", (PARAM + "-new",))
        r.rollback()
        with pytest.raises(casemate.Error):
            r.execute(f"SELECT nonsense FROM {SQL_MARK}", (PARAM,))
    wait_for(db, lambda e: e["event"] == "disconnect" and e["user"] == "reader")
    server.stop()  # flush and close every log

    key_pem = (db / "Resources" / "key.pem").read_text()
    key_lines = [ln for ln in key_pem.splitlines() if ln and not ln.startswith("-----")]
    assert key_lines
    secrets = [ADMIN_PASSWORD, USER_PW, WRONG_PW, PARAM, SQL_MARK, "PRIVATE KEY", *key_lines]
    audit_text = (db / "Logs" / "audit.jsonl").read_text(encoding="utf-8")
    kinds = {e["event"] for e in audit(db)}
    assert {"login_ok", "login_failed", "permission_refused", "admin", "disconnect"} <= kinds
    for s in secrets:
        assert s not in audit_text, s
    # Nor in the other logs or the console output.
    for path in (db / "Logs").iterdir():
        text = path.read_text(encoding="utf-8", errors="replace")
        for s in (ADMIN_PASSWORD, USER_PW, WRONG_PW, PARAM, "PRIVATE KEY", *key_lines):
            assert s not in text, (path.name, s)
    for s in (ADMIN_PASSWORD, USER_PW, WRONG_PW, PARAM, "PRIVATE KEY", *key_lines):
        assert s not in server.log(), s
