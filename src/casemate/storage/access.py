"""Who may do what: groups, per-table grants, and the SQLite authorizer that enforces them.

The authorizer runs inside SQLite for every table, column, function and
pragma a statement touches, including those reached through views,
triggers and CTEs, so no SQL trick gets around a grant.  Some corners are
closed for everyone, admin included: ATTACH (and VACUUM INTO, which SQLite
reports as an ATTACH), temporary objects (connections are pooled, so they
would leak between sessions), and pragmas that change durability or file
layout (they would persist on a pooled connection).

The authorizer sees what a statement names, not everything it does: a
REPLACE conflict resolution (``OR REPLACE``, a table's ``ON CONFLICT
REPLACE`` constraint, inside a trigger) deletes rows while SQLite reports
an INSERT, and a foreign-key action changes rows of a table nobody named.
So for per-table groups the compiled program itself (``EXPLAIN``, trigger
and foreign-key sub-programs included) is read: every row it can delete or
update needs the right (:func:`program_needs`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PRIVILEGES", "Policy", "PermissionDenied", "authorizer_for", "check_program",
           "program_needs"]

PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
METHOD_PREFIX = "method:"  # grants on "method:NAME" with EXECUTE allow calling a server method

_S = sqlite3
_TEMP_DDL = {_S.SQLITE_CREATE_TEMP_INDEX, _S.SQLITE_CREATE_TEMP_TABLE, _S.SQLITE_CREATE_TEMP_TRIGGER,
             _S.SQLITE_CREATE_TEMP_VIEW, _S.SQLITE_DROP_TEMP_INDEX, _S.SQLITE_DROP_TEMP_TABLE,
             _S.SQLITE_DROP_TEMP_TRIGGER, _S.SQLITE_DROP_TEMP_VIEW}
_DDL = {_S.SQLITE_CREATE_INDEX, _S.SQLITE_CREATE_TABLE, _S.SQLITE_CREATE_TRIGGER,
        _S.SQLITE_CREATE_VIEW, _S.SQLITE_DROP_INDEX, _S.SQLITE_DROP_TABLE, _S.SQLITE_DROP_TRIGGER,
        _S.SQLITE_DROP_VIEW, _S.SQLITE_ALTER_TABLE, _S.SQLITE_REINDEX, _S.SQLITE_ANALYZE,
        _S.SQLITE_CREATE_VTABLE, _S.SQLITE_DROP_VTABLE}
_ALWAYS_OK = {_S.SQLITE_SELECT, _S.SQLITE_TRANSACTION, _S.SQLITE_SAVEPOINT, _S.SQLITE_RECURSIVE}
_WRITE = {_S.SQLITE_INSERT: "INSERT", _S.SQLITE_UPDATE: "UPDATE", _S.SQLITE_DELETE: "DELETE"}
_SCHEMA_TABLES = {"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema",
                  "sqlite_sequence", "sqlite_stat1", "sqlite_stat4"}
# Functions that reach the server's file system or load code.
_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}
# Introspection pragmas anyone may run.
_INFO_PRAGMAS = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
                 "foreign_key_list", "database_list", "collation_list", "function_list",
                 "pragma_list", "compile_options", "data_version", "schema_version",
                 "user_version", "encoding", "foreign_key_check", "quick_check"}
# Pragmas nobody may SET over the wire: durability, file layout, or state that
# would persist on a pooled connection into another session.
_LOCKED_PRAGMAS = {"synchronous", "journal_mode", "locking_mode", "writable_schema",
                   "temp_store_directory", "data_store_directory", "mmap_size", "page_size",
                   "auto_vacuum", "journal_size_limit", "wal_autocheckpoint", "cell_size_check",
                   "ignore_check_constraints", "trusted_schema", "secure_delete", "query_only",
                   "foreign_keys", "recursive_triggers", "case_sensitive_like",
                   "defer_foreign_keys", "temp_store", "cache_size", "busy_timeout",
                   "reverse_unordered_selects", "legacy_alter_table", "max_page_count",
                   "hard_heap_limit", "soft_heap_limit", "threads", "cache_spill"}


class PermissionDenied(Exception):
    """A statement needs a right the session's group does not have (message names it)."""


@dataclass
class Policy:
    """The rights of one session: its group and, for custom groups, per-table grants."""

    group: str
    grants: dict[str, frozenset[str]] = field(default_factory=dict)
    last_denied: str = ""
    in_method: bool = False  # a server method is running: it may not end the caller's transaction

    @property
    def is_admin(self) -> bool:
        return self.group == "admin"

    @property
    def per_table(self) -> bool:
        """A custom group: its rights differ from table to table, so hidden writes matter."""
        return self.group not in ("admin", "readwrite", "readonly")

    @property
    def reads_only(self) -> bool:
        """No write right on any table (readonly, or a custom group granted only SELECT)."""
        if self.group in ("admin", "readwrite"):
            return False
        return not any(privs & {"INSERT", "UPDATE", "DELETE"} for privs in self.grants.values())

    def refusal(self, what: str) -> PermissionDenied:
        return PermissionDenied(f"permission denied for group {self.group!r}: {what}")

    def allows(self, table: str, privilege: str) -> bool:
        if table.startswith(METHOD_PREFIX):
            return False
        if self.group in ("admin", "readwrite"):
            return True
        if self.group == "readonly":
            return privilege == "SELECT"
        return privilege in self.grants.get(table.lower(), frozenset())

    def may_call(self, method: str) -> bool:
        """Server methods: admin always; any other group needs EXECUTE on method:NAME."""
        return self.is_admin or "EXECUTE" in self.grants.get(METHOD_PREFIX + method.lower(),
                                                               frozenset())

    def deny(self, what: str) -> int:
        self.last_denied = what
        return sqlite3.SQLITE_DENY


def _check(p: Policy, action: int, a1: str | None, a2: str | None, db: str | None) -> int:
    if action == _S.SQLITE_TRANSACTION and p.in_method:
        return p.deny("BEGIN/COMMIT/ROLLBACK inside a server method (it runs in the caller's "
                      "transaction, which only the caller ends)")
    if action in _ALWAYS_OK:
        return sqlite3.SQLITE_OK
    if action == _S.SQLITE_ATTACH:
        if a1 == "" and p.is_admin:  # plain VACUUM reports an ATTACH of ""
            return sqlite3.SQLITE_OK
        return p.deny("ATTACH and VACUUM INTO (files outside Data/) are not allowed"
                      if a1 else "VACUUM is reserved to the admin group")
    if action == _S.SQLITE_DETACH:
        return p.deny("DETACH is not allowed")
    if db == "vacuum_db" and p.is_admin:
        return sqlite3.SQLITE_OK
    if action in _TEMP_DDL:
        return p.deny("temporary tables, views, indexes and triggers are not supported")
    if action == _S.SQLITE_FUNCTION:
        if a2 and a2.lower() in _DENIED_FUNCTIONS:
            return p.deny(f"function {a2}() is not allowed")
        return sqlite3.SQLITE_OK
    if action == _S.SQLITE_PRAGMA:
        return _pragma(p, (a1 or "").lower(), a2)
    if action in _DDL:
        return sqlite3.SQLITE_OK if p.is_admin else p.deny(
            f"changing the schema (group {p.group!r} is not admin)")
    table = (a1 or "").lower()
    if action == _S.SQLITE_READ:
        if table in _SCHEMA_TABLES or p.allows(table, "SELECT"):
            return sqlite3.SQLITE_OK
        return p.deny(f"SELECT on table {a1}")
    if action in _WRITE:
        priv = _WRITE[action]
        if table in _SCHEMA_TABLES or table.startswith("sqlite_"):
            if p.is_admin:
                return sqlite3.SQLITE_OK
            if "temp" in table:
                return p.deny("temporary tables, views, indexes and triggers are not supported")
            return p.deny(f"changing the schema (group {p.group!r} is not admin)")
        if not p.allows(table, priv):
            return p.deny(f"{priv} on table {a1}")
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_OK if p.is_admin else p.deny(f"operation {action}")


def _pragma(p: Policy, name: str, arg: str | None) -> int:
    if name in _INFO_PRAGMAS and (arg is None or name not in ("user_version", "schema_version")):
        return sqlite3.SQLITE_OK
    if p.is_admin and (arg is None or name not in _LOCKED_PRAGMAS):
        return sqlite3.SQLITE_OK  # admin may read any setting and change the harmless ones
    why = (" (it would change durability, file layout or a pooled connection)"
           if name in _LOCKED_PRAGMAS else f" (group {p.group!r} may only run introspection "
           "pragmas)")
    return p.deny(f"PRAGMA {name}{why}")


# Flags of OP_Delete's P2 (sqliteInt.h), and the conflict resolution OE_Replace.
_OPFLAG_NCHANGE = 0x01   # a counted deletion: a DELETE statement, a trigger's, a foreign-key action
_OPFLAG_ISUPDATE = 0x04  # the old image of a row an UPDATE (or upsert) rewrites
_OE_REPLACE = 5
_REPLACES = "REPLACE overwrites existing rows"
_DELETES = "the statement, a trigger or a foreign-key action deletes rows there"
_UPDATES = "the statement, an upsert, a trigger or a foreign-key action updates rows there"
_VTAB = "(virtual table)"

Op = tuple[Any, ...]  # an EXPLAIN row: addr, opcode, p1, p2, p3, p4, p5, comment


def program_needs(ops: Iterable[Op], preupdate_hook: bool = True,
                  table_of_root: Callable[[int], str | None] = lambda _: None,
                  ) -> dict[tuple[str, str], str]:
    """``{(table, privilege): why}`` for every row a compiled program may delete or update.

    ``ops`` is the ``EXPLAIN`` listing (SQLite appends trigger and foreign-key
    sub-programs, each starting with an ``Init``).  With the pre-update hook
    compiled in (Debian's, python.org's builds), every row SQLite removes or
    overwrites passes through an ``OP_Delete`` naming its table, the REPLACE
    of a rowid conflict too (a no-op Delete that only feeds the hook).
    Without it, such a REPLACE leaves a rowid check (``OP_NotExists``) with
    an empty failure branch, read here through the cursor's root page.
    """
    needs: dict[tuple[str, str], str] = {}
    roots: dict[int, int] = {}  # cursor -> root page, within the current (sub-)program
    for addr, opcode, p1, p2, _p3, p4, p5, *_ in ops:
        if opcode == "Init":
            roots = {}
        elif opcode == "OpenWrite":
            roots[p1] = p2
        elif opcode == "Delete" and isinstance(p4, str):
            _delete_needs(needs, p4.lower(), p2)
        elif opcode == "VUpdate" and p5 == _OE_REPLACE:
            needs[(_VTAB, "DELETE")] = _REPLACES
        elif opcode == "NotExists" and not preupdate_hook and p2 == addr + 1 and p1 in roots:
            table = table_of_root(roots[p1])
            for priv in ("UPDATE", "DELETE"):
                needs[((table or _VTAB).lower(), priv)] = _REPLACES
    return needs


def _delete_needs(needs: dict[tuple[str, str], str], table: str, flags: int) -> None:
    if flags & _OPFLAG_ISUPDATE:
        needs.setdefault((table, "UPDATE"), _UPDATES)
    elif flags & _OPFLAG_NCHANGE:
        needs.setdefault((table, "DELETE"), _DELETES)
    else:  # an uncounted deletion: the row a REPLACE conflict resolution removes
        needs[(table, "UPDATE")] = needs[(table, "DELETE")] = _REPLACES


def check_program(policy: Policy, needs: dict[tuple[str, str], str]) -> None:
    """Raise PermissionDenied for the first right in ``needs`` the policy lacks."""
    for (table, priv), why in sorted(needs.items()):
        if table == _VTAB:
            raise policy.refusal("REPLACE into a virtual table (it overwrites existing rows "
                                 "of a table whose name SQLite does not report)")
        if not policy.allows(table, priv):
            raise policy.refusal(f"{priv} on table {table} ({why})")


def authorizer_for(policy: Policy):  # type: ignore[no-untyped-def]
    """The callback for ``sqlite3.Connection.set_authorizer`` enforcing ``policy``."""
    def authorize(action: int, a1: str | None, a2: str | None, db: str | None,
                  source: str | None) -> int:
        return _check(policy, action, a1, a2, db)
    return authorize
