"""The qmark translation and statement classification (no PostgreSQL needed)."""

from __future__ import annotations

import pytest

from casemate.storage.pg_sql import classify, code_only, translate_qmarks


@pytest.mark.parametrize("sql, expected", [
    ("SELECT ?, ?", "SELECT %s, %s"),
    ("SELECT '?', \"a?\", ? -- ?\n", "SELECT '?', \"a?\", %s -- ?\n"),
    ("SELECT $$?$$, $tag$ ? $$ ? $tag$, ?", "SELECT $$?$$, $tag$ ? $$ ? $tag$, %s"),
    ("SELECT /* a /* nested ? */ still ? */ ?", "SELECT /* a /* nested ? */ still ? */ %s"),
    ("SELECT E'it\\'s ?', ?", "SELECT E'it\\'s ?', %s"),
    ("SELECT 'it''s ?', ?", "SELECT 'it''s ?', %s"),
    # % is escaped everywhere: psycopg reads it even inside literals
    ("SELECT 10 % 3, '100%', ?", "SELECT 10 %% 3, '100%%', %s"),
    ("SELECT a$b$ FROM t WHERE x = ?", "SELECT a$b$ FROM t WHERE x = %s"),  # not a dollar quote
    ("SELECT doc ?? 'k', doc ??| ?", "SELECT doc ? 'k', doc ?| %s"),  # jsonb operators
    ("SELECT 'unterminated ?", "SELECT 'unterminated ?"),
    ("SELECT 1", "SELECT 1"),
])
def test_translate_qmarks(sql: str, expected: str) -> None:
    assert translate_qmarks(sql) == expected


def test_code_only_blanks_literals_and_comments() -> None:
    assert code_only("SELECT 'x' -- c\n FROM \"T\" /* d */").split() == ["SELECT", "FROM"]


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
    ("SELECT 1; SELECT 2", False),
    ("EXPLAIN SELECT 1", False),
])
def test_which_statements_use_a_server_cursor(sql: str, cursor: bool) -> None:
    assert classify(sql).cursor is cursor


@pytest.mark.parametrize("sql, state", [
    ("SET search_path = x", True),
    ("reset all", True),
    ("CREATE TEMP TABLE x (a int)", True),
    ("CREATE TEMPORARY TABLE x (a int)", True),
    ("SELECT set_config('a.b', 'c', false)", True),
    ("SELECT pg_advisory_lock(1)", True),
    ("DO $$BEGIN END$$", True),
    ("SELECT 'set_config'", False),
    ("UPDATE t SET a = 1", False),
    ("SELECT temperature FROM t", False),
])
def test_statements_that_leave_session_state(sql: str, state: bool) -> None:
    assert classify(sql).session_state is state


def test_transaction_ends_in_sql_are_recognised() -> None:
    for sql in ("ROLLBACK TO SAVEPOINT a", "rollback work to a", "ROLLBACK", "commit", "END"):
        assert classify(sql).undoes_savepoint, sql
    assert not classify("SAVEPOINT a").undoes_savepoint
    assert not classify("SELECT 'rollback'").undoes_savepoint
