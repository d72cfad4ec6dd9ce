"""Rights do not outlive their removal, on PostgreSQL storage with two servers.

A change made through server ``a`` or by ``casemate user ...`` on a folder reaches the
open sessions of server ``b`` by LISTEN/NOTIFY on the shared database, milliseconds
after its commit; an admin command re-reads its user first, so a removed admin on ``b``
can do nothing even in those milliseconds.  The SQLite side of these tests is
tests/access/test_live_rights.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

import casemate
from casemate.pgtest import PostgresServer
from casemate.testing import ServerProcess
from tests.access.test_live_rights import METHODS, add_user, ended, login, users
from tests.conftest import items_for_clerks

from .conftest import cli, init_folder

ADMIN_PW = "admin-pg-live-pw"


@pytest.fixture(scope="module")
def pair(pg: PostgresServer, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    base = tmp_path_factory.mktemp("pglive")
    for name in ("a", "b"):
        r = init_folder(pg, base / name, ADMIN_PW)
        assert r.returncode == 0, r.stderr
        (base / name / "Methods").mkdir(exist_ok=True)
        (base / name / "Methods" / "tools.py").write_text(METHODS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CASEMATE_PG_PASSWORD", pg.password)
        a = ServerProcess(base / "a", password=ADMIN_PW).start()
        try:
            b = ServerProcess(base / "b", password=ADMIN_PW).start()
        except BaseException:
            a.stop()
            raise
    try:
        with a.connect() as admin:
            items_for_clerks(admin)
            admin.admin("grant", group="clerks", table="method:ping", privileges=["EXECUTE"])
        yield a, b
    finally:
        a.stop()
        b.stop()


def refused_soon(run: Callable[[], object]) -> str:
    """The code of the refusal ``run`` meets once server b has the change's notification
    (milliseconds after the commit on server a; 2 s at most here)."""
    deadline = time.monotonic() + 2
    while True:
        try:
            run()
        except casemate.ProgrammingError as e:
            return str(e.code)
        assert time.monotonic() < deadline, "the change never reached server b"
        time.sleep(0.01)


def _cli(pg: PostgresServer, *args: str) -> None:
    r = cli(*args, env={"CASEMATE_PG_PASSWORD": pg.password})
    assert r.returncode == 0, r.stderr


def test_removed_admin_on_another_server_cannot_create_an_admin(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    with a.connect() as admin:
        add_user(admin, "boss", "admin")
        with login(b, "boss") as boss:
            assert "boss" in users(boss)
            admin.admin("user_remove", name="boss")
            e = ended(boss, lambda: add_user(boss, "mallory", "admin"))
            assert 'user "boss" was removed' in e
        assert "mallory" not in users(admin)


def test_cli_group_change_reaches_the_other_server(pair, pg: PostgresServer) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    with a.connect() as admin:
        add_user(admin, "bob", "readwrite")
    with login(b, "bob") as bob:
        bob.execute("SELECT 1")
        _cli(pg, "user", "group", str(a.db), "bob", "readonly")
        e = ended(bob, lambda: bob.execute("INSERT INTO items VALUES (2, 'pear')"))
        assert "moved from group readwrite to readonly" in e


def test_method_grant_revoked_on_another_server_applies_in_a_transaction(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    with a.connect() as admin:
        add_user(admin, "clerk", "clerks")
        with login(b, "clerk") as clerk:
            assert clerk.execute("SELECT name FROM items").fetchall() == [("apple",)]
            assert clerk.call("ping") == 1 and clerk.in_transaction
            admin.admin("revoke", group="clerks", table="method:ping", privileges=["EXECUTE"])
            admin.admin("revoke", group="clerks", table="items", privileges=["SELECT"])
            assert refused_soon(lambda: clerk.call("ping")) == "42501"
            clerk.rollback()
            with pytest.raises(casemate.ProgrammingError) as e:
                clerk.execute("SELECT name FROM items")
            assert e.value.code == "42501"


def test_sessions_and_notifications_survive_a_postgresql_restart(pair, pg: PostgresServer) -> None:  # type: ignore[no-untyped-def]
    """Last in the module: restarts PostgreSQL under both servers."""
    a, b = pair
    with a.connect() as admin:
        add_user(admin, "dora", "readwrite")
    with login(b, "dora") as dora:
        assert dora.execute("SELECT 1").fetchone() == (1,)
        dora.commit()
        pg._run(str(pg.bin / "pg_ctl"), "-D", str(pg.data), "-l",
                str(pg.base / "postgres.log"), "-m", "fast", "-w", "restart")
        deadline = time.monotonic() + 10
        while True:  # a request may fail while connections are reopened; the session lives
            try:
                assert dora.execute("SELECT 2").fetchone() == (2,)
                break
            except casemate.DatabaseError as e:
                assert e.code != "57P06" and not dora.closed, e
                assert time.monotonic() < deadline, e
                dora.rollback()
                time.sleep(0.2)
        dora.commit()
        time.sleep(1.5)  # b's listener reconnects (it retries every second)
        with a.connect() as admin:
            admin.admin("user_remove", name="dora")
        deadline = time.monotonic() + 3
        with pytest.raises(casemate.OperationalError) as e:
            while time.monotonic() < deadline:
                dora.execute("SELECT 3")
                dora.commit()
                time.sleep(0.05)
        assert "57P06" in [c for c, _ in dora.notices], e.value
