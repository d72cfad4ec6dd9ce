"""What the PostgreSQL backend needs to know about a client's SQL text, read by PostgreSQL's
own lexer and parser.

Clients send PostgreSQL's SQL with DB-API ``qmark`` parameters (``?``).  Where
a quote, a dollar quote or a comment begins is decided by PostgreSQL's lexer
(``pglast`` wraps libpg_query, the server's scanner and grammar compiled as a
library), never by patterns of ours: an earlier regex-based scanner disagreed
with PostgreSQL about identifier characters beyond U+FFFF, and a parameter
value then ran as SQL.  :func:`analyze`:

* finds the placeholders: a ``?`` inside an operator token (PostgreSQL lexes
  ``=?`` as one operator); ``??`` there stands for a literal ``?`` (the jsonb
  operators ``?``, ``?|``, ``?&`` are written ``??``, ``??|``, ``??&``);
* writes the text for psycopg: ``%s`` (with a space on each side, so a bound
  literal never merges with its neighbours: ``e?`` must not become an escape
  string ``e'...'``) and every other ``%`` doubled;
* parses the statement with ``$n`` in place of the placeholders: more than
  one statement is refused, and the parse tree says whether the statement can
  run through a server-side cursor, which functions and relations it names,
  and what kind of statement it is.

:func:`refusal` is Casemate's guard on top of PostgreSQL's privileges: the
statements a session may not run because they would change the roles
Casemate connects with, see other sessions, break the session's protocol
state, or leave objects behind (docs/postgresql.md has the list and why).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pglast import parser as _pg

__all__ = ["Statement", "SQLTextError", "analyze", "classify", "refusal", "translate_qmarks"]

OPERATOR = "Op"  # the lexer's token name for operators, where a ``?`` can be


class SQLTextError(Exception):
    """The text cannot be run: (message, SQLSTATE)."""

    def __init__(self, message: str, code: str = "42601") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Statement:
    """One statement as PostgreSQL's parser reads it."""

    text: str             # for psycopg: %s placeholders, other % doubled
    params: int           # number of placeholders
    kind: str             # the parse node, e.g. "SelectStmt" ("" for an empty statement)
    cursor: bool          # a query a server-side (DECLARE ... WITH HOLD) cursor can run
    undoes_savepoint: bool  # ROLLBACK [TO], COMMIT...: cursors opened in it may be gone
    no_transaction_block: bool = False  # VACUUM & co.: must be sent alone
    rows: bool = True     # may return rows (SELECT, FETCH, EXECUTE, RETURNING...)
    functions: frozenset[str] = frozenset()  # called by name, or in attribute notation
    relations: frozenset[str] = frozenset()
    setting: str = ""     # SET/RESET: the parameter ("TRANSACTION", "role", "" for RESET ALL)
    detail: str = ""      # TransactionStmt kind, RenameStmt object type...


# -- placeholders ------------------------------------------------------------------------
def _marks(sql: str) -> list[tuple[int, bool]]:
    """(index, is_placeholder) of each ``?`` the lexer puts in code; ``??`` -> one literal."""
    try:
        tokens = _pg.scan(sql)
    except _pg.ParseError as e:
        raise SQLTextError(f"syntax error: {e.args[0]}") from None
    out: list[tuple[int, bool]] = []
    for tok in tokens:
        if tok.name != OPERATOR:
            continue
        i = tok.start
        while i <= tok.end:
            if sql[i] == "?":
                pair = i < tok.end and sql[i + 1] == "?"
                out.append((i, not pair))
                i += 2 if pair else 1
            else:
                i += 1
    return out


def _rewrite(sql: str, marks: list[tuple[int, bool]]) -> tuple[str, str]:
    """(psycopg text, parser text with $n) for ``sql`` with its ``?`` marks."""
    psy: list[str] = []
    par: list[str] = []
    start = n = 0
    for i, placeholder in marks:
        piece = sql[start:i]
        psy.append(piece.replace("%", "%%"))
        par.append(piece)
        if placeholder:
            n += 1
            psy.append(" %s ")
            par.append(f" ${n} ")
            start = i + 1
        else:
            psy.append("?")
            par.append("?")
            start = i + 2
    psy.append(sql[start:].replace("%", "%%"))
    par.append(sql[start:])
    return "".join(psy), "".join(par)


# -- the parse tree -------------------------------------------------------------------------
def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) of the JSON parse tree, depth first."""
    stack = [node]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            for k, v in x.items():
                yield k, v
                if isinstance(v, dict | list):
                    stack.append(v)
        elif isinstance(x, list):
            stack.extend(x)


def _svals(items: Any) -> list[str]:
    return [i["String"]["sval"] for i in items or () if isinstance(i, dict) and "String" in i]


_WRITES = {"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"}
_NO_CURSOR = _WRITES | {"intoClause", "lockingClause"}
# Statements that may return rows, besides any with a RETURNING clause.
_ROWS = {"SelectStmt", "FetchStmt", "ExecuteStmt", "ExplainStmt", "VariableShowStmt",
         "CallStmt", "CopyStmt"}
_RETURNING = {"returningList", "returningClause"}  # the parser's name: before / since 18
_ALONE = {"CreatedbStmt", "DropdbStmt", "CreateTableSpaceStmt", "DropTableSpaceStmt",
          "CreateSubscriptionStmt", "DropSubscriptionStmt", "AlterSubscriptionStmt",
          "AlterSystemStmt", "ReindexStmt", "ClusterStmt"}
_TXN_ENDS = {"TRANS_STMT_COMMIT", "TRANS_STMT_ROLLBACK", "TRANS_STMT_ROLLBACK_TO",
             "TRANS_STMT_PREPARE"}


def _statement(text: str, params: int, tree: dict[str, Any]) -> Statement:
    (kind, body), = tree.items()
    keys: set[str] = set()
    functions: set[str] = set()
    relations: set[str] = set()
    for k, v in _walk(tree):
        keys.add(k)
        if not isinstance(v, dict):
            continue
        # Typed fields hold their node inline ("relation": {"relname": ...}), so nodes are
        # recognised by their fields, not by a "RangeVar" / "FuncCall" wrapper.
        if "funcname" in v:
            functions.update(_svals(v["funcname"])[-1:])
        if "relname" in v:
            relations.add(str(v["relname"]))
        if k in ("A_Indirection", "ColumnRef"):  # x.f is f(x) in attribute notation
            functions.update(_svals(v.get("indirection") or v.get("fields")))
    detail = str(body.get("kind") or body.get("renameType") or "")
    alone = (kind in _ALONE or bool(body.get("concurrent"))
             or (kind == "VacuumStmt" and bool(body.get("is_vacuumcmd")))
             or (kind == "DiscardStmt" and detail == "DISCARD_ALL"))
    return Statement(
        text, params, kind,
        cursor=kind == "SelectStmt" and not keys & _NO_CURSOR,
        undoes_savepoint=kind == "TransactionStmt" and detail in _TXN_ENDS,
        no_transaction_block=alone, rows=kind in _ROWS or bool(keys & _RETURNING),
        functions=frozenset(functions),
        relations=frozenset(relations),
        setting=str(body.get("name") or "") if kind == "VariableSetStmt" else "",
        detail=detail)


CACHED_TEXT = 4096  # statements up to this long are cached (512 of them: about 4 MB at most)


def analyze(sql: str) -> Statement:
    """Lex and parse ``sql`` (one statement, ``?`` parameters).  Raises SQLTextError.

    Applications send the same statements again and again: short ones are cached."""
    return _analyze_cached(sql) if len(sql) <= CACHED_TEXT else _analyze(sql)


def _analyze(sql: str) -> Statement:
    if "\0" in sql:  # libpq and the lexer stop reading at a NUL: what follows would be lost
        raise SQLTextError("the statement contains a NUL character (U+0000)")
    marks = _marks(sql)
    text, parse_text = _rewrite(sql, marks)
    params = sum(1 for _, p in marks if p)
    try:
        stmts = json.loads(_pg.parse_sql_json(parse_text)).get("stmts", [])
    except _pg.ParseError as e:
        raise SQLTextError(f"syntax error: {e.args[0]}") from None
    if len(stmts) > 1:
        raise SQLTextError("cannot run several statements at once: send one statement per "
                           "execute")
    if not stmts:  # only comments, blanks or semicolons
        return Statement(text, params, "", False, False)
    return _statement(text, params, stmts[0]["stmt"])


_analyze_cached = functools.lru_cache(maxsize=512)(_analyze)


def translate_qmarks(sql: str) -> str:
    """The psycopg text of ``sql``: ``?`` -> ``%s``, ``??`` -> ``?``, ``%`` -> ``%%``."""
    return analyze(sql).text


def classify(sql: str) -> Statement:
    """Same as :func:`analyze` (kept for callers that only classify)."""
    return analyze(sql)


# -- the guard ------------------------------------------------------------------------------
# What every session, admin included, is refused.
_ROLE_STMTS = {"CreateRoleStmt", "AlterRoleStmt", "AlterRoleSetStmt", "DropRoleStmt",
               "GrantRoleStmt", "ReassignOwnedStmt"}
_ROLE_SETTINGS = {"role", "session_authorization"}
_TWO_PHASE = {"TRANS_STMT_PREPARE", "TRANS_STMT_COMMIT_PREPARED", "TRANS_STMT_ROLLBACK_PREPARED"}
_SIGNALS = {"pg_terminate_backend", "pg_cancel_backend"}
_LEXICAL_SETTINGS = {"standard_conforming_strings", "backslash_quote", "escape_string_warning"}

# What a non-admin session may run (PostgreSQL's privileges decide on the objects).
_USER_STMTS = {"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt",
               "ExplainStmt", "TransactionStmt", "VariableShowStmt", "VariableSetStmt",
               "CreateStmt", "CreateTableAsStmt", "ViewStmt", "IndexStmt", "DropStmt",
               "TruncateStmt", "LockStmt", "CallStmt", "PrepareStmt", "ExecuteStmt",
               "DeallocateStmt", "DeclareCursorStmt", "FetchStmt", "ClosePortalStmt"}
_USER_SETTINGS = {"TRANSACTION", "timezone"}
# Functions and views closed to non-admins: settings, large objects, other sessions'
# activity, and functions that run SQL given as text (the guard cannot read that SQL).
_ADMIN_FUNCTIONS = {
    "set_config": "changing settings",
    "pg_stat_get_activity": "other sessions' activity",
    "query_to_xml": "running SQL given as text", "query_to_xmlschema": "running SQL given as text",
    "query_to_xml_and_xmlschema": "running SQL given as text",
    "ts_stat": "running SQL given as text", "ts_rewrite": "running SQL given as text",
    # every server reloads its users on a casemate_rights notification: forged, flooded
    "pg_notify": "sending notifications",
    # the random() sequence outlives DISCARD ALL: the next session of the group could predict it
    "setseed": "seeding random()",
}
_ADMIN_PREFIXES = {"lo_": "using large objects", "pg_stat_get_backend_": "other sessions' activity",
                   "dblink": "running SQL given as text", "cursor_to_xml": "running SQL given "
                   "as text", "table_to_xml": "running SQL given as text", "schema_to_xml":
                   "running SQL given as text", "database_to_xml": "running SQL given as text"}
_ADMIN_RELATIONS = {"pg_stat_activity": "other sessions' activity",
                    "pg_stat_statements": "other sessions' activity",
                    "pg_settings": "changing settings"}  # UPDATE pg_settings is a SET
_LARGE_OBJECT_FUNCTIONS = {"loread", "lowrite"}


def _kind_name(kind: str) -> str:
    """"CreateFunctionStmt" -> "CREATE FUNCTION"."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", kind.removesuffix("Stmt")).upper()


def _for_everyone(st: Statement) -> str | None:
    if st.kind in _ROLE_STMTS or (st.kind == "RenameStmt" and st.detail == "OBJECT_ROLE"):
        return ("statements on PostgreSQL roles are not allowed: Casemate manages the roles it "
                "connects with (casemate user / casemate group)")
    if st.setting.lower() in _ROLE_SETTINGS:
        return "SET ROLE and SET SESSION AUTHORIZATION are not allowed"
    if st.setting.lower() in _LEXICAL_SETTINGS:
        return (f"{st.setting} must stay as it is: Casemate finds parameters with PostgreSQL's "
                "lexer in its default mode")
    if st.kind == "CopyStmt":
        return ("COPY is not supported through Casemate: read with SELECT, load with "
                "executemany(INSERT ...)")
    if st.kind == "TransactionStmt" and st.detail in _TWO_PHASE:
        return "two-phase commit (PREPARE TRANSACTION) is not supported"
    if st.functions & _SIGNALS:
        return ("ending or cancelling other connections is not allowed: an administrator ends a "
                "session with casemate drop")
    return None


def _for_users(st: Statement) -> str | None:
    if st.kind and st.kind not in _USER_STMTS:
        return f"{_kind_name(st.kind)} statements are reserved to the admin group"
    if st.kind == "VariableSetStmt" and st.setting not in _USER_SETTINGS:
        return ("changing settings is reserved to the admin group (SET TRANSACTION and SET "
                "TIME ZONE are allowed)")
    for f in st.functions:
        why = _ADMIN_FUNCTIONS.get(f) or next(
            (w for p, w in _ADMIN_PREFIXES.items() if f.startswith(p)), None)
        if why is None and f in _LARGE_OBJECT_FUNCTIONS:
            why = "using large objects"
        if why:
            return f"{f}(): {why} is reserved to the admin group"
    for r in st.relations:
        if r in _ADMIN_RELATIONS:
            return f"{r}: {_ADMIN_RELATIONS[r]} is reserved to the admin group"
    return None


def refusal(st: Statement, admin: bool) -> str | None:
    """Why a session (of the admin group or not) may not run ``st``, or None."""
    return _for_everyone(st) or (None if admin else _for_users(st))
