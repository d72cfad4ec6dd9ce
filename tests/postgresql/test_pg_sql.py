"""The ``?`` translation, the one-statement rule, classification and the guard, checked against
PostgreSQL's own lexer and parser (pglast); no PostgreSQL server needed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast import parser
from psycopg import sql as pgsql

from casemate.storage.pg_sql import SQLTextError, analyze, classify, refusal, translate_qmarks


@pytest.mark.parametrize("sql, expected", [
    ("SELECT ?, ?", "SELECT  %s ,  %s "),
    ("SELECT '?', \"a?\", ? -- ?\n", "SELECT '?', \"a?\",  %s  -- ?\n"),
    ("SELECT $$?$$, $tag$ ? $$ ? $tag$, ?", "SELECT $$?$$, $tag$ ? $$ ? $tag$,  %s "),
    ("SELECT /* a /* nested ? */ still ? */ ?", "SELECT /* a /* nested ? */ still ? */  %s "),
    ("SELECT E'it\\'s ?', ?", "SELECT E'it\\'s ?',  %s "),
    ("SELECT 'it''s ?', ?", "SELECT 'it''s ?',  %s "),
    # % is escaped everywhere: psycopg reads it even inside literals
    ("SELECT 10 % 3, '100%', ?", "SELECT 10 %% 3, '100%%',  %s "),
    ("SELECT a$b$ FROM t WHERE x = ?", "SELECT a$b$ FROM t WHERE x =  %s "),  # not a dollar quote
    ("SELECT doc ?? 'k', doc ??| ?", "SELECT doc ? 'k', doc ?|  %s "),  # jsonb operators
    ("SELECT * FROM t WHERE a=? AND b<>?", "SELECT * FROM t WHERE a= %s  AND b<> %s "),
    # the report's attack: a dollar quote whose tag is beyond U+FFFF
    ("SELECT $😀$ ? $😀$", "SELECT $😀$ ? $😀$"),
    ("SELECT $😀$ ? $😀$, ?", "SELECT $😀$ ? $😀$,  %s "),
    ("SELECT 1", "SELECT 1"),
])
def test_translate_qmarks(sql: str, expected: str) -> None:
    assert translate_qmarks(sql) == expected


@pytest.mark.parametrize("sql", [
    "SELECT 1; SELECT 2",
    "SELECT $😀$ x $😀$; DELETE FROM orders",
    "SELECT 1; DELETE FROM orders -- ;",
    "SELECT 'unterminated ?",
    "SELEC 1",
])
def test_several_statements_and_bad_text_are_refused(sql: str) -> None:
    with pytest.raises(SQLTextError) as e:
        analyze(sql)
    assert e.value.code == "42601"


@pytest.mark.parametrize("sql, cursor", [
    ("SELECT 1", True),
    ("  -- leading comment\n select * from t", True),
    ("(SELECT 1) UNION SELECT 2", True),
    ("VALUES (1), (2)", True),
    ("TABLE t", True),
    ("WITH x AS (SELECT 1) SELECT * FROM x", True),
    ("SELECT 'insert into' FROM t", True),
    ("SELECT 1;", True),
    ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", False),
    ("SELECT * FROM t FOR UPDATE", False),
    ("SELECT * FROM t FOR NO KEY UPDATE", False),
    ("SELECT a INTO b FROM t", False),
    ("INSERT INTO t VALUES (1) RETURNING id", False),
    ("EXPLAIN SELECT 1", False),
])
def test_which_statements_use_a_server_cursor(sql: str, cursor: bool) -> None:
    assert classify(sql).cursor is cursor


def test_transaction_ends_in_sql_are_recognised() -> None:
    for sql in ("ROLLBACK TO SAVEPOINT a", "rollback work to a", "ROLLBACK", "commit", "END"):
        assert classify(sql).undoes_savepoint, sql
    assert not classify("SAVEPOINT a").undoes_savepoint
    assert not classify("SELECT 'rollback'").undoes_savepoint


@pytest.mark.parametrize("sql", [
    "ALTER ROLE CURRENT_USER PASSWORD 'x'", "alter user current_user set work_mem = '1MB'",
    "ALTER ROLE CURRENT_USER SET default_transaction_read_only = on", "CREATE ROLE x",
    "ALTER USER x RENAME TO y", "DROP ROLE x", "GRANT x TO y", "SET ROLE x", "RESET ROLE",
    "SET SESSION AUTHORIZATION x", "COPY t TO STDOUT", "COPY t FROM STDIN",
    "SELECT pg_terminate_backend(1)", "SELECT (1).pg_cancel_backend", "PREPARE TRANSACTION 'x'",
    "SET standard_conforming_strings = off", "SET backslash_quote = on",
])
def test_refused_to_everyone(sql: str) -> None:
    assert refusal(analyze(sql), admin=True) is not None


@pytest.mark.parametrize("sql", [
    "SET statement_timeout = 0", "SET LOCAL work_mem = '1GB'", "RESET ALL",
    "SELECT \"set_config\"('statement_timeout', '0', false)", "SELECT SET_CONFIG('a.b', 'c', true)",
    "SELECT lo_create(0)", "SELECT lo_from_bytea(0, 'x')", "SELECT loread(0, 1)",
    "SELECT * FROM pg_stat_activity", "SELECT query FROM pg_catalog.pg_stat_activity",
    "SELECT * FROM pg_stat_get_activity(NULL)", "SELECT pg_stat_get_backend_activity(1)",
    "SELECT query_to_xml('select * from pg_stat_activity', true, false, '')",
    "SELECT table_to_xml('pg_stat_activity', true, false, '')",
    "CREATE TEMP VIEW v AS SELECT * FROM pg_stat_activity",
    "DO $$BEGIN PERFORM 1; END$$", "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "DISCARD ALL", "LISTEN x", "VACUUM t", "GRANT SELECT ON t TO PUBLIC",
    "UPDATE pg_settings SET setting = '0' WHERE name = 'statement_timeout'",
    "WITH x AS (UPDATE pg_catalog.pg_settings SET setting = '0' RETURNING 1) SELECT 1",
    "DELETE FROM t USING pg_stat_activity a", "SELECT U&\"set\\005fconfig\"('a', 'b', false)",
])
def test_reserved_to_admins(sql: str) -> None:
    st = analyze(sql)
    assert refusal(st, admin=False) is not None
    assert refusal(st, admin=True) is None


@pytest.mark.parametrize("sql", [
    "SELECT * FROM t WHERE id = ?", "INSERT INTO t VALUES (?)", "UPDATE t SET a = ?",
    "DELETE FROM t", "BEGIN", "SAVEPOINT a", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET TIME ZONE 'UTC'", "SHOW work_mem", "CREATE TEMP TABLE x (a int)", "EXPLAIN SELECT 1",
    "SELECT pg_advisory_xact_lock(1)", "SELECT 'set_config', 'pg_stat_activity'", "",
])
def test_allowed_to_users(sql: str) -> None:
    assert refusal(analyze(sql), admin=False) is None


# -- property: whatever the text, a bound value is a literal, never code ------------------------
_CHARS = st.sampled_from(list("?'\"$\\*/-%;\n ()eEuUxXbBnN_a1😀é中𝔘\u200b"))
_TEXT = st.text(_CHARS, max_size=12)
_TAG = st.text(st.sampled_from(list("a_Z9😀é𝔘")), max_size=3).filter(lambda t: not t[:1].isdigit())
NONCE = "nonce#7"
EVIL = [f"{NONCE}$😀$ ; DELETE FROM orders; -- ' \" */ \\", f"{NONCE}'); SELECT current_user; --"]


def _dollar(tag: str, body: str) -> str:
    delim = f"${tag}$"
    return delim + body.replace("$", "") + delim


_PIECE = st.one_of(
    st.just("?"), st.just("??"), st.just(" = ?"), _TEXT, st.sampled_from(["a😀", "😀$x$", "e", "u&"]),
    _TEXT.map(lambda t: "'" + t.replace("'", "''") + "'"),
    _TEXT.map(lambda t: "E'" + t.replace("\\", "\\\\").replace("'", "\\'") + "'"),
    _TEXT.map(lambda t: '"' + t.replace('"', '""') + '"'),
    st.builds(_dollar, _TAG, _TEXT),
    _TEXT.map(lambda t: "/*" + t.replace("*/", "").replace("/*", "") + "*/"),
    _TEXT.map(lambda t: "--" + t.replace("\n", "") + "\n"),
)


def _consts(tree: Any) -> list[str]:
    out: list[str] = []
    stack = [tree]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            if "sval" in x and isinstance(x["sval"], str):
                out.append(x["sval"])
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return out


def _bind(text: str, n: int, standard: bool) -> str:
    def literal(v: str) -> str:
        return "'" + v.replace("'", "''") + "'" if standard else pgsql.Literal(v).as_string(None)
    return text % tuple(literal(EVIL[i % 2]) for i in range(n))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_PIECE, max_size=10), st.booleans())
def test_bound_values_stay_literals(pieces: list[str], standard: bool) -> None:
    """For any text the parser accepts as one statement, each bound value is exactly one string
    constant of the one statement PostgreSQL's parser reads from the text sent."""
    sql = "SELECT " + "".join(pieces)
    try:
        s = analyze(sql)
    except SQLTextError:
        return
    sent = _bind(s.text, s.params, standard)
    stmts = json.loads(parser.parse_sql_json(sent))["stmts"]
    assert len(stmts) == 1
    found = [c for c in _consts(stmts) if NONCE in c]
    assert sorted(found) == sorted(EVIL[i % 2] for i in range(s.params))
    assert s.params == sent.count(NONCE)


_QUOTED = st.one_of(
    st.just("1"),
    _TEXT.map(lambda t: "'" + t.replace("'", "''") + "'"),
    _TEXT.map(lambda t: "E'" + t.replace("\\", "\\\\").replace("'", "\\'") + "'"),
    _TEXT.filter(bool).map(lambda t: '"' + t.replace('"', '""') + '"'),
    st.builds(_dollar, _TAG, _TEXT),
)
_SEP = st.one_of(
    st.just(", "),
    _TEXT.map(lambda t: ", /*" + t.replace("*", "").replace("/", "") + "*/ "),
    _TEXT.map(lambda t: ", /* /*" + t.replace("*", "").replace("/", "") + "*/ ? */ "),
    _TEXT.map(lambda t: ", --" + t.replace("\n", "") + "\n"),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.just("?"), _QUOTED), _SEP), min_size=1, max_size=8))
def test_every_placeholder_is_found(items: list[tuple[str, str]]) -> None:
    """Placeholders between quoted pieces, comments and non-BMP characters are all found, and
    no ``?`` inside a quote or comment is taken for one."""
    sql = "SELECT " + "".join(e + sep for e, sep in items[:-1]) + items[-1][0]
    assert analyze(sql).params == sum(1 for e, _ in items if e == "?")
