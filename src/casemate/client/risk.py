"""Verdicts on what a request may have done, shared by both clients, with no I/O.

* :func:`may_write`: whether a request may have changed data, so that closing the
  open transaction would lose something (:func:`warn_uncommitted` says so).
* :func:`commit_risk`: what a request sent but not answered may have committed,
  so that a lost connection is worded "rolled back" only when nothing could have
  committed (:meth:`~.core.ClientCore.lost_error`).
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from ..errors import UncommittedWorkWarning
from ..protocol import Msg
from ..protocol.messages import Admin, Call, ExecuteMany, Fetch, Query, typed

__all__ = ["may_write", "commit_risk", "warn_uncommitted"]


# A statement that can end a transaction by committing it: COMMIT, END (SQLite), RELEASE of
# a savepoint that began the transaction, PREPARE TRANSACTION (PostgreSQL); at the start of
# the text or after a semicolon, past comments.  A false match only makes an error cautious.
_COMMIT_SQL = re.compile(
    r"(?:^|;)(?:\s|--[^\n]*(?:\n|$)|/\*.*?\*/)*(?:COMMIT|END|RELEASE|PREPARE)\b",
    re.IGNORECASE | re.DOTALL)
_READ_ONLY_ADMIN = frozenset({"status", "sessions"})
# Statements that read (or only open or mark a transaction): after them alone, closing an
# open transaction loses nothing.  Anything else in a transaction may have written.
_READ_SQL = re.compile(r"(?:\s|--[^\n]*(?:\n|$)|/\*.*?\*/)*(?:SELECT|VALUES|EXPLAIN|SHOW|"
                       r"BEGIN|START|SAVEPOINT|RELEASE|ROLLBACK)\b", re.IGNORECASE | re.DOTALL)


_WITH_SQL = re.compile(r"(?:\s|--[^\n]*(?:\n|$)|/\*.*?\*/)*WITH\b", re.IGNORECASE | re.DOTALL)
_QUOTED_OR_COMMENT = re.compile(r"'(?:[^']|'')*'|--[^\n]*|/\*.*?\*/", re.DOTALL)
_DML_WORD = re.compile(r"\b(?:INSERT|UPDATE|DELETE|MERGE|REPLACE\b(?!\s*\())\b", re.IGNORECASE)


def warn_uncommitted(stacklevel: int) -> None:
    """Say that closing loses changes (the server rolls them back), as a warning: a
    program that meant to commit learns it here rather than from missing rows later."""
    warnings.warn(UncommittedWorkWarning(
        "closing a connection with uncommitted changes (or a server method call that may "
        "have made some): the server rolls them back; call commit() (or rollback() to "
        "discard them) before close()"), stacklevel=stacklevel + 1)


def may_write(sent: tuple[Msg, Any] | None) -> bool:
    """Whether a request may have changed data (a guess on the side of caution; a
    ``SELECT`` that calls a writing function is not seen).  Asked after every request
    answered in a transaction: the verdict on a statement's text is remembered."""
    if sent is None:
        return False
    body = sent[1]
    if type(body) is not Query:
        body = typed(*sent)
    if isinstance(body, Query):
        sql = body.sql
        if not isinstance(sql, str):
            return True
        verdict = _VERDICTS.get(sql)
        if verdict is None:
            verdict = _sql_may_write(sql)
            if len(sql) <= _VERDICT_MAX_TEXT:
                if len(_VERDICTS) >= _VERDICT_MAX:
                    _VERDICTS.clear()
                _VERDICTS[sql] = verdict
        return verdict
    return sent[0] in (Msg.EXECUTE_MANY, Msg.CALL)


# Verdicts of _sql_may_write by statement text (a program repeats a few statements):
# bounded in count and in the length of the texts kept.
_VERDICTS: dict[str, bool] = {}
_VERDICT_MAX = 512
_VERDICT_MAX_TEXT = 4096


def _sql_may_write(sql: str) -> bool:
    if _READ_SQL.match(sql):
        return False
    if not _WITH_SQL.match(sql):
        return True
    # WITH ... SELECT reads; WITH ... INSERT/UPDATE/DELETE (or such a CTE) writes.
    return bool(_DML_WORD.search(_QUOTED_OR_COMMENT.sub(" ", sql)))


def commit_risk(sent: tuple[Msg, Any] | None, autocommit_portals: set[int]) -> str:
    """What a request sent but not answered may have committed ("" if it cannot commit).

    Autocommit statements (the QUERY/EXECUTE_MANY/CALL flag ``begin`` off) commit by
    themselves, as does FETCH of an autocommit result (an INSERT ... RETURNING ends with
    its last row), a server method (on PostgreSQL nothing stops one from sending COMMIT)
    and an admin command that changes users, groups or grants.
    """
    if sent is None:
        return ""
    try:
        if sent[0] is Msg.COMMIT:
            return "COMMIT"
        body = typed(*sent)
        if isinstance(body, Query):
            if not body.begin:
                return "a statement in autocommit mode"
            return "a COMMIT statement" if _COMMIT_SQL.search(body.sql) else ""
        if isinstance(body, ExecuteMany):
            if not body.begin:
                return "executemany in autocommit mode"
            return "a COMMIT statement" if _COMMIT_SQL.search(body.sql) else ""
        if isinstance(body, Call):
            # Even inside a transaction: only SQLite's authorizer stops a method's COMMIT.
            return ("a server method call" if body.begin else
                    "a server method call in autocommit mode")
        if isinstance(body, Fetch) and body.portal in autocommit_portals:
            return "a fetch from an autocommit statement"
        if isinstance(body, Admin) and body.command not in _READ_ONLY_ADMIN:
            return f"admin command {body.command!r}"
    except (TypeError, IndexError, KeyError):
        return "a request"  # a shape this function does not know: assume the worst
    return ""
