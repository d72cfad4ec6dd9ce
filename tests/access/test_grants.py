"""Groups and grants against a real server: built-in groups, per-table grants on a custom
group (direct statements, views, triggers, CTEs, pragmas), grants changed over the wire, and
the corners closed for everyone (ATTACH, VACUUM INTO, temp objects, locked pragmas...).

One server process serves the whole module; tests that change grants use their own tables.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import casemate
from casemate.database import create_database, make_verifier
from tests.conftest import ADMIN_PASSWORD, ServerProcess

PW = "grants-user-pw"
SCHEMA = [
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT UNIQUE, qty INTEGER)",
    "CREATE TABLE secret (id INTEGER PRIMARY KEY, note TEXT)",
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, item INTEGER, n INTEGER)",
    "CREATE TABLE trail (order_id INTEGER)",
    "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)",
    "CREATE VIEW v_items_hidden AS SELECT id, name FROM items",
    "CREATE VIEW v_secret AS SELECT id, note FROM secret",
    "CREATE VIEW v_items AS SELECT id, name FROM items",
    "CREATE TRIGGER orders_trail AFTER INSERT ON orders BEGIN "
    "INSERT INTO trail VALUES (new.id); END",
    "INSERT INTO items VALUES (1, 'apple', 5), (2, 'pear', 3)",
    "INSERT INTO secret VALUES (1, 'classified')",
    "INSERT INTO notes VALUES (1, 'original')",
]
CLERK_GRANTS = {"items": ["SELECT", "INSERT", "UPDATE"], "orders": ["SELECT", "INSERT"],
                "notes": ["INSERT"], "v_secret": ["SELECT"], "v_items": ["SELECT"]}
USERS = {"rw": "readwrite", "ro": "readonly", "clerk": "clerks"}


def add_user(admin: casemate.Connection, name: str, group: str, password: str = PW) -> None:
    rec = make_verifier(name, password, group)
    admin.admin("user_add", name=name, group=group,
                verifier=[rec.salt, rec.stored_key, rec.server_key, rec.iterations])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("grants")
    db = base / "db"
    create_database(db, None, ADMIN_PASSWORD)
    s = ServerProcess(db).start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CASEMATE_HOME", str(base / "setup-home"))
            with s.connect() as admin:
                for sql in SCHEMA:
                    admin.execute(sql)
                admin.commit()
                admin.admin("group_add", name="clerks")
                for table, privs in CLERK_GRANTS.items():
                    admin.admin("grant", group="clerks", table=table, privileges=privs)
                for name, group in USERS.items():
                    add_user(admin, name, group)
        yield s
    finally:
        s.stop()


def connect(server: ServerProcess, user: str, **kw: object) -> casemate.Connection:
    if user == "admin":
        return server.connect(**kw)
    return casemate.connect(host="127.0.0.1", port=server.port, user=user, password=PW,
                            **kw)  # type: ignore[arg-type]


@pytest.fixture
def conns(server: ServerProcess) -> Iterator[dict[str, casemate.Connection]]:
    opened = {u: connect(server, u) for u in ("admin", *USERS)}
    yield opened
    for c in opened.values():
        c.close()


def refused(conn: casemate.Connection, sql: str, params: tuple[object, ...] = ()
            ) -> casemate.ProgrammingError:
    """Run ``sql``, expect a 42501 refusal, roll back, return the error."""
    with pytest.raises(casemate.ProgrammingError) as ei:
        conn.execute(sql, params)
    assert ei.value.code == "42501", (sql, ei.value)
    end_transaction(conn)
    return ei.value


def end_transaction(conn: casemate.Connection) -> None:
    """Roll back whatever the server has open.  After an error on the first statement of a
    transaction the client does not know the server opened one (the server now rolls it back),
    so one successful statement first tells it."""
    if not conn.autocommit:
        conn.execute("SELECT 1")
    conn.rollback()


def rows(conn: casemate.Connection, sql: str, params: tuple[object, ...] = ()) -> list[tuple]:  # type: ignore[type-arg]
    return conn.execute(sql, params).fetchall()


def snapshot(admin: casemate.Connection) -> dict[str, list[tuple]]:  # type: ignore[type-arg]
    out = {t: rows(admin, f"SELECT * FROM {t} ORDER BY 1") for t in
           ("items", "secret", "orders", "trail", "notes")}
    admin.rollback()
    return out


# -- built-in groups ------------------------------------------------------------------------
def test_admin_may_change_schema_and_data(conns: dict[str, casemate.Connection]) -> None:
    a = conns["admin"]
    a.execute("CREATE TABLE adm_t (id INTEGER PRIMARY KEY, v TEXT)")
    a.execute("CREATE INDEX adm_i ON adm_t (v)")
    a.execute("CREATE VIEW adm_v AS SELECT v FROM adm_t")
    a.execute("CREATE TRIGGER adm_trg AFTER DELETE ON adm_t BEGIN SELECT 1; END")
    a.execute("INSERT INTO adm_t (v) VALUES ('x')")
    a.execute("UPDATE adm_t SET v = 'y'")
    assert rows(a, "SELECT v FROM adm_v") == [("y",)]
    a.execute("ALTER TABLE adm_t ADD COLUMN w INTEGER")
    a.execute("DELETE FROM adm_t")
    a.execute("PRAGMA user_version = 7")  # a harmless pragma: admin may set it
    assert rows(a, "PRAGMA user_version") == [(7,)]
    a.execute("PRAGMA user_version = 0")
    for sql in ("DROP TRIGGER adm_trg", "DROP VIEW adm_v", "DROP INDEX adm_i", "DROP TABLE adm_t"):
        a.execute(sql)
    a.commit()
    a.autocommit = True
    a.execute("VACUUM")  # plain VACUUM (in place) is the admin's


def test_readwrite_reads_and_writes_every_table_but_not_the_schema(
        conns: dict[str, casemate.Connection]) -> None:
    rw, a = conns["rw"], conns["admin"]
    assert rows(rw, "SELECT note FROM secret") == [("classified",)]
    rw.execute("INSERT INTO secret (id, note) VALUES (50, 'rw')")
    rw.execute("UPDATE secret SET note = 'rw2' WHERE id = 50")
    rw.execute("DELETE FROM secret WHERE id = 50")
    rw.execute("INSERT INTO items (id, name, qty) VALUES (50, 'rw-item', 1)")
    rw.rollback()
    for sql in ("CREATE TABLE rw_t (x)", "DROP TABLE items", "CREATE INDEX rw_i ON items (qty)",
                "CREATE VIEW rw_v AS SELECT 1", "ALTER TABLE items ADD COLUMN z",
                "CREATE TRIGGER rw_trg AFTER INSERT ON items BEGIN SELECT 1; END",
                "DROP VIEW v_items", "PRAGMA user_version = 3"):
        refused(rw, sql)
    assert [r[0] for r in rows(a, "SELECT name FROM sqlite_master WHERE name LIKE 'rw%'")] == []
    assert rows(a, "SELECT count(*) FROM items") == [(2,)]
    a.rollback()


def test_schema_refusal_says_schema(conns: dict[str, casemate.Connection]) -> None:
    e = refused(conns["rw"], "CREATE TABLE rw_t2 (x)")
    assert "schema" in e.message and "sqlite_master" not in e.message
    assert not (e.hint and "grant" in e.hint)


def test_readonly_reads_only(conns: dict[str, casemate.Connection]) -> None:
    ro, a = conns["ro"], conns["admin"]
    before = snapshot(a)
    assert rows(ro, "SELECT note FROM secret") == [("classified",)]
    assert rows(ro, "SELECT name FROM v_items_hidden ORDER BY id") == [("apple",), ("pear",)]
    ro.rollback()
    e = refused(ro, "INSERT INTO items (name, qty) VALUES ('x', 1)")
    assert "INSERT on table items" in e.message and "'readonly'" in e.message
    assert "UPDATE on table secret" in refused(ro, "UPDATE secret SET note = ''").message
    assert "DELETE on table items" in refused(ro, "DELETE FROM items").message
    refused(ro, "CREATE TABLE ro_t (x)")
    refused(ro, "INSERT INTO orders (item, n) VALUES (1, 1)")
    assert snapshot(a) == before


# -- a custom group with per-table grants ----------------------------------------------------
def test_custom_group_direct_statements(conns: dict[str, casemate.Connection]) -> None:
    c, a = conns["clerk"], conns["admin"]
    before = snapshot(a)
    assert rows(c, "SELECT name FROM items ORDER BY id") == [("apple",), ("pear",)]
    assert rows(c, "SELECT count(*) FROM ITEMS") == [(2,)]  # table names are case-insensitive
    c.execute("INSERT INTO items (id, name, qty) VALUES (10, 'fig', 1)")
    c.execute("UPDATE items SET qty = 2 WHERE id = 10")
    assert rows(c, "SELECT qty FROM items WHERE id = 10") == [(2,)]
    c.rollback()
    for sql, what in [
        ("DELETE FROM items WHERE id = 1", "DELETE on table items"),
        ("SELECT * FROM secret", "SELECT on table secret"),
        ("SELECT count(*) FROM secret", "SELECT on table secret"),
        ("SELECT 1 FROM secret", "SELECT on table secret"),
        ("SELECT i.name FROM items i JOIN secret s ON s.id = i.id", "SELECT on table secret"),
        ("SELECT name FROM items WHERE id IN (SELECT id FROM secret)", "SELECT on table secret"),
        ("INSERT INTO items (name) SELECT note FROM secret", "SELECT on table secret"),
        ("INSERT INTO secret (note) VALUES ('x')", "INSERT on table secret"),
        ("UPDATE orders SET n = 0", "UPDATE on table orders"),
        ("INSERT INTO notes (id, body) VALUES (1, 'x') "
         "ON CONFLICT (id) DO UPDATE SET body = 'upserted'", "on table notes"),  # needs more
        ("SELECT body FROM notes", "SELECT on table notes"),
        ("INSERT INTO notes (body) VALUES ('n') RETURNING id", "SELECT on table notes"),
        ("INSERT INTO items (name, qty) VALUES ('r', 1) RETURNING (SELECT note FROM secret)",
         "SELECT on table secret"),
    ]:
        e = refused(c, sql)
        assert what in e.message, (sql, e.message)
        assert "'clerks'" in e.message
    assert snapshot(a) == before


def test_custom_group_insert_only_cannot_replace_existing_rows(
        conns: dict[str, casemate.Connection]) -> None:
    c, a = conns["clerk"], conns["admin"]
    c.execute("INSERT INTO notes (body) VALUES ('new')")  # INSERT alone is granted on notes
    c.rollback()
    for sql in ("REPLACE INTO notes (id, body) VALUES (1, 'overwritten')",
                "INSERT OR REPLACE INTO notes (id, body) VALUES (1, 'overwritten')"):
        try:
            with pytest.raises(casemate.ProgrammingError) as ei:
                c.execute(sql)
            assert ei.value.code == "42501"
        finally:
            end_transaction(c)
    assert rows(a, "SELECT body FROM notes") == [("original",)]
    a.rollback()


REPLACE_SCHEMA = [
    "CREATE TABLE r_notes (id INTEGER PRIMARY KEY, body TEXT)",
    "CREATE TABLE r_pk (id INTEGER PRIMARY KEY ON CONFLICT REPLACE, body TEXT)",
    "CREATE TABLE r_uq (id INTEGER PRIMARY KEY, k TEXT UNIQUE ON CONFLICT REPLACE, body TEXT)",
    "CREATE TABLE r_tpk (k TEXT, body TEXT, PRIMARY KEY (k) ON CONFLICT REPLACE)",
    "CREATE TABLE r_wr (k TEXT PRIMARY KEY ON CONFLICT REPLACE, body TEXT) WITHOUT ROWID",
    "CREATE TABLE r_src (id INTEGER PRIMARY KEY, body TEXT)",
    "CREATE TRIGGER r_src_tr AFTER INSERT ON r_src BEGIN "
    "INSERT OR REPLACE INTO r_notes VALUES (new.id, new.body); END",
    "CREATE VIEW r_v AS SELECT id, body FROM r_notes",
    "CREATE TRIGGER r_v_tr INSTEAD OF INSERT ON r_v BEGIN "
    "REPLACE INTO r_notes VALUES (new.id, new.body); END",
    "INSERT INTO r_notes VALUES (1, 'orig')", "INSERT INTO r_pk VALUES (1, 'orig')",
    "INSERT INTO r_uq VALUES (1, 'a', 'orig')", "INSERT INTO r_tpk VALUES ('a', 'orig')",
    "INSERT INTO r_wr VALUES ('a', 'orig')",
]
REPLACE_TABLES = ["r_notes", "r_pk", "r_uq", "r_tpk", "r_wr", "r_src", "r_v"]


@pytest.fixture
def replace_tables(conns: dict[str, casemate.Connection]) -> Iterator[None]:
    a = conns["admin"]
    for sql in REPLACE_SCHEMA:
        a.execute(sql)
    a.commit()
    for t in REPLACE_TABLES:
        a.admin("grant", group="clerks", table=t, privileges=["SELECT", "INSERT"])
    yield
    for t in REPLACE_TABLES:
        a.admin("revoke", group="clerks", table=t, privileges=["ALL"])
    for t in ("r_v", "r_src", "r_wr", "r_tpk", "r_uq", "r_pk", "r_notes"):
        a.execute(f"DROP {'VIEW' if t == 'r_v' else 'TABLE'} {t}")
    a.commit()


@pytest.mark.parametrize("sql", [
    "INSERT OR REPLACE INTO [r_notes] VALUES (1, 'x')",
    "INSERT OR REPLACE INTO `r_notes` VALUES (1, 'x')",
    "INSERT/**/OR/**/REPLACE INTO r_notes VALUES (1, 'x')",
    'WITH [a"] AS (SELECT 1, \'x\') INSERT OR REPLACE INTO r_notes SELECT * FROM [a"]',
    "WITH r_notes AS (SELECT 1) REPLACE INTO main.r_notes VALUES (1, 'x')",
    "INSERT INTO r_notes VALUES (1, 'x') ON CONFLICT DO UPDATE SET body = 'x'",
    "INSERT INTO r_pk VALUES (1, 'x')",            # PRIMARY KEY ON CONFLICT REPLACE
    "INSERT INTO r_uq VALUES (2, 'a', 'x')",       # UNIQUE ON CONFLICT REPLACE
    "INSERT INTO r_tpk VALUES ('a', 'x')",         # table constraint
    "INSERT INTO r_wr VALUES ('a', 'x')",          # WITHOUT ROWID
    "INSERT INTO r_src VALUES (1, 'x')",           # REPLACE inside a trigger
    "INSERT INTO r_v VALUES (1, 'x')",             # REPLACE in an INSTEAD OF trigger
])
def test_insert_only_group_cannot_replace_by_any_syntax(
        conns: dict[str, casemate.Connection], replace_tables: None, sql: str) -> None:
    """What SQLite compiles decides, not the text: every REPLACE needs UPDATE and DELETE."""
    c, a = conns["clerk"], conns["admin"]
    e = refused(c, sql)
    assert "on table r_" in e.message, e.message
    c.autocommit = True
    with pytest.raises(casemate.ProgrammingError):
        c.cursor().executemany(sql, [(), ()])
    before = [rows(a, f"SELECT * FROM {t}") for t in ("r_notes", "r_pk", "r_uq", "r_tpk", "r_wr")]
    a.rollback()
    assert before == [[(1, "orig")], [(1, "orig")], [(1, "a", "orig")], [("a", "orig")],
                      [("a", "orig")]]


def test_insert_only_group_keeps_plain_inserts(
        conns: dict[str, casemate.Connection], replace_tables: None) -> None:
    c = conns["clerk"]
    c.execute("INSERT INTO r_notes VALUES (5, 'new')")
    c.execute("INSERT OR IGNORE INTO r_notes VALUES (1, 'x')")
    c.execute("INSERT INTO r_notes VALUES (1, 'x') ON CONFLICT DO NOTHING")
    c.execute("SELECT replace(body, 'o', '0') FROM r_notes")
    assert c.execute("EXPLAIN QUERY PLAN SELECT * FROM r_notes").fetchall()
    assert rows(c, "SELECT body FROM r_notes ORDER BY id") == [("orig",), ("new",)]
    c.rollback()
    conns["admin"].admin("grant", group="clerks", table="r_notes", privileges=["ALL"])
    c.execute("REPLACE INTO r_notes VALUES (1, 'replaced')")  # with UPDATE and DELETE: allowed
    c.rollback()


def test_update_group_cannot_replace_either(
        conns: dict[str, casemate.Connection], replace_tables: None) -> None:
    c, a = conns["clerk"], conns["admin"]
    for t in ("r_notes", "r_uq"):
        a.admin("grant", group="clerks", table=t, privileges=["SELECT", "INSERT", "UPDATE"])
    a.execute("INSERT INTO r_notes VALUES (2, 'second')")
    a.execute("INSERT INTO r_uq VALUES (2, 'b', 'second')")
    a.commit()
    c.execute("UPDATE r_notes SET body = 'changed' WHERE id = 2")  # a plain UPDATE: allowed
    c.rollback()
    for sql in ("UPDATE OR REPLACE r_notes SET id = 1 WHERE id = 2",
                "UPDATE r_uq SET k = 'a' WHERE id = 2"):  # the column's ON CONFLICT REPLACE
        assert "DELETE on table r_" in refused(c, sql).message
    assert rows(a, "SELECT count(*) FROM r_notes") == [(2,)]
    assert rows(a, "SELECT count(*) FROM r_uq") == [(2,)]
    a.rollback()


def test_foreign_key_cascade_needs_rights_on_the_child(
        conns: dict[str, casemate.Connection]) -> None:
    c, a = conns["clerk"], conns["admin"]
    a.execute("CREATE TABLE fk_par (id INTEGER PRIMARY KEY)")
    a.execute("CREATE TABLE fk_chi (pid INTEGER REFERENCES fk_par(id) "
              "ON DELETE CASCADE ON UPDATE CASCADE)")
    a.execute("INSERT INTO fk_par VALUES (1)")
    a.execute("INSERT INTO fk_chi VALUES (1)")
    a.commit()
    a.admin("grant", group="clerks", table="fk_par", privileges=["ALL"])
    a.admin("grant", group="clerks", table="fk_chi", privileges=["SELECT"])
    try:
        assert "on table fk_chi" in refused(c, "DELETE FROM fk_par WHERE id = 1").message
        assert "on table fk_chi" in refused(c, "UPDATE fk_par SET id = 2").message
        assert "on table fk_chi" in refused(c, "REPLACE INTO fk_par VALUES (1)").message
        assert rows(a, "SELECT pid FROM fk_chi") == [(1,)]
    finally:
        a.rollback()
        for t in ("fk_par", "fk_chi"):
            a.admin("revoke", group="clerks", table=t, privileges=["ALL"])
        a.execute("DROP TABLE fk_chi")
        a.execute("DROP TABLE fk_par")
        a.commit()


def test_custom_group_view_over_non_granted_table(conns: dict[str, casemate.Connection]) -> None:
    c = conns["clerk"]
    # SELECT is granted on the view itself, but the view reads secret: refused, naming secret.
    e = refused(c, "SELECT note FROM v_secret")
    assert "SELECT on table secret" in e.message
    # A view over a granted table works when the view is granted too...
    assert rows(c, "SELECT name FROM v_items ORDER BY id") == [("apple",), ("pear",)]
    c.rollback()
    # ...and is itself a table that needs a grant.
    assert "SELECT on table v_items_hidden" in refused(c, "SELECT name FROM v_items_hidden").message


def test_custom_group_trigger_writing_to_non_granted_table(
        conns: dict[str, casemate.Connection]) -> None:
    c, a = conns["clerk"], conns["admin"]
    before = snapshot(a)
    # INSERT is granted on orders, but its trigger writes to trail (not granted).
    e = refused(c, "INSERT INTO orders (item, n) VALUES (1, 4)")
    assert "INSERT on table trail" in e.message
    assert snapshot(a) == before  # neither the order nor the trail row was written
    # readwrite may write both: the trigger is fine for it.
    rw = conns["rw"]
    rw.execute("INSERT INTO orders (id, item, n) VALUES (77, 1, 4)")
    assert rows(rw, "SELECT order_id FROM trail WHERE order_id = 77") == [(77,)]
    rw.rollback()


def test_custom_group_cte(conns: dict[str, casemate.Connection]) -> None:
    c, a = conns["clerk"], conns["admin"]
    before = snapshot(a)
    assert rows(c, "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 3) "
                   "SELECT sum(x) FROM n") == [(6,)]
    assert rows(c, "WITH cheap AS (SELECT name FROM items WHERE qty < 4) SELECT * FROM cheap"
                ) == [("pear",)]
    c.rollback()
    for sql in ("WITH s AS (SELECT note FROM secret) SELECT * FROM s",
                "WITH s AS (SELECT note FROM secret) INSERT INTO items (name) SELECT note FROM s",
                "WITH RECURSIVE n(x) AS (SELECT id FROM secret UNION SELECT x FROM n) "
                "SELECT * FROM n"):
        assert "SELECT on table secret" in refused(c, sql).message
    assert snapshot(a) == before


def test_custom_group_pragmas(conns: dict[str, casemate.Connection]) -> None:
    c = conns["clerk"]
    assert [r[1] for r in rows(c, "PRAGMA table_info(items)")] == ["id", "name", "qty"]
    assert rows(c, "PRAGMA user_version") == [(0,)]
    assert rows(c, "PRAGMA index_list(items)")  # the UNIQUE index on name
    c.rollback()
    for sql, name in [("PRAGMA user_version = 3", "user_version"),
                      ("PRAGMA cache_size", "cache_size"),
                      ("PRAGMA journal_mode", "journal_mode"),
                      ("PRAGMA foreign_keys = OFF", "foreign_keys"),
                      ("PRAGMA recursive_triggers = ON", "recursive_triggers"),
                      ("PRAGMA query_only = ON", "query_only")]:
        assert f"PRAGMA {name}" in refused(c, sql).message
    assert rows(conns["admin"], "PRAGMA user_version") == [(0,)]
    conns["admin"].rollback()


def test_refusal_is_programming_error_42501_with_hint_and_session_survives(
        conns: dict[str, casemate.Connection]) -> None:
    c = conns["clerk"]
    c.execute("SELECT 1")
    with pytest.raises(casemate.ProgrammingError) as ei:
        c.execute("UPDATE secret SET note = 'x'")
    e = ei.value
    assert e.code == "42501"
    assert e.message == "permission denied for group 'clerks': UPDATE on table secret"
    assert e.hint is not None and "grant" in e.hint
    assert isinstance(e, casemate.DatabaseError)
    c.rollback()
    assert rows(c, "SELECT count(*) FROM items") == [(2,)]  # same session, still usable
    c.rollback()


# -- grants changed over the wire -----------------------------------------------------------
def test_grant_over_the_wire_applies_to_the_next_transaction(
        conns: dict[str, casemate.Connection]) -> None:
    c, a = conns["clerk"], conns["admin"]
    a.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, amount INTEGER)")
    a.execute("INSERT INTO ledger VALUES (1, 100)")
    a.commit()
    try:
        assert rows(c, "SELECT count(*) FROM items") == [(2,)]  # a transaction is open
        refused(c, "SELECT amount FROM ledger")  # ...and rolled back by refused()
        a.admin("grant", group="clerks", table="ledger", privileges=["select", "insert"])
        assert ("clerks", "ledger", "INSERT,SELECT") in a.admin("group_list")
        assert rows(c, "SELECT amount FROM ledger") == [(100,)]
        c.execute("INSERT INTO ledger (amount) VALUES (5)")
        c.commit()
        refused(c, "UPDATE ledger SET amount = 0")
        a.admin("revoke", group="clerks", table="ledger", privileges=["SELECT"])
        c.execute("INSERT INTO ledger (amount) VALUES (6)")  # INSERT kept
        assert "SELECT on table ledger" in refused(c, "SELECT amount FROM ledger").message
        # In autocommit mode every statement is its own transaction.
        c.autocommit = True
        refused(c, "SELECT amount FROM ledger")
        a.admin("grant", group="clerks", table="ledger", privileges=["ALL"])
        c.execute("UPDATE ledger SET amount = amount + 1 WHERE id = 1")
        assert rows(c, "SELECT amount FROM ledger WHERE id = 1") == [(101,)]
        a.admin("revoke", group="clerks", table="ledger", privileges=["ALL"])
        refused(c, "SELECT amount FROM ledger")
        assert not [g for g in a.admin("group_list") if g[1] == "ledger"]
    finally:
        a.execute("DROP TABLE ledger")
        a.commit()


def test_grant_applies_after_rollback_of_a_failed_first_statement(
        conns: dict[str, casemate.Connection]) -> None:
    c, a = conns["clerk"], conns["admin"]
    a.execute("CREATE TABLE ledger2 (amount INTEGER)")
    a.execute("INSERT INTO ledger2 VALUES (1)")
    a.commit()
    try:
        c.rollback()
        with pytest.raises(casemate.ProgrammingError):
            c.execute("SELECT amount FROM ledger2")  # first statement of a transaction
        c.rollback()
        a.admin("grant", group="clerks", table="ledger2", privileges=["SELECT"])
        assert rows(c, "SELECT amount FROM ledger2") == [(1,)]
    finally:
        a.execute("DROP TABLE ledger2")
        a.commit()
        a.admin("revoke", group="clerks", table="ledger2", privileges=["ALL"])


ADMIN_COMMANDS: list[tuple[str, dict[str, object]]] = [
    ("user_list", {}),
    ("user_add", {"name": "intruder", "group": "admin", "verifier": [b"s" * 16, b"k" * 32,
                                                                      b"v" * 32, 4096]}),
    ("user_passwd", {"name": "admin", "verifier": [b"s" * 16, b"k" * 32, b"v" * 32, 4096]}),
    ("user_group", {"name": "ro", "group": "admin"}),
    ("user_remove", {"name": "admin"}),
    ("group_list", {}),
    ("group_add", {"name": "mine"}),
    ("group_remove", {"name": "clerks"}),
    ("grant", {"group": "clerks", "table": "secret", "privileges": ["ALL"]}),
    ("revoke", {"group": "clerks", "table": "items", "privileges": ["ALL"]}),
]


@pytest.mark.parametrize("user", ["rw", "ro", "clerk"])
def test_non_admin_gets_42501_on_every_admin_command(
        server: ServerProcess, conns: dict[str, casemate.Connection], user: str) -> None:
    a, c = conns["admin"], conns[user]
    users_before, groups_before = a.admin("user_list"), a.admin("group_list")
    for command, args in ADMIN_COMMANDS:
        with pytest.raises(casemate.ProgrammingError) as ei:
            c.admin(command, **args)
        assert ei.value.code == "42501", command
        assert command in ei.value.message and "admin group" in ei.value.message
    assert a.admin("user_list") == users_before
    assert a.admin("group_list") == groups_before
    assert rows(c, "SELECT 1") == [(1,)]  # the session is still fine
    c.rollback()
    # The admin password still works (user_passwd was refused).
    with connect(server, "admin") as again:
        assert rows(again, "SELECT 2") == [(2,)]


# -- closed for everyone ----------------------------------------------------------------------
def _outside_path() -> Path:
    return Path(tempfile.gettempdir()) / f"casemate-escape-{uuid.uuid4().hex}.sqlite"


@pytest.mark.parametrize("user", ["rw", "clerk", "ro"])
def test_non_admin_global_denials(conns: dict[str, casemate.Connection], user: str) -> None:
    c = conns[user]
    target = _outside_path()
    try:
        for sql in (f"ATTACH DATABASE '{target}' AS outside",
                    "ATTACH DATABASE ':memory:' AS mem",
                    "DETACH DATABASE outside",
                    "SELECT load_extension('/nonexistent/ext')",
                    "PRAGMA writable_schema = 1",
                    "PRAGMA synchronous = OFF",
                    "PRAGMA journal_mode = DELETE",
                    "CREATE TEMP TABLE tmp_t (x)",
                    "CREATE TEMPORARY VIEW tmp_v AS SELECT 1",
                    "CREATE TABLE temp.tmp_t2 (x)"):
            refused(c, sql)
        c.autocommit = True  # VACUUM cannot run inside a transaction: let the rights decide
        try:
            for sql in ("VACUUM", f"VACUUM INTO '{target}'"):
                e = refused(c, sql)
                assert "VACUUM" in e.message
        finally:
            c.autocommit = False
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)
    a = conns["admin"]
    assert rows(a, "PRAGMA journal_mode") == [("wal",)]
    assert rows(a, "PRAGMA synchronous") == [(2,)]  # FULL, on whatever pooled connection
    assert rows(a, "SELECT name FROM pragma_database_list ORDER BY seq") == [("main",)]
    a.rollback()


def test_admin_global_denials_no_file_created(conns: dict[str, casemate.Connection]) -> None:
    a = conns["admin"]
    target = _outside_path()
    try:
        e = refused(a, f"ATTACH DATABASE '{target}' AS outside")
        assert "ATTACH" in e.message
        assert not target.exists()
        a.autocommit = True
        try:
            e = refused(a, f"VACUUM INTO '{target}'")
            assert "VACUUM INTO" in e.message
        finally:
            a.autocommit = False
        assert not target.exists()
        for sql in ("DETACH DATABASE main", "CREATE TEMP TABLE tmp_t (x)",
                    "PRAGMA writable_schema = 1", "PRAGMA synchronous = OFF",
                    "PRAGMA journal_mode = DELETE", "SELECT load_extension('/nonexistent/x')"):
            refused(a, sql)
        assert rows(a, "PRAGMA journal_mode") == [("wal",)]
        assert rows(a, "PRAGMA synchronous") == [(2,)]
        a.rollback()
    finally:
        target.unlink(missing_ok=True)


def test_description_types_under_per_table_grants(conns: dict[str, casemate.Connection]) -> None:
    """An empty result still has its declared types for a per-table group (the EXPLAIN
    that finds them runs under the group's rights), and reading them refuses nothing else."""
    clerk = conns["clerk"]
    for sql in ("SELECT id, name, qty FROM items WHERE id < 0",
                "SELECT id, name FROM v_items WHERE id < 0"):
        cur = clerk.execute(sql)
        assert cur.fetchall() == []
        assert [d[1] for d in cur.description] == ["integer", "text", "integer"][:len(
            cur.description)], sql
    assert rows(clerk, "SELECT name FROM items WHERE id = 1") == [("apple",)]
    refused(clerk, "SELECT note FROM secret WHERE id < 0")
    end_transaction(clerk)
