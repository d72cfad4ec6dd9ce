"""Command status strings ("INSERT 0 1", "UPDATE 3", "CREATE TABLE"), as asyncpg returns.

asyncpg's ``execute`` returns PostgreSQL's command tag.  Casemate's wire carries a row
count, not a tag, so the tag is rebuilt from the statement's leading words and the
count, in PostgreSQL's spelling (``INSERT`` keeps its historical ``0`` for the oid).
"""

from __future__ import annotations

import re

__all__ = ["command_status"]

_COUNTED = frozenset({"UPDATE", "DELETE", "SELECT", "MERGE", "VALUES", "REPLACE"})
# Words PostgreSQL's tag skips after CREATE/DROP/ALTER ("CREATE OR REPLACE VIEW" -> "CREATE VIEW").
_SKIPPED = frozenset({"OR", "REPLACE", "TEMP", "TEMPORARY", "UNIQUE", "VIRTUAL", "UNLOGGED",
                      "IF", "NOT", "EXISTS"})
_WORDS = re.compile(r"[A-Za-z_]+")
_LEADING_NOISE = re.compile(r"(?:\s|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)


def command_status(sql: str, rowcount: int) -> str:
    """The tag of ``sql`` after it affected or returned ``rowcount`` rows."""
    start = m.end() if (m := _LEADING_NOISE.match(sql)) else 0
    words = [w.upper() for w in _WORDS.findall(sql, start)[:6]]
    if not words:
        return ""
    first = words[0]
    n = max(rowcount, 0)
    if first == "WITH":  # the tag is the main statement's; WITH ... SELECT is the usual one
        first = "SELECT"
    if first in ("INSERT", "REPLACE"):
        return f"INSERT 0 {n}"
    if first in _COUNTED:
        return f"{'SELECT' if first == 'VALUES' else first} {n}"
    if first in ("CREATE", "DROP", "ALTER"):
        rest = [w for w in words[1:] if w not in _SKIPPED]
        return f"{first} {rest[0]}" if rest else first
    return "COMMIT" if first == "END" else first
