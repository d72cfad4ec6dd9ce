"""Red-team: the grant check reads a statement's compiled program (EXPLAIN), and a cached
EXPLAIN never notices a schema change made by another connection (it has no schema
check of its own).  So after an administrator adds a trigger that overwrites rows, a
group with only INSERT rights kept getting the old program's verdict on a pooled
connection, and its INSERT ran the new trigger's REPLACE unchecked.
"""

from __future__ import annotations

import sqlite3

import pytest

import casemate
from casemate.database import make_verifier
from casemate.testing import ServerProcess


def test_a_trigger_added_later_is_seen_by_the_grant_check(plain_server: ServerProcess) -> None:
    admin = plain_server.connect()
    admin.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
    admin.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, msg TEXT)")
    admin.execute("INSERT INTO items VALUES (1, 'original')")
    admin.commit()
    admin.admin("group_add", name="clerks")
    for table in ("items", "notes"):
        admin.admin("grant", group="clerks", table=table, privileges=["SELECT", "INSERT"])
    rec = make_verifier("clerk", "clerk-password-1", "clerks")
    admin.admin("user_add", name="clerk", group="clerks",
                verifier=[rec.salt, rec.stored_key, rec.server_key, rec.iterations])
    clerk = casemate.connect(host="127.0.0.1", port=plain_server.port, user="clerk",
                             password="clerk-password-1")
    clerk.autocommit = True
    sql = "INSERT INTO notes (msg) VALUES (?)"
    for i in range(20):  # the check's EXPLAIN is now cached on the pooled connection(s)
        clerk.execute(sql, (f"note {i}",))
    # The schema changes through another connection than the clerk's pooled ones (here a
    # maintenance script on the data file; an admin session on another pooled connection
    # does the same to them).
    other = sqlite3.connect(plain_server.db / "Data" / "data.sqlite")
    other.execute("CREATE TRIGGER copy AFTER INSERT ON notes "
                  "BEGIN INSERT OR REPLACE INTO items VALUES (1, NEW.msg); END")
    other.commit()
    other.close()
    for _ in range(5):
        try:
            clerk.execute(sql, ("pwned",))
        except casemate.ProgrammingError as e:
            assert "42501" in str(e)
        except casemate.OperationalError:
            assert plain_server.proc is not None
            plain_server.proc.wait(5)
            raise AssertionError(f"the server died: exit status {plain_server.proc.returncode}"
                                 ) from None
    assert admin.execute("SELECT name FROM items WHERE id = 1").fetchall() == [("original",)]
    assert plain_server.proc is not None and plain_server.proc.poll() is None, "server died"
    for c in (clerk, admin):
        c.close()


@pytest.mark.parametrize("group", ["writers", "readwrite"])
def test_a_users_own_explain_after_a_schema_change(plain_server: ServerProcess, group: str
                                                   ) -> None:
    # The same stale listing through an EXPLAIN the user sends itself (any group with the rights
    # the statement needs).
    admin = plain_server.connect()
    admin.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT)")
    admin.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, a TEXT)")
    admin.execute("CREATE TRIGGER tr AFTER INSERT ON t BEGIN "
                  "INSERT INTO log VALUES (NEW.id, upper(NEW.a)); END")
    admin.commit()
    admin.admin("group_add", name="writers")
    for table in ("t", "log"):
        admin.admin("grant", group="writers", table=table, privileges=["SELECT", "INSERT"])
    rec = make_verifier("ro", "ro-password-1", group)
    admin.admin("user_add", name="ro", group=group,
                verifier=[rec.salt, rec.stored_key, rec.server_key, rec.iterations])
    ro = casemate.connect(host="127.0.0.1", port=plain_server.port, user="ro",
                          password="ro-password-1")
    sql = "EXPLAIN INSERT INTO t VALUES (1, 'x')"
    ro.autocommit = True  # no snapshot of its own: it sees the change
    for _ in range(20):
        assert any(r[1] == "Program" for r in ro.execute(sql).fetchall())
    other = sqlite3.connect(plain_server.db / "Data" / "data.sqlite")
    other.execute("DROP TRIGGER tr")
    other.execute("CREATE TABLE filler (a, b, c, d)")
    other.commit()
    other.close()
    for _ in range(5):
        rows = ro.execute(sql).fetchall()
        assert not any(r[1] == "Program" for r in rows), "the dropped trigger is listed"
    assert plain_server.proc is not None and plain_server.proc.poll() is None, "server died"
    for c in (ro, admin):
        c.close()
