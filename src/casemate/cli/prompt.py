"""Reading the interactive shell's lines: prompt_toolkit for editing, history and Tab
completion of table and column names, pygments for highlighting, the way pgcli does it.

History goes to ``$CASEMATE_HOME/shell_history`` (private: statements may hold secrets).
Completion names come from the server's catalog (:mod:`.catalog`) and are reloaded after
a ``CREATE``/``DROP``/``ALTER``.  When the terminal is not a terminal on both sides
(output piped), lines are read with plain ``input()``: no escape sequences in the output.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory
from prompt_toolkit.lexers import PygmentsLexer
from pygments.lexers.sql import PostgresLexer, SqlLexer

from ..client.params import casemate_home
from ..errors import Error

if TYPE_CHECKING:
    from .shell import Shell

__all__ = ["line_reader", "SqlCompleter"]

_WORDS = (
    "SELECT FROM WHERE GROUP BY ORDER HAVING LIMIT OFFSET INSERT INTO VALUES UPDATE SET DELETE "
    "CREATE TABLE VIEW INDEX UNIQUE DROP ALTER ADD COLUMN RENAME TO PRIMARY KEY FOREIGN "
    "REFERENCES NOT NULL DEFAULT CHECK AND OR IN IS LIKE BETWEEN EXISTS JOIN LEFT INNER OUTER "
    "CROSS ON AS DISTINCT UNION ALL CASE WHEN THEN ELSE END BEGIN COMMIT ROLLBACK SAVEPOINT "
    "RELEASE WITH RETURNING EXPLAIN COUNT SUM AVG MIN MAX INTEGER TEXT REAL BLOB NUMERIC ASC "
    "DESC IF")
KEYWORDS = sorted(_WORDS.split())
_TABLE_CONTEXT = re.compile(r"\b(FROM|JOIN|INTO|UPDATE|TABLE)\s+\w*$", re.IGNORECASE)


class SqlCompleter(Completer):
    """Keywords, table and column names; only tables after FROM/JOIN/INTO/UPDATE/TABLE and
    after ``\\d``; only a table's columns after ``table.``; commands after a backslash."""

    def __init__(self, shell: Shell) -> None:
        self.shell = shell
        self.names: dict[str, list[str]] = {}

    def _refresh(self) -> None:
        if not self.shell.schema_changed:
            return
        try:
            self.names = self.shell.catalog.names(self.shell.conn)
            self.shell.schema_changed = False
        except Error:
            pass  # e.g. a failed transaction: complete with what we had

    def get_completions(self, document: Document,
                        complete_event: CompleteEvent) -> Iterable[Completion]:
        from .meta import COMMANDS
        self._refresh()
        before = document.text_before_cursor
        word = document.get_word_before_cursor(WORD=True)
        if word.startswith("\\") and before.strip() == word:
            yield from _matches(word, [u.split()[0] for u in COMMANDS])
            return
        if "." in word:
            table, _, part = word.rpartition(".")
            cols = next((c for t, c in self.names.items() if t.lower() == table.lower()), [])
            yield from _matches(part, cols)
            return
        tables = sorted(self.names)
        if _TABLE_CONTEXT.search(before) or before.lstrip().startswith("\\d"):
            yield from _matches(word, tables)
            return
        columns = sorted({c for cols in self.names.values() for c in cols})
        yield from _matches(word, tables + columns + KEYWORDS, upper=True)


def _matches(prefix: str, candidates: Iterable[str], upper: bool = False) -> Iterable[Completion]:
    low = prefix.lower()
    seen: set[str] = set()
    for c in candidates:
        if c.lower().startswith(low) and c not in seen and c != prefix:
            seen.add(c)
            text = c if not (upper and c.isupper() and prefix.islower()) else c.lower()
            yield Completion(text, start_position=-len(prefix))


def _history_file() -> str:
    home = casemate_home()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = home / "shell_history"
    fd = os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)  # also a history an older version left readable
    return str(path)


def line_reader(shell: Shell) -> Callable[[str], str]:
    """A function reading one line after a prompt; raises EOFError at the end and
    KeyboardInterrupt on Ctrl-C."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return input
    lexer = PostgresLexer if getattr(shell.conn, "backend", "") == "postgresql" else SqlLexer
    session: PromptSession[str] = PromptSession(
        history=FileHistory(_history_file()), lexer=PygmentsLexer(lexer),
        completer=SqlCompleter(shell), complete_while_typing=False,
        enable_history_search=True)
    return lambda text: session.prompt(text)
