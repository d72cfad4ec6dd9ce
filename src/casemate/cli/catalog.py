"""What the shell's ``\\d`` commands and its completion ask the server about its tables.

The server runs the backend's own SQL, so each backend has its own catalog queries:
SQLite's ``sqlite_schema`` and ``pragma_*`` table functions, PostgreSQL's
``information_schema`` and ``pg_indexes`` in the session's schema.  They are plain
statements: a user sees the tables and columns the server lets them read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Rows = list[tuple[Any, ...]]

__all__ = ["Catalog", "catalog_for"]

_KINDS = {"t": ("table",), "v": ("view",), "i": ("index",), "": ("table", "view")}


@dataclass(frozen=True)
class Catalog:
    relations: str  # name, type for the types in ?...; ordered by name
    columns: str  # name, type, not null (0/1), default; of relation ?
    indexes: str  # name, description; of relation ?
    all_columns: str  # relation, column: for completion
    exists: str  # type of relation ?

    def relations_of(self, conn: Any, kind: str) -> Rows:
        types = _KINDS[kind]
        sql = self.relations.replace("{types}", ", ".join("?" * len(types)))
        return _rows(conn, sql, types)

    def describe(self, conn: Any, name: str) -> tuple[str, Rows, Rows] | None:
        """(type, columns, indexes) of relation ``name``; None if there is none."""
        found = _rows(conn, self.exists, (name,))
        if not found:
            return None
        return str(found[0][0]), _rows(conn, self.columns, (name,)), _rows(
            conn, self.indexes, (name,))

    def names(self, conn: Any) -> dict[str, list[str]]:
        """Every readable table and view with its columns."""
        out: dict[str, list[str]] = {}
        for rel, col in _rows(conn, self.all_columns, ()):
            out.setdefault(str(rel), []).append(str(col))
        return out


def _rows(conn: Any, sql: str, params: tuple[Any, ...]) -> Rows:
    """Run a catalog query.  With autocommit off a read opens a transaction, which would
    then sit idle (and be ended by limits.idle_in_transaction_timeout_seconds): one this
    query opened is closed again, as psql's own queries leave no transaction behind."""
    opened = not conn.in_transaction
    cur = conn.cursor()
    try:
        cur.execute(sql, params)
        return list(cur.fetchall())
    finally:
        cur.close()
        if opened and conn.in_transaction and not conn.closed:
            conn.rollback()


_SQLITE = Catalog(
    relations="SELECT name, type FROM sqlite_schema WHERE type IN ({types}) "
              "AND name NOT LIKE 'sqlite!_%' ESCAPE '!' ORDER BY name",
    columns="SELECT name, type, \"notnull\", dflt_value FROM pragma_table_info(?) ORDER BY cid",
    indexes="SELECT il.name, CASE WHEN il.origin = 'pk' THEN 'PRIMARY KEY, ' "
            "WHEN il.\"unique\" THEN 'UNIQUE, ' ELSE '' END || '(' || "
            "group_concat(ii.name, ', ') || ')' FROM pragma_index_list(?) il "
            "JOIN pragma_index_info(il.name) ii GROUP BY il.name ORDER BY il.name",
    all_columns="SELECT m.name, p.name FROM sqlite_schema m JOIN pragma_table_info(m.name) p "
                "WHERE m.type IN ('table', 'view') AND m.name NOT LIKE 'sqlite!_%' ESCAPE '!' "
                "ORDER BY m.name, p.cid",
    exists="SELECT type FROM sqlite_schema WHERE name = ? AND type IN ('table', 'view')",
)

_PG_TYPE = ("CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view' "
            "WHEN 'm' THEN 'view' WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence' "
            "ELSE 'other' END")
_PG_REL = ("pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
           "WHERE n.nspname = current_schema()")

_POSTGRESQL = Catalog(
    relations=f"SELECT name, type FROM (SELECT c.relname AS name, {_PG_TYPE} AS type FROM "
              f"{_PG_REL}) r WHERE type IN ({{types}}) ORDER BY name",
    columns="SELECT column_name, data_type, CASE is_nullable WHEN 'NO' THEN 1 ELSE 0 END, "
            "column_default FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = ? ORDER BY ordinal_position",
    indexes="SELECT indexname, regexp_replace(indexdef, '^.* USING ', '') FROM pg_indexes "
            "WHERE schemaname = current_schema() AND tablename = ? ORDER BY indexname",
    all_columns="SELECT table_name, column_name FROM information_schema.columns WHERE "
                "table_schema = current_schema() ORDER BY table_name, ordinal_position",
    exists=f"SELECT {_PG_TYPE} FROM {_PG_REL} AND c.relname = ? AND c.relkind IN "
           "('r', 'p', 'v', 'm')",
)


def catalog_for(backend: str) -> Catalog:
    return _POSTGRESQL if backend == "postgresql" else _SQLITE
