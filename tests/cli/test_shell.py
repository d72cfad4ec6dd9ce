"""``casemate shell -c`` and piped input run backslash commands as the interactive shell
does (issue 21, item 4), against a real server."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from casemate.cli.shell import shell
from casemate.testing import ServerProcess

SCRIPT = """CREATE TABLE t (v INTEGER);
\\autocommit off
INSERT INTO t VALUES (1);
\\rollback
INSERT INTO t VALUES (2); \\commit
-- a comment, then a command
\\security
\\q
INSERT INTO t VALUES (3);
"""


def _shell(server: ServerProcess, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(shell, [server.url, *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("how", ["-c", "stdin"])
def test_backslash_commands_in_scripts(plain_server: ServerProcess, how: str) -> None:
    code, out, err = (_shell(plain_server, "-c", SCRIPT) if how == "-c"
                      else _shell(plain_server, stdin=SCRIPT))
    assert code == 0, (out, err)
    assert "Autocommit off." in out and "Rolled back." in out and "Committed." in out
    assert "plain: NOT encrypted" in out
    with plain_server.connect() as conn:  # 1 rolled back, 2 committed, 3 after \q: not run
        assert conn.execute("SELECT v FROM t").fetchall() == [(2,)]


def test_unknown_command_in_a_script_is_an_error(plain_server: ServerProcess) -> None:
    code, out, err = _shell(plain_server, "-c", "SELECT 1; \\nope\nSELECT 2")
    assert code == 1
    assert "unknown command \\nope" in err
    assert "(1 row)" in out and out.count("(1 row)") == 1  # stopped at the error


def test_backslash_inside_a_statement_stays_sql(plain_server: ServerProcess) -> None:
    code, out, err = _shell(plain_server, "-c", "SELECT 'a\\b' AS s")
    assert code == 0, err
    assert "a\\b" in out
