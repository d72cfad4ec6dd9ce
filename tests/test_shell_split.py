"""casemate.cli.shell helpers: statement splitting and result tables (no server)."""

from __future__ import annotations

import re

import pytest

from casemate.cli.shell import format_table, split_script, split_statements


def split(text: str) -> list[str]:
    return list(split_statements(text))


@pytest.mark.parametrize(("text", "expected"), [
    ("", []),
    ("   \n\t ", []),
    (";", []),
    ("; ;\n;", []),
    ("SELECT 1", ["SELECT 1"]),
    ("SELECT 1;", ["SELECT 1"]),
    ("  SELECT 1 ;  SELECT 2  ", ["SELECT 1", "SELECT 2"]),
    ("SELECT 1;;SELECT 2;", ["SELECT 1", "SELECT 2"]),
    ("CREATE TABLE t (a)\n;\nINSERT INTO t\nVALUES (1);\n", ["CREATE TABLE t (a)",
                                                           "INSERT INTO t\nVALUES (1)"]),
])
def test_semicolons_and_whitespace(text: str, expected: list[str]) -> None:
    assert split(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("SELECT 'a;b'; SELECT 2", ["SELECT 'a;b'", "SELECT 2"]),
    ('SELECT "c;d" FROM t', ['SELECT "c;d" FROM t']),
    ("SELECT `x;y`", ["SELECT `x;y`"]),
    ("SELECT [a;b] FROM t", ["SELECT [a;b] FROM t"]),
    ("SELECT 'it''s; fine'; SELECT 2", ["SELECT 'it''s; fine'", "SELECT 2"]),
    ("SELECT 'a\"b;c'", ["SELECT 'a\"b;c'"]),
    ("SELECT \"a'b;c\"", ["SELECT \"a'b;c\""]),
    ("SELECT '--not a comment;'", ["SELECT '--not a comment;'"]),
    ("SELECT '/* not; a comment'; SELECT 2", ["SELECT '/* not; a comment'", "SELECT 2"]),
    ("INSERT INTO t VALUES ('line1;\nline2')", ["INSERT INTO t VALUES ('line1;\nline2')"]),
    ("SELECT 'unterminated; string", ["SELECT 'unterminated; string"]),
])
def test_semicolons_inside_quotes_do_not_split(text: str, expected: list[str]) -> None:
    assert split(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("-- only a comment", []),
    ("-- a; b\n", []),
    ("SELECT 1 -- trailing; comment\n; SELECT 2", ["SELECT 1", "SELECT 2"]),
    ("SELECT 1; -- done", ["SELECT 1"]),
    ("SELECT 1 -- no newline at the end", ["SELECT 1"]),
    ("SELECT 1 /* ; */ ; SELECT 2", ["SELECT 1", "SELECT 2"]),
    ("/* header;\n comment */ SELECT 1", ["SELECT 1"]),
    ("SELECT 1 /* unterminated ; comment", ["SELECT 1"]),
    ("SELECT 5 - 2; SELECT 3", ["SELECT 5 - 2", "SELECT 3"]),
    ("SELECT 8 / 2; SELECT 3", ["SELECT 8 / 2", "SELECT 3"]),
    ("SELECT 1;SELECT 2--x\n;", ["SELECT 1", "SELECT 2"]),
])
def test_comments(text: str, expected: list[str]) -> None:
    assert split(text) == expected


def test_comment_between_lines_keeps_the_newline() -> None:
    assert split("SELECT 1 -- one\n+ 2") == ["SELECT 1 \n+ 2"]


def test_block_comment_separates_tokens() -> None:
    (stmt,) = split("SELECT/**/1")
    assert re.split(r"\s+", stmt) == ["SELECT", "1"]


def test_split_is_lazy() -> None:
    it = split_statements("SELECT 1; SELECT 2")
    assert next(it) == "SELECT 1"
    assert next(it) == "SELECT 2"
    with pytest.raises(StopIteration):
        next(it)


# -- format_table -------------------------------------------------------------------------


def test_format_table_alignment_and_cells() -> None:
    """psql's aligned format: NULL empty, bytes as \\x hex, numbers to the right."""
    out = format_table(["id", "name", "blob"], [(1, "a", b"\x01\xff"), (22, None, None)])
    assert out.splitlines() == [
        " id | name | blob",
        "----+------+--------",
        "  1 | a    | \\x01ff",
        " 22 |      |",
    ]


def test_format_table_numbers_right_aligned_and_nulls_ignored() -> None:
    out = format_table(["n", "x"], [(1.5, 10), (None, 2), (-3, 100)])
    assert out.splitlines() == [
        "   n |   x",
        "-----+-----",
        " 1.5 |  10",
        "     |   2",
        "  -3 | 100",
    ]


def test_format_table_bools_and_mixed_columns_are_left_aligned() -> None:
    out = format_table(["b", "m"], [(True, 1), (False, "x")])
    assert out.splitlines() == [" b | m", "---+---", " t | 1", " f | x"]


def test_format_table_header_wider_than_values() -> None:
    out = format_table(["a_long_header"], [(1,), (2,)])
    assert out.splitlines() == [" a_long_header", "---------------", "             1",
                                "             2"]


def test_format_table_without_rows() -> None:
    assert format_table(["a", "bb"], []) == " a | bb\n---+----"


def test_format_table_multi_line_and_wide_values_align() -> None:
    out = format_table(["k", "v"], [("日本語", "one\ntwo"), ("x", "three")]).splitlines()
    assert out == [" k      | v", "--------+-------", " 日本語 | one", "        | two",
                   " x      | three"]


def test_format_table_no_trailing_spaces() -> None:
    out = format_table(["x", "y"], [("a", ""), ("bbbb", "c")])
    assert all(line == line.rstrip() for line in out.splitlines())


def test_format_table_row_of_the_wrong_width_fails() -> None:
    with pytest.raises((ValueError, IndexError)):
        format_table(["a", "b"], [(1,)])


@pytest.mark.parametrize(("text", "expected"), [
    ("\\commit", [(True, "\\commit")]),
    ("SELECT 1; \\commit", [(False, "SELECT 1"), (True, "\\commit")]),
    ("\\autocommit off\nSELECT 1;\n  \\rollback  \nSELECT 2",
     [(True, "\\autocommit off"), (False, "SELECT 1"), (True, "\\rollback"), (False, "SELECT 2")]),
    ("-- note\n/* c */ \\security", [(True, "\\security")]),
    ("SELECT 'a\\b'", [(False, "SELECT 'a\\b'")]),  # inside a statement: SQL
    # psql: a backslash outside quotes is a command even in an unfinished statement, which
    # waits for its ';' (here the end of the script)
    ("SELECT 1\n\\commit", [(True, "\\commit"), (False, "SELECT 1")]),
    ("SELECT 1 \\g", [(True, "\\g"), (False, "SELECT 1")]),
    # PostgreSQL's quotes: E'' escapes, dollar quoting (a function body has ';' and '\\')
    ("SELECT E'it\\'s; ok'; \\x", [(False, "SELECT E'it\\'s; ok'"), (True, "\\x")]),
    ("SELECT one'b\\'; \\x", [(False, "SELECT one'b\\'"), (True, "\\x")]),
    ("DO $$ BEGIN PERFORM 1; END $$; \\x", [(False, "DO $$ BEGIN PERFORM 1; END $$"),
                                         (True, "\\x")]),
    ("SELECT $t$ a;\\d $t$; \\d", [(False, "SELECT $t$ a;\\d $t$"), (True, "\\d")]),
    ("SELECT price$1 FROM t; \\x", [(False, "SELECT price$1 FROM t"), (True, "\\x")]),
])
def test_script_commands(text: str, expected: list[tuple[bool, str]]) -> None:
    assert list(split_script(text)) == expected
