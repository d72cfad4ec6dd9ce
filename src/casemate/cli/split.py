"""Cutting shell input into SQL statements and backslash commands, as psql's lexer does.

A ``;`` ends a statement only outside quotes and comments; a backslash outside quotes
starts a command wherever it is, even inside an unfinished statement, which waits in the
query buffer.  The quotes are SQLite's and PostgreSQL's: '...', "...", `...`, [...],
E'...' (backslash escapes) and $tag$...$tag$ (function bodies full of ';').
"""

from __future__ import annotations

import re
from collections.abc import Iterator

__all__ = ["Splitter", "split_statements", "split_script"]


class Splitter:
    """Cuts text fed line by line into statements (at ``;`` outside quotes and comments)
    and backslash commands (from a backslash outside quotes to the end of its line).  The
    unfinished statement stays in :attr:`pending`, psql's query buffer, across commands."""

    def __init__(self) -> None:
        self.buf: list[str] = []
        self.quote: str | None = None  # the text that ends the open quote
        self.escapes = False  # inside E'...': a backslash escapes the next character
        self.in_comment = False

    @property
    def pending(self) -> str:
        return "".join(self.buf).strip()

    @property
    def state(self) -> str:
        """What the next line continues: a quote character, ``*`` (a comment), ``-`` (a
        statement) or ``=`` (nothing), as psql's prompt shows it."""
        return (self.quote or "")[:1] or ("*" if self.in_comment else "-" if self.pending else "=")

    def reset(self) -> None:
        self.buf, self.quote, self.escapes, self.in_comment = [], None, False, False

    def take(self) -> str:
        stmt = self.pending
        self.reset()
        return stmt

    def feed(self, text: str, commands: bool = True) -> Iterator[tuple[bool, str]]:
        """Yield ``(is_command, text)`` for each complete statement and command."""
        i, n = 0, len(text)
        while i < n:
            ch = text[i]
            if self.in_comment:
                end = text.find("*/", i)
                self.in_comment = end < 0
                i = n if end < 0 else end + 2
            elif self.quote:
                i = self._in_quote(text, i)
            elif commands and ch == "\\":
                end = text.find("\n", i)
                end = n if end < 0 else end
                yield True, text[i:end].strip()
                i = end
            elif (after := self._open_quote(text, i)) is not None:
                i = after
            elif text.startswith("--", i):
                end = text.find("\n", i)
                i = n if end < 0 else end
            elif text.startswith("/*", i):
                self.in_comment = True
                self.buf.append(" ")  # a comment separates tokens: SELECT/**/1 is SELECT 1
                i += 2
            else:
                if ch != ";":
                    self.buf.append(ch)
                elif stmt := self.take():
                    yield False, stmt
                i += 1

    def _open_quote(self, text: str, i: int) -> int | None:
        """At a quote's start: open it and return the index after its opening."""
        ch, before = text[i], text[i - 1:i]
        word_before = bool(before) and (before.isalnum() or before == "_")
        if ch in "'\"`[":
            self.quote = "]" if ch == "[" else ch
            # PostgreSQL's E'...' (the E not the end of a longer word)
            self.escapes = ch == "'" and before in ("e", "E") and not (
                text[i - 2:i - 1].isalnum() or text[i - 2:i - 1] == "_")
            self.buf.append(ch)
            return i + 1
        if ch == "$" and not word_before and (m := _DOLLAR_QUOTE.match(text, i)):
            self.quote = m.group(0)  # PostgreSQL's $$...$$ or $tag$...$tag$
            self.buf.append(m.group(0))
            return m.end()
        return None

    def _in_quote(self, text: str, i: int) -> int:
        assert self.quote is not None
        if self.escapes and text[i] == "\\":
            self.buf.append(text[i:i + 2])
            return i + 2
        if text.startswith(quote := self.quote, i):
            self.buf.append(quote)
            self.quote, self.escapes = None, False
            return i + len(quote)
        self.buf.append(text[i])
        return i + 1


_DOLLAR_QUOTE = re.compile(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$")


def split_statements(text: str) -> Iterator[str]:
    """Split SQL on ``;`` outside quotes and comments; yields non-empty statements."""
    s = Splitter()
    for _is_command, stmt in s.feed(text, commands=False):
        yield stmt
    if last := s.take():
        yield last


def split_script(text: str) -> Iterator[tuple[bool, str]]:
    """Like :func:`split_statements`, with backslash commands as the shell runs them: a
    command runs when it is read, an unfinished statement before it waits for its ``;``
    (or the end of the script).  Yields ``(is_command, text)``."""
    s = Splitter()
    yield from s.feed(text)
    if last := s.take():
        yield False, last
