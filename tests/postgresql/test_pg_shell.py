"""``casemate shell``'s ``\\d`` commands on the PostgreSQL backend, which answers them from
its own catalog (issue 17, item 7)."""

from __future__ import annotations

from click.testing import CliRunner

from casemate.cli.shell import shell
from casemate.testing import ServerProcess

from .conftest import ADMIN_PW

PW = ADMIN_PW


def test_describe_on_postgresql(server: ServerProcess) -> None:
    script = ("CREATE TABLE person (id serial PRIMARY KEY, name text NOT NULL, "
              "note text DEFAULT 'none');\nCREATE VIEW names AS SELECT name FROM person;\n"
              "\\d\n\\dt\n\\d person\n\\di\n\\d nope\n")
    result = CliRunner().invoke(shell, [server.url, "-c", script])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert " names  | view" in out and " person | table" in out
    assert 'Table "person"' in out
    assert " name   | text    | not null |" in out
    assert " note   | text    |          | 'none'::text" in out
    assert '    "person_pkey" btree (id)' in out
    assert " person_pkey | index" in out
    assert "casemate" not in out.split('Table "person"')[0]  # Casemate's own schema is hidden
    assert 'Did not find any relation named "nope"' in result.stderr


def test_completion_names_on_postgresql(server: ServerProcess) -> None:
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

    from casemate.cli.prompt import SqlCompleter
    from casemate.cli.shell import Options, Shell
    with server.connect() as conn:
        conn.execute("CREATE TABLE orders (id integer, total numeric)")
        conn.commit()
        sh = Shell(conn, Options(), interactive=True)
        done = SqlCompleter(sh)

        def complete(text: str) -> list[str]:
            return [c.text for c in done.get_completions(Document(text), CompleteEvent())]
        assert complete("SELECT * FROM ord") == ["orders"]
        assert complete("SELECT orders.to") == ["total"]
        assert "meta" not in complete("SELECT * FROM me")  # Casemate's own schema is hidden
        assert not conn.in_transaction
