"""casemate status / sessions / drop / message / accept / reject against real servers."""

import json
import subprocess
import sys
import time

import pytest

import casemate
from tests.conftest import set_setting


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "casemate", *args], capture_output=True,
                          text=True, timeout=60)


def test_plain_and_encrypted_sessions_side_by_side(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    plain = server_factory(db)
    port = plain.port
    old = plain.connect()
    old.execute("SELECT 1")
    plain.stop()
    set_setting(db, "encrypt_client_server_connections", "true")
    enc = server_factory(db, port=port)
    # A plain-mode client and an encrypted one on the same server is impossible by design;
    # "side by side" here is: the status/sessions rows before and after the restart.
    with enc.connect() as conn:
        conn.execute("SELECT 1")
        r = cli("sessions", enc.url, "--json")
        assert r.returncode == 0, r.stderr
        rows = json.loads(r.stdout)
        mine = [s for s in rows if s["id"] == conn.session_id][0]
        assert mine["encrypted"] is True and mine["tls_version"].startswith("TLSv1.")
        assert mine["cipher"] and mine["statements"] == 1 and mine["in_transaction"] is True
        st = json.loads(cli("status", enc.url, "--json").stdout)
        assert st["mode"] == "encrypted" and st["min_tls_version"] == "1.2"
        assert st["certificate_days_left"] > 300 and st["key_sha256"].startswith("sha256:")
        text = cli("status", enc.url).stdout
        assert "encrypted (TLS 1.2 minimum)" in text and "Restart pending: no" in text
    old.close()


def test_plain_status_and_text_sessions(plain_server) -> None:  # type: ignore[no-untyped-def]
    with plain_server.connect() as conn:
        conn.execute("SELECT 1")
        st = json.loads(cli("status", plain_server.url, "--json").stdout)
        assert st["mode"] == "plain" and st["certificate_subject"] is None
        assert st["sessions"] >= 1 and st["accepting"] is True
        out = cli("sessions", plain_server.url).stdout
        line = [ln for ln in out.splitlines()
                if ln.lstrip().startswith(f"{conn.session_id} |")][0]
        assert "| no  |" in line and "127.0.0.1" in line


def test_restart_pending_reported(plain_server) -> None:  # type: ignore[no-untyped-def]
    set_setting(plain_server.db, "encrypt_client_server_connections", "true")
    st = json.loads(cli("status", plain_server.url, "--json").stdout)
    assert st["restart_pending"] is True and st["mode"] == "plain"


def test_drop_message_accept_reject(plain_server) -> None:  # type: ignore[no-untyped-def]
    victim = plain_server.connect(reconnect_attempts=0)
    got: list[tuple[str, str]] = []
    victim.on_notice = lambda code, text: got.append((code, text))
    victim.execute("CREATE TABLE t (a)")
    victim.commit()
    victim.execute("INSERT INTO t VALUES (1)")
    assert cli("message", plain_server.url, "--session", str(victim.session_id),
               "maintenance at noon").returncode == 0
    r = cli("drop", plain_server.url, str(victim.session_id), "--reason", "test")
    assert r.returncode == 0, r.stderr
    time.sleep(0.2)
    with pytest.raises(casemate.OperationalError) as e:
        victim.execute("SELECT 1")
    assert "dropped by administrator" in str(e.value) and "rolled back" in str(e.value)
    assert ("01M00", "message from admin: maintenance at noon") in got
    with plain_server.connect() as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    admin = plain_server.connect()
    assert cli("reject", plain_server.url).returncode == 0
    with pytest.raises(casemate.OperationalError) as e2:
        plain_server.connect()
    assert "not accepting" in str(e2.value)
    assert admin.execute("SELECT 1").fetchone() == (1,)  # current sessions carry on
    admin.admin("accept")
    plain_server.connect().close()
    admin.close()
    victim.close()


def test_non_admin_refused(plain_server) -> None:  # type: ignore[no-untyped-def]
    assert cli("user", "add", str(plain_server.db), "clerk", "--group", "readwrite",
               "--password", "clerk-pw").returncode == 0
    url = plain_server.url.replace("admin:admin-secret-pw", "clerk:clerk-pw")
    for args in (["status", url], ["sessions", url], ["drop", url, "1"],
                 ["message", url, "hi"], ["accept", url], ["reject", url],
                 ["user", "list", url], ["group", "list", url]):
        r = cli(*args)
        assert r.returncode != 0, args
        assert "needs the admin group" in r.stderr, (args, r.stderr)
