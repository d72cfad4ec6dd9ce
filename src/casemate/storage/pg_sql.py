"""What the PostgreSQL backend needs to know about a client's SQL text.

Clients send PostgreSQL's SQL with DB-API ``qmark`` parameters (``?``).
psycopg wants ``%s``, and it reads every ``%`` of the text as a placeholder
marker, even inside literals.  :func:`translate_qmarks` scans the text once,
knowing PostgreSQL's lexical rules for string literals (standard ``'...'``,
escape ``E'...'``), quoted identifiers, ``--`` and nested ``/* */``
comments and dollar-quoted strings:

* ``?`` outside those becomes ``%s``; ``??`` becomes a literal ``?`` (for
  the jsonb operators ``?``, ``?|`` and ``?&``: write ``??``, ``??|``, ``??&``);
* every ``%`` (inside literals too) becomes ``%%``.

:func:`classify` tells whether a statement can run through a server-side
cursor (so a large result never sits whole in the Casemate server) and
whether it may leave state behind on a pooled connection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["translate_qmarks", "code_only", "classify", "Statement"]

# The characters at which something interesting may start.
_SPECIAL = re.compile(r"""[?%'"$/\-]|[eE]'""")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\uffff][\w\u0080-\uffff]*)?\$")
_IDENT_CHAR = re.compile(r"[\w$\u0080-\uffff]")


def _segments(sql: str) -> list[tuple[str, str]]:
    """Split ``sql`` into ("code" | "quoted", text) pieces, in order."""
    out: list[tuple[str, str]] = []
    n = len(sql)
    start = i = 0

    def push_code(end: int) -> None:
        if end > start:
            out.append(("code", sql[start:end]))

    while True:
        m = _SPECIAL.search(sql, i)
        if m is None:
            break
        j = m.start()
        c = sql[j]
        end = -1
        if c == "'" or (c in "eE" and (j == 0 or not _IDENT_CHAR.match(sql[j - 1]))):
            escape = c != "'"
            k = j + (2 if escape else 1)
            while k < n:
                ch = sql[k]
                if escape and ch == "\\":
                    k += 2
                    continue
                if ch == "'":
                    if k + 1 < n and sql[k + 1] == "'":
                        k += 2
                        continue
                    break
                k += 1
            end = min(k + 1, n)
        elif c == '"':
            k = j + 1
            while True:
                k = sql.find('"', k)
                if k < 0:
                    k = n
                    break
                if k + 1 < n and sql[k + 1] == '"':
                    k += 2
                    continue
                break
            end = min(k + 1, n)
        elif c == "-" and sql.startswith("--", j):
            k = sql.find("\n", j)
            end = n if k < 0 else k
        elif c == "/" and sql.startswith("/*", j):
            depth, k = 0, j
            while k < n:
                if sql.startswith("/*", k):
                    depth += 1
                    k += 2
                elif sql.startswith("*/", k):
                    depth -= 1
                    k += 2
                    if depth == 0:
                        break
                else:
                    k += 1
            end = k
        elif c == "$" and (j == 0 or not _IDENT_CHAR.match(sql[j - 1])):
            tag = _DOLLAR_TAG.match(sql, j)
            if tag is not None:
                k = sql.find(tag.group(), tag.end())
                end = n if k < 0 else k + len(tag.group())
        if end < 0:  # a plain character (?, %, a lone e, -, / or $): stays in the code
            i = j + 1
            continue
        push_code(j)
        out.append(("quoted", sql[j:end]))
        start = i = end
    push_code(n)
    return out


def translate_qmarks(sql: str) -> str:
    """``?`` -> ``%s`` (``??`` -> ``?``) outside literals and comments; ``%`` -> ``%%`` everywhere."""
    if "?" not in sql and "%" not in sql:
        return sql
    parts: list[str] = []
    for kind, text in _segments(sql):
        text = text.replace("%", "%%")
        if kind == "code" and "?" in text:
            text = re.sub(r"\?\??", lambda m: "?" if m.group() == "??" else "%s", text)
        parts.append(text)
    return "".join(parts)


def code_only(sql: str) -> str:
    """``sql`` with literals, quoted identifiers and comments blanked out (one space each)."""
    return "".join(text if kind == "code" else " " for kind, text in _segments(sql))


_FIRST_WORD = re.compile(r"^[\s(]*([A-Za-z]+)")
_MODIFIES = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE|INTO)\b", re.I)
_LOCKING = re.compile(r"\bFOR\s+(NO\s+KEY\s+UPDATE|UPDATE|KEY\s+SHARE|SHARE)\b", re.I)
_STATE_FIRST = {"SET", "RESET", "DISCARD", "LISTEN", "UNLISTEN", "PREPARE", "DEALLOCATE",
                "DECLARE", "LOAD", "DO", "CLOSE", "FETCH", "MOVE"}
_STATE_ANYWHERE = re.compile(
    r"\b(TEMP|TEMPORARY|set_config|pg_advisory_lock|pg_advisory_lock_shared|"
    r"pg_try_advisory_lock|pg_try_advisory_lock_shared|dblink_connect)\b", re.I)
# ROLLBACK [TO], COMMIT, END, ABORT, PREPARE TRANSACTION sent as SQL: cursors opened in the
# transaction (or since the savepoint) may be gone.
_SAVEPOINT_UNDO = re.compile(r"^\s*(ROLLBACK|COMMIT|END|ABORT|PREPARE\s+TRANSACTION)\b", re.I)
# Statements PostgreSQL runs only alone, outside any transaction block.
_ALONE = re.compile(r"^[\s(]*(VACUUM|CLUSTER|(CREATE|DROP)\s+(DATABASE|TABLESPACE|SUBSCRIPTION)|"
                    r"ALTER\s+SYSTEM|REINDEX\s+(SYSTEM|DATABASE))\b|\bCONCURRENTLY\b", re.I)


@dataclass(frozen=True)
class Statement:
    """What :func:`classify` found out about one statement."""

    cursor: bool          # a query that a server-side cursor can run (DECLARE ... FOR it)
    session_state: bool   # may leave settings, temp tables, locks... on the connection
    undoes_savepoint: bool  # ROLLBACK [TO], COMMIT...: cursors opened in it may be gone
    several: bool = False   # more than one statement (refused, as SQLite does)
    no_transaction_block: bool = False  # VACUUM & co.: must be sent alone


def classify(sql: str) -> Statement:
    code = code_only(sql)
    m = _FIRST_WORD.match(code)
    first = m.group(1).upper() if m else ""
    body = code[m.end():] if m else code
    several = ";" in code.rstrip().rstrip(";").rstrip()
    cursor = False
    if first in ("SELECT", "VALUES", "TABLE", "WITH") and not several:
        # SELECT ... INTO creates a table and data-modifying WITH cannot run in a cursor;
        # locking reads (FOR UPDATE/SHARE) cannot run in a holdable one.
        cursor = not _MODIFIES.search(_LOCKING.sub(" ", body)) and not _LOCKING.search(body)
    state = first in _STATE_FIRST or bool(_STATE_ANYWHERE.search(code))
    return Statement(cursor, state, bool(_SAVEPOINT_UNDO.match(code)), several,
                     bool(_ALONE.search(code)))
