"""Rights do not outlive their removal (SQLite storage; PostgreSQL: tests/postgresql).

A removed admin must not keep its admin session; a user moved to another group or a
group whose grants change gets the new rights at the next statement (or is ended),
whether the change came over the wire or from ``casemate user ...`` run on the folder
while the server runs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import casemate
from casemate.database import make_verifier
from tests.conftest import ServerProcess, items_for_clerks

PW = "live-rights-pw"
METHODS = '''
from casemate.methods import method


@method
def ping(db) -> int:
    return 1
'''


def add_user(admin: casemate.Connection, name: str, group: str) -> None:
    rec = make_verifier(name, PW, group)
    admin.admin("user_add", name=name, group=group,
                verifier=[rec.salt, rec.stored_key, rec.server_key, rec.iterations])


def login(server: ServerProcess, name: str) -> casemate.Connection:
    return casemate.connect(host="127.0.0.1", port=server.port, user=name, password=PW)


def cli(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "casemate", *args], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def ended(conn: casemate.Connection, run: Callable[[], object]) -> str:
    """Run a request that must find its session ended (NOTICE 57P06, then closed)."""
    with pytest.raises(casemate.OperationalError) as e:
        run()
    assert e.value.code in ("08006", "08007")  # connection lost (08007: outcome unknown)
    assert [c for c, _ in conn.notices] == ["57P06"]
    return str(e.value)


def users(admin: casemate.Connection) -> set[str]:
    return {r[0] for r in admin.admin("user_list")}


@pytest.fixture
def server(make_db, server_factory) -> ServerProcess:  # type: ignore[no-untyped-def]
    db: Path = make_db()
    (db / "Methods").mkdir(exist_ok=True)
    (db / "Methods" / "tools.py").write_text(METHODS)
    s: ServerProcess = server_factory(db)
    with s.connect() as admin:
        items_for_clerks(admin)
        admin.admin("grant", group="clerks", table="method:ping", privileges=["EXECUTE"])
        for name, group in (("boss", "admin"), ("bob", "readwrite"), ("clerk", "clerks")):
            add_user(admin, name, group)
    return s


def test_removed_admin_cannot_create_an_admin(server: ServerProcess) -> None:
    """The issue's attack: a removed admin's open session creates a new admin."""
    with login(server, "boss") as boss, server.connect() as admin:
        assert users(boss) >= {"boss"}
        admin.admin("user_remove", name="boss")
        e = ended(boss, lambda: add_user(boss, "mallory", "admin"))
        assert 'user "boss" was removed by an administrator' in e
        assert "mallory" not in users(admin)


def test_cli_change_on_the_folder_applies_to_open_sessions(server: ServerProcess) -> None:
    with login(server, "boss") as boss, login(server, "bob") as bob:
        bob.execute("SELECT 1")
        cli("user", "remove", str(server.db), "boss")
        cli("user", "group", str(server.db), "bob", "readonly")
        ended(boss, lambda: boss.admin("user_list"))
        e = ended(bob, lambda: bob.execute("INSERT INTO items VALUES (2, 'pear')"))
        assert 'user "bob" was moved from group readwrite to readonly' in e
    with server.connect() as admin:
        assert admin.execute("SELECT count(*) FROM items").fetchone() == (1,)


def test_grant_changes_apply_inside_an_open_transaction(server: ServerProcess) -> None:
    with login(server, "clerk") as clerk:
        # The DB-API opens a transaction: its storage connection is held, and the old code
        # kept that connection's policy until the transaction ended.
        assert clerk.execute("SELECT name FROM items").fetchall() == [("apple",)]
        assert clerk.in_transaction
        assert clerk.call("ping") == 1
        cli("group", "revoke", str(server.db), "clerks", "items", "SELECT")
        cli("group", "revoke", str(server.db), "clerks", "method:ping", "EXECUTE")
        with pytest.raises(casemate.ProgrammingError) as e:
            clerk.execute("SELECT name FROM items")
        assert e.value.code == "42501"
        with pytest.raises(casemate.ProgrammingError) as e:
            clerk.call("ping")
        assert e.value.code == "42501" and "EXECUTE on method ping" in str(e.value)
        with server.connect() as admin:  # and a grant given over the wire applies too
            admin.admin("grant", group="clerks", table="items", privileges=["SELECT"])
        assert clerk.execute("SELECT name FROM items").fetchall() == [("apple",)]


def test_idle_session_of_a_removed_user_is_ended(server: ServerProcess) -> None:
    with login(server, "bob"), server.connect() as admin:
        def bobs() -> list[object]:
            return [r for r in admin.admin("sessions") if r[1] == "bob"]
        assert bobs()
        cli("user", "remove", str(server.db), "bob")
        deadline = time.monotonic() + 10
        while bobs() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not bobs()
