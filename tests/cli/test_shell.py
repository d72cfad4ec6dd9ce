"""``casemate shell -c`` and piped input run backslash commands as the interactive shell
does (issue 21, item 4), against a real server."""

from __future__ import annotations

import json

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


# -- issue 17, item 7: psql's script conveniences ------------------------------------------


def test_file_option_runs_a_script(plain_server: ServerProcess, tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "setup.sql"
    script.write_text("CREATE TABLE t (v INTEGER);\nINSERT INTO t VALUES (1), (2);\n"
                      "SELECT sum(v) AS total FROM t \\g\n")
    code, out, err = _shell(plain_server, "-f", str(script))
    assert code == 0, err
    assert "CREATE TABLE" in out and "INSERT 0 2" in out and " total\n-------\n     3" in out
    code, out, err = _shell(plain_server, "-f", str(tmp_path / "missing.sql"))
    assert code == 2 and "cannot read" in err
    code, out, err = _shell(plain_server, "-f", "-", stdin="SELECT 5 AS five;")
    assert code == 0 and " five\n------\n    5" in out
    code, out, err = _shell(plain_server, "-f", str(script), "-c", "SELECT 1")
    assert code == 2 and "not both" in err


def test_csv_and_json_output(plain_server: ServerProcess) -> None:
    setup = ("CREATE TABLE t (id INTEGER, name TEXT, data BLOB); INSERT INTO t VALUES "
             "(1, 'a, \"quoted\"', x'01ff'), (2, NULL, NULL);")
    assert _shell(plain_server, "-c", setup)[0] == 0
    code, out, err = _shell(plain_server, "--csv", "-c", "SELECT * FROM t ORDER BY id")
    assert code == 0, err
    assert out == 'id,name,data\n1,"a, ""quoted""",\\x01ff\n2,,\n'  # as psql --csv
    code, out, err = _shell(plain_server, "--json", "-c",
                            "SELECT * FROM t ORDER BY id; SELECT 'é' AS e")
    assert code == 0, err
    first, second = (json.loads(line) for line in out.splitlines())
    assert first == [{"id": 1, "name": 'a, "quoted"', "data": "\\x01ff"},
                     {"id": 2, "name": None, "data": None}]
    assert second == [{"e": "é"}]


def test_commands_in_scripts_are_psqls(plain_server: ServerProcess, tmp_path) -> None:  # type: ignore[no-untyped-def]
    inc = tmp_path / "inc.sql"
    inc.write_text("SELECT 42 AS answer;\n")
    code, out, err = _shell(plain_server, "-c",
                            f"\\x\nSELECT 1 AS a, 'two' AS b;\n\\x off\n\\i {inc}\n"
                            "\\pset null (null)\nSELECT NULL AS n;")
    assert code == 0, err
    assert "-[ RECORD 1 ]\na | 1\nb | two\n" in out
    assert " answer\n--------\n     42" in out
    assert "(null)" in out


def test_include_loop_stops(plain_server: ServerProcess, tmp_path) -> None:  # type: ignore[no-untyped-def]
    loop = tmp_path / "loop.sql"
    loop.write_text(f"SELECT 1 AS one;\n\\i {loop}\n")
    code, out, err = _shell(plain_server, "-f", str(loop))
    assert code == 1 and "more than 16 deep" in err
    assert out.count("(1 row)") == 17  # the script, then 16 levels of \\i


def test_describe_leaves_no_transaction_open(plain_server: ServerProcess) -> None:
    """With autocommit off, a read opens a transaction that would then sit idle; \\d and
    completion must not leave one behind (psql's catalog queries do not either)."""
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

    from casemate.cli.prompt import SqlCompleter
    from casemate.cli.shell import Options, Shell
    with plain_server.connect() as conn:
        conn.execute("CREATE TABLE orders (id INTEGER, total REAL)")
        conn.commit()
        sh = Shell(conn, Options(), interactive=True)
        sh.command("\\dt")
        sh.command("\\d orders")
        words = [c.text for c in SqlCompleter(sh).get_completions(
            Document("SELECT orders.to"), CompleteEvent())]
        assert words == ["total"]
        assert not conn.in_transaction
        conn.execute("INSERT INTO orders VALUES (1, 2.5)")  # the user's own transaction
        sh.command("\\dt")
        assert conn.in_transaction  # ... is left alone
        conn.rollback()


def test_control_characters_in_values_are_shown_as_text(plain_server: ServerProcess) -> None:
    code, out, err = _shell(plain_server, "-c", "SELECT 'a' || char(27) || '[2Jb' AS v;\n"
                                                "\\x\nSELECT char(27) AS w")
    assert code == 0, err
    assert "\x1b" not in out and " a\\x1b[2Jb" in out and "w | \\x1b" in out
    code, out, err = _shell(plain_server, "--csv", "-c", "SELECT 'a' || char(27) AS v")
    assert out == "v\na\x1b\n"  # machine formats keep the exact value


def test_a_script_leaving_a_transaction_open_is_rolled_back(plain_server: ServerProcess) -> None:
    """As psql: what a script did not commit is not kept, and it says so."""
    assert _shell(plain_server, "-c", "CREATE TABLE t (v INTEGER)")[0] == 0
    code, out, err = _shell(plain_server, "-c", "BEGIN; INSERT INTO t VALUES (1);")
    assert code == 0 and "Uncommitted changes were rolled back" in err
    code, out, err = _shell(plain_server, "-c", "BEGIN; SELECT * FROM t;")
    assert code == 0 and "rolled back" not in err  # read-only: nothing to say
    code, out, err = _shell(plain_server, "-c", "INSERT INTO t VALUES (2);")  # autocommit
    assert code == 0 and "INSERT 0 1" in out
    with plain_server.connect() as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [(2,)]
