"""The interactive ``casemate shell`` driven through a pseudo-terminal, as a psql user
types at it (issue 17, item 7), against a real server."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from casemate.testing import ServerProcess

PROMPT = r"casemate(=\*?|-|')>"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


class Term:
    """A shell in a 24x100 pseudo-terminal; ``say`` types a line and returns what the shell
    printed before its next prompt (escape sequences removed)."""

    def __init__(self, server: ServerProcess, home: Path, **env: str) -> None:
        self.home = home
        self.child = pexpect.spawn(
            sys.executable, ["-m", "casemate", "shell", server.url], encoding="utf-8",
            timeout=20, dimensions=(24, 100),
            env={**os.environ, "CASEMATE_HOME": str(home), "PROMPT_TOOLKIT_NO_CPR": "1",
                 "TERM": "xterm", **env})
        self.child.expect(PROMPT)

    def say(self, line: str) -> str:
        self.child.sendline(line)
        return self.wait()

    def wait(self) -> str:
        # prompt_toolkit ends the accepted line with \r\r\n (output lines end in \r\n);
        # what follows up to the next prompt is the shell's answer.
        self.child.expect("\r\r\n")
        self.child.expect(PROMPT)
        return ANSI.sub("", self.child.before or "")

    def quit(self) -> str:
        self.child.sendline("\\q")
        self.child.expect(pexpect.EOF)
        out = ANSI.sub("", self.child.before or "")
        self.child.close()
        return out


@pytest.fixture
def term(plain_server: ServerProcess, tmp_path: Path) -> Iterator[Term]:
    t = Term(plain_server, tmp_path / "home", PAGER="sed 's/^/PAGED: /'")
    yield t
    if t.child.isalive():
        t.child.terminate(force=True)


def _lines(out: str) -> list[str]:
    return [ln.rstrip() for ln in out.split("\n")]


def test_describe_commands_and_help(term: Term, plain_server: ServerProcess) -> None:
    # (lines shorter than the 100-column terminal: a wrapped line redraws differently)
    term.say("CREATE TABLE person (id INTEGER PRIMARY KEY, name TEXT NOT NULL,")
    term.say("note TEXT DEFAULT 'none');")
    term.say("CREATE UNIQUE INDEX person_name ON person (name);")
    term.say("CREATE VIEW names AS SELECT name FROM person;")
    out = _lines(term.say("\\d"))
    assert " name   | type" in out and " names  | view" in out and " person | table" in out
    out = _lines(term.say("\\d person"))
    assert 'Table "person"' in out
    assert " name   | TEXT    | not null |" in out
    assert " note   | TEXT    |          | 'none'" in out
    assert '    "person_name" UNIQUE, (name)' in out
    out = term.say("\\dt")
    assert "person" in out and "names" not in out
    out = _lines(term.say("\\du"))
    assert any(ln.startswith(" admin | admin |") for ln in out)
    assert "Did not find any relation named \"nope\"" in term.say("\\d nope")
    out = term.say("\\?")  # 27 lines: longer than the terminal, so through the pager
    for cmd in ("\\d [NAME]", "\\dt", "\\du", "\\x", "\\timing", "\\g", "\\i FILE", "\\q"):
        assert f"PAGED:   {cmd}" in out, cmd
    term.quit()


def test_results_aligned_expanded_timed_and_paged(term: Term) -> None:
    term.say("CREATE TABLE t (k TEXT, v TEXT);")
    term.say("INSERT INTO t VALUES ('日本語', 'one' || char(10) || 'two');")
    term.say("INSERT INTO t VALUES ('x', 'three');")
    out = _lines(term.say("SELECT * FROM t;"))
    i = out.index(" k      | v")
    assert out[i:i + 6] == [" k      | v", "--------+-------", " 日本語 | one", "        | two",
                            " x      | three", "(2 rows)"]
    assert term.say("\\x") .strip().endswith("Expanded display is on.")
    out = _lines(term.say("SELECT * FROM t;"))
    i = out.index("-[ RECORD 1 ]")
    assert out[i:i + 6] == ["-[ RECORD 1 ]", "k | 日本語", "v | one", "  | two",
                            "-[ RECORD 2 ]", "k | x"]
    term.say("\\x off")
    assert "Timing is on." in term.say("\\timing")
    assert re.search(r"\nTime: \d+\.\d{3} ms", term.say("SELECT 1;"))
    term.say("\\timing off")
    term.say("WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c")
    out = term.say("WHERE n < 40) SELECT n FROM c;")
    assert "PAGED:  40" in out and "PAGED: (40 rows)" in out
    out = term.say("SELECT 7 AS short;")  # fits the screen: no pager
    assert " short\n-------\n     7\n(1 row)" in out and "PAGED" not in out
    term.quit()


def test_backslash_after_an_unfinished_line(term: Term) -> None:
    term.say("CREATE TABLE t (v INTEGER);")
    term.child.sendline("SELECT count(*) FROM t")
    term.child.expect("\r\r\n")
    term.child.expect("casemate->")  # psql's continuation prompt
    out = term.say("\\dt")  # runs now; the statement waits
    assert " t    | table" in out
    assert "SELECT count(*) FROM t" in term.say("\\p")
    assert " count(*)\n----------\n        0" in term.say("\\g")
    term.child.sendline("SELECT 1 +")
    term.child.expect("\r\r\n")
    term.child.expect("casemate->")
    assert "Query buffer reset (cleared)." in term.say("\\r")
    assert " 2\n---\n 2" in term.say("SELECT 2 \\g")
    term.quit()


def test_autocommit_on_and_begin_opens_a_transaction(term: Term,
                                                     plain_server: ServerProcess) -> None:
    term.say("CREATE TABLE t (v INTEGER);")
    term.say("INSERT INTO t VALUES (1);")
    with plain_server.connect() as other:  # committed at once, as in psql
        assert other.execute("SELECT v FROM t").fetchall() == [(1,)]
    term.child.sendline("BEGIN;")
    term.child.expect("\r\r\n")
    term.child.expect(r"casemate=\*>")  # psql's in-transaction prompt
    term.say("INSERT INTO t VALUES (2);")
    with plain_server.connect() as other:
        assert other.execute("SELECT v FROM t").fetchall() == [(1,)]
    term.say("COMMIT;")
    with plain_server.connect() as other:
        assert other.execute("SELECT v FROM t ORDER BY v").fetchall() == [(1,), (2,)]
    term.say("BEGIN;")
    term.say("SELECT * FROM t;")
    out = term.quit()
    assert "rolled back" not in out  # read-only work: nothing to warn about


def test_leaving_with_written_work_says_so(term: Term) -> None:
    term.say("CREATE TABLE t (v INTEGER);")
    term.say("BEGIN;")
    term.say("INSERT INTO t VALUES (1);")
    assert "Uncommitted changes were rolled back" in term.quit()


def test_history_completion_and_ctrl_c_at_the_prompt(term: Term) -> None:
    term.say("CREATE TABLE customers (id INTEGER, surname TEXT);")
    term.child.send("SELECT surn")
    term.child.send("\t")  # a column name
    term.child.send(" FROM cust")
    term.child.send("\t")  # a table name
    out = term.say(";")
    assert " surname\n---------\n(0 rows)" in out
    term.child.send("SELECT 'forgotten'")
    term.child.sendcontrol("c")  # psql: the line and the query buffer are dropped
    term.wait()
    out = term.say("SELECT 3;")
    assert "forgotten" not in out.split("SELECT 3;")[-1] and " 3\n---\n 3" in out
    term.child.send("\x1b[A")  # up arrow: the last line again
    assert " 3\n---\n 3" in term.say("")
    term.quit()
    history = (term.home / "shell_history").read_text()
    assert "SELECT surname FROM customers;" in history
    assert oct((term.home / "shell_history").stat().st_mode & 0o777) == "0o600"


def test_ctrl_c_cancels_the_running_statement(term: Term) -> None:
    term.say("WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c)")
    term.child.sendline("SELECT count(*) FROM c;")
    term.child.expect("\r\r\n")  # accepted: the statement starts
    time.sleep(1.0)
    term.child.sendcontrol("c")
    term.child.expect(PROMPT)
    out = ANSI.sub("", term.child.before or "")
    assert "57014" in out
    assert " 5\n---\n 5" in term.say("SELECT 5;")  # the session goes on
    term.quit()
