"""What the compiled program of a statement says, on one SQLite connection.

``EXPLAIN`` lists the program SQLite compiled for a statement: whether it writes
(read_only: may it run beside other readers), whether each of its steps is short
(inlinable: may it run in the event loop under the cut-off), and, for a per-table
group, which rows it deletes or updates (access.check_program).  A listing must
follow the schema as it is now (:meth:`Programs.fresh_schema`), and what was
read from one is forgotten when the schema changes (the admin's authorizer).
Part of the SQLite backend (:mod:`casemate.storage.sqlite`).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from typing import Any, overload

from .access import Policy, authorizer_for, check_program, program_needs
from .sqlite_types import big_ints

__all__ = ["Programs", "is_explain"]


def _has_preupdate_hook() -> bool:
    """Whether this SQLite reports every row it overwrites to the pre-update hook
    (access.program_needs reads a REPLACE differently without it)."""
    db = sqlite3.connect(":memory:")
    try:
        return ("ENABLE_PREUPDATE_HOOK",) in db.execute("PRAGMA compile_options").fetchall()
    finally:
        db.close()


_PREUPDATE_HOOK = _has_preupdate_hook()
_BLANK = re.compile(r"\s+|--[^\n]*|/\*.*?(?:\*/|\Z)", re.S)  # one run of blanks or one comment


def is_explain(sql: str) -> bool:
    """Whether ``sql`` is itself an EXPLAIN (after blanks and comments, as SQLite skips them)."""
    if sql[:1].isalpha() and sql[:1] not in "eE":
        return False  # most statements: their first word starts right away
    i = 0
    while (m := _BLANK.match(sql, i)) and m.end() > i:
        i = m.end()
    word = sql[i:i + 8].lower()
    return word.startswith("explain") and not (word[7:].isalnum() or word[7:] == "_")


# Functions whose one call costs more than linear in its arguments (pattern matching and
# substring search: length x pattern length; JSON with many paths: paths x elements): a
# single step of seconds on values under sqlite.INLINE_MAX_LENGTH, which the progress handler
# cannot split.  A statement calling one (itself, or through a view or a trigger) never
# runs in the event loop.
_UNBOUNDED_STEPS = frozenset((
    "like", "glob", "regexp", "match", "instr", "replace", "trim", "ltrim", "rtrim",
    "json_extract", "json_set", "json_insert", "json_replace", "json_remove", "json_patch",
    "jsonb_extract", "jsonb_set", "jsonb_insert", "jsonb_replace", "jsonb_remove",
    "jsonb_patch"))
_SCHEMA_ACTIONS = frozenset((
    sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_CREATE_TRIGGER,
    sqlite3.SQLITE_CREATE_VIEW, sqlite3.SQLITE_DROP_INDEX, sqlite3.SQLITE_DROP_TABLE,
    sqlite3.SQLITE_DROP_TRIGGER, sqlite3.SQLITE_DROP_VIEW, sqlite3.SQLITE_ALTER_TABLE,
    sqlite3.SQLITE_CREATE_VTABLE, sqlite3.SQLITE_DROP_VTABLE))
_FUNCTION_OPS = ("Function", "PureFunc", "AggStep", "AggInverse", "AggValue", "AggFinal")
# SQL text -> (writes nothing, every step short) read from EXPLAIN, for read_only and
# inlinable; bounded, cleared when full.
_facts: dict[str, tuple[bool, bool]] = {}
_MAX_FACTS = 2048
# Besides a write Transaction: what clears readOnly, and what ends or starts a transaction
# or checkpoints the WAL (COMMIT of a transaction that wrote, PRAGMA wal_checkpoint): work
# that cannot be undone and run again, so never run where the inline cut-off may stop it.
_WRITE_OPS = ("Vacuum", "JournalMode", "AutoCommit", "Checkpoint")


def _program_facts(ops: list[Any]) -> tuple[bool, bool]:
    """(writes nothing, no step of unbounded cost) for an EXPLAIN listing."""
    ro = not any((op[1] == "Transaction" and op[3]) or op[1] in _WRITE_OPS for op in ops)
    short = not any(op[1] in _FUNCTION_OPS and isinstance(op[5], str)
                    and op[5].split("(", 1)[0].lower() in _UNBOUNDED_STEPS for op in ops)
    return ro, short



class Programs:
    """The EXPLAIN side of one connection: the schema its listings follow, the authorizer
    its statements run under, and what each statement's program was found to do."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.policy = Policy("readonly")  # the connection's (set_policy): see authorize
        self.schema_changed = False  # an admin statement prepared here changes the schema
        self._schema_seen: int | None = None  # schema_version of the last fresh_schema

    def authorize(self, policy: Policy) -> None:
        """Run the connection's statements under ``policy`` from now on."""
        self.policy = policy
        # Installing an authorizer also expires every cached prepared statement, so each
        # is authorized again under the new policy when it next runs.
        self._db.set_authorizer(self._authorizer(policy))

    def _authorizer(self, policy: Policy) -> Any:
        """The policy's authorizer; for admins (the only ones who may change the schema)
        it also forgets what EXPLAIN said of each statement when one is prepared: a view
        or trigger redefined to call LIKE makes a statement that was short unbounded."""
        check = authorizer_for(policy)
        if not policy.is_admin:
            return check

        def authorize(action: int, a1: str | None, a2: str | None, db: str | None,
                      source: str | None) -> int:
            rc: int = check(action, a1, a2, db, source)
            if action in _SCHEMA_ACTIONS and rc == sqlite3.SQLITE_OK:
                _facts.clear()
                self.schema_changed = True  # cleared once it ran: forget, from execute
            return rc
        return authorize

    def fresh_schema(self) -> None:
        """Before an EXPLAIN: make its listing follow the schema as it is now.

        An EXPLAIN has no schema check of its own, so the one Python's statement cache
        keeps would go on listing the program compiled before another connection changed
        the schema: the grant check passed an INSERT whose new trigger replaces rows, and
        listing a dropped trigger's program crashed the server (SIGSEGV).  A changed
        schema_version makes this connection reload the schema (a statement that reads
        it checks the version) and recompile its cached statements (installing the
        authorizer again expires them).
        """
        version = self._db.execute("PRAGMA schema_version").fetchone()[0]
        if version != self._schema_seen:
            self._db.execute("SELECT 1 FROM sqlite_schema WHERE 0").fetchall()
            self._db.set_authorizer(self._authorizer(self.policy))
            self._schema_seen = version

    def forget(self) -> None:
        """After a statement that ran: forget what was read under the schema it changed."""
        if self.schema_changed:
            self.schema_changed = False
            _facts.clear()  # another session may have read the old schema meanwhile

    @overload
    def facts(self, sql: str, params: Sequence[Any]) -> tuple[bool, bool]: ...
    @overload
    def facts(self, sql: str, params: Sequence[Any], learn: bool) -> tuple[bool, bool] | None: ...

    def facts(self, sql: str, params: Sequence[Any], learn: bool = True
              ) -> tuple[bool, bool] | None:
        """(writes nothing, every step short) of ``sql``; (False, False) where SQLite fails.
        ``learn=False`` (the event loop): None when not yet worked out, since the EXPLAIN
        that works it out compiles the statement, which SQLite never stops (helper-39: a
        crafted text under 4 KiB held the event loop 0.4-0.9 s)."""
        # EXPLAIN tells, as SQLite's own sqlite3_stmt_readonly() does (which Python does not
        # offer): a write Transaction opcode, VACUUM or a journal mode change; and which
        # functions the program calls, views and triggers included.
        facts = _facts.get(sql)
        if facts is None:
            if not learn:
                return None
            try:
                self.fresh_schema()
                ops = self._db.execute("EXPLAIN " + sql, big_ints(params)).fetchall()
            except (sqlite3.Error, ValueError):
                return False, False  # it fails in a thread as well, with the real error
            facts = _program_facts(ops)
            if len(_facts) >= _MAX_FACTS:
                _facts.clear()
            _facts[sql] = facts
        return facts

    def check(self, sql: str, params: Sequence[Any]) -> None:
        """For a per-table group, refuse a statement whose compiled program deletes or
        updates rows the group may not (REPLACE, foreign-key actions: see access.py)."""
        try:
            self.fresh_schema()
            ops = self._db.execute("EXPLAIN " + sql, params).fetchall()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and is_explain(sql) \
                    and not self.policy.last_denied:
                return  # already an EXPLAIN: it runs nothing
            raise
        check_program(self.policy, program_needs(ops, _PREUPDATE_HOOK, self._table_of_root))

    def _table_of_root(self, page: int) -> str | None:
        row = self._db.execute("SELECT name FROM sqlite_schema WHERE rootpage = ? AND "
                               "type = 'table'", (page,)).fetchone()
        return row[0] if row else None
