"""Typed results of expressions on SQLite, read from each statement's bytecode.

SQLite reports no declared type for an expression, so ``SELECT ?`` with a
``date`` would come back as text.  When a statement has typed parameters (or
calls a ``decimal_*`` function), its bytecode (``EXPLAIN``, cached per
statement) is followed from each result column back to where its value comes
from (:class:`_Flow`): a result column fed only by parameters of one Python
type (and NULLs, or table columns as in ``COALESCE(?, col)``) is read back as
that type; one fed by a ``decimal_*`` function as ``Decimal``.  Anything else
(arithmetic, other functions) leaves the value as SQLite returns it.  The same
reading gives each result column's declared type (cursor.description).  Part
of :mod:`casemate.storage.sqlite_types`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import sqlite3
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from ..protocol.codec import Json
from .base import TooLong

__all__ = ["ResultTyper", "Plan", "Converters", "converters_for", "convert_rows",
           "declared_code", "declared_types"]

# -- reading typed values back --------------------------------------------------------------
def _as_date(v: Any) -> Any:
    return dt.date.fromisoformat(v) if isinstance(v, str) else v


def _as_time(v: Any) -> Any:
    return dt.time.fromisoformat(v) if isinstance(v, str) else v


def _as_datetime(v: Any) -> Any:
    return dt.datetime.fromisoformat(v) if isinstance(v, str) else v


def _as_decimal(v: Any) -> Any:
    if isinstance(v, str | int):
        return Decimal(v)
    return Decimal(repr(v)) if isinstance(v, float) else v


def _as_bool(v: Any) -> Any:
    return bool(v) if isinstance(v, int) else v


def _as_uuid(v: Any) -> Any:
    return uuid.UUID(v) if isinstance(v, str) else v


def _as_json(v: Any) -> Any:
    return Json.read(v) if isinstance(v, str) else v


_READERS: dict[type, Callable[[Any], Any]] = {
    Decimal: _as_decimal, dt.date: _as_date, dt.time: _as_time, dt.datetime: _as_datetime,
    bool: _as_bool, uuid.UUID: _as_uuid, Json: _as_json,
}


def _lenient(read: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def convert(v: Any) -> Any:
        try:
            return read(v)
        except (ValueError, ArithmeticError, RecursionError):
            # not in the expected form (COALESCE(?, other_column)), or JSON nested deeper
            # than Python decodes: as stored
            return v
    return convert


_LENIENT = {t: _lenient(r) for t, r in _READERS.items()}

# Where a register's value may come from, in the bytecode of one statement.
# A table's column is ("col", cursor, j); its rowid ("rowid", cursor).
_NULL, _OTHER = "null", "other"
# Opcodes whose output register is p2 / p3 (the others that write registers are "other").
_MOVES = {"Copy", "SCopy", "IntCopy"}
_TABLE_OPENS = {"OpenRead", "OpenWrite", "ReopenIdx"}
# Opcodes that write no value a result could show (jumps, tests, cursor moves; those of
# coroutines and subroutines store a return address), and those that change p1 in place.
_NO_VALUE = frozenset({
    "Init", "Goto", "Halt", "Transaction", "OpenRead", "OpenWrite", "OpenEphemeral",
    "OpenAutoindex", "SorterOpen", "Rewind", "Next", "Prev", "SorterSort", "SorterNext",
    "Sort", "Last", "Once", "If", "IfNot", "IsNull", "NotNull", "Eq", "Ne", "Lt", "Le", "Gt",
    "Ge", "Jump", "Return", "Gosub", "EndCoroutine", "InitCoroutine", "Yield", "BeginSubrtn",
    "ResultRow", "Close", "Noop", "Explain", "TableLock", "SeekGE", "SeekGT", "SeekLE",
    "SeekLT", "SeekRowid", "NotExists", "NotFound", "Found", "NoConflict", "IdxGE", "IdxGT",
    "IdxLE", "IdxLT", "IfPos", "IfNotZero", "DecrJumpZero", "ElseEq", "Compare", "Permutation",
    "HaltIfNull", "IsType", "ReleaseReg", "Delete", "ResetSorter", "ColumnsUsed", "CursorHint",
    "FkCheck", "NullRow", "DeferredSeek", "FinishSeek", "SeekEnd", "SeekHit", "Filter",
    "FilterAdd", "IfNullRow", "IfNoHope", "IfSmaller", "SorterCompare", "Trace", "Abortable",
    "Expire", "AggStep",
    "RealAffinity",  # only ever after reading a REAL column: it keeps the column's type
})
_IN_PLACE = {"Cast", "AddImm", "MustBeInt", "Affinity"}


class _Flow:
    """Sources of registers and of the columns of temporary cursors, to a fixpoint."""

    def __init__(self, ops: list[tuple[Any, ...]]) -> None:
        self.ops = ops
        self.reg: dict[int, set[Any]] = {}
        self.record: dict[int, list[set[Any]]] = {}
        self.cursor: dict[int, list[set[Any]]] = {}
        self.tables = {op[2] for op in ops if op[1] in _TABLE_OPENS}
        self.changed = False

    def add(self, r: int, srcs: set[Any]) -> None:
        have = self.reg.setdefault(r, set())
        if not srcs <= have:
            have |= srcs
            self.changed = True

    def add_columns(self, table: dict[int, list[set[Any]]], key: int,
                    cols: list[set[Any]]) -> None:
        have = table.setdefault(key, [])
        for j, s in enumerate(cols):
            if j >= len(have):
                have.append(set())
            if not s <= have[j]:
                have[j] |= s
                self.changed = True

    def get(self, r: int) -> set[Any]:
        return self.reg.get(r, set())

    def column(self, cur: int, j: int) -> set[Any]:
        if cur in self.tables:
            return {("col", cur, j)}
        cols = self.cursor.get(cur, [])
        return set(cols[j]) if j < len(cols) else set()

    def step(self, op: tuple[Any, ...]) -> None:
        name, p1, p2, p3, p4 = op[1], op[2], op[3], op[4], op[5]
        if name == "Variable":
            self.add(p2, {("param", p1)})
        elif name == "Null":
            for r in range(p2, max(p2, p3) + 1):
                self.add(r, {_NULL})
        elif name in _MOVES:
            for k in range(p3 + 1 if name == "Copy" else 1):
                self.add(p2 + k, self.get(p1 + k))
        elif name == "Column":
            self.add(p3, self.column(p1, p2))
        elif name in ("Rowid", "IdxRowid") and p1 in self.tables:
            self.add(p2, {("rowid", p1)})
        elif name == "MakeRecord":
            self.add_columns(self.record, p3, [self.get(p1 + k) for k in range(p2)])
            self.add(p3, {_OTHER})
        elif name in ("Insert", "IdxInsert", "SorterInsert"):
            self.add_columns(self.cursor, p1, self.record.get(p2, []))
        elif name == "OpenDup":
            self.add_columns(self.cursor, p1, self.cursor.get(p2, []))
        elif name == "OpenPseudo":
            self.add_columns(self.cursor, p1, self.record.get(p2, []))
        elif name == "SorterData":
            self.add_columns(self.record, p2, self.cursor.get(p1, []))
        elif name in ("Function", "PureFunc"):
            self.add(p3, {("fn", str(p4).split("(")[0].lower())})
        elif name in ("AggFinal", "AggValue"):
            self.add(p1 if name == "AggFinal" else p3, {("fn", str(p4).split("(")[0].lower())})
        elif name in _IN_PLACE:
            for r in range(p1, p1 + (p2 if name == "Affinity" else 1)):
                self.add(r, {_OTHER})
        elif name not in _NO_VALUE:
            # Any other opcode: the registers it may write (p2 or p3) have unknown sources.
            for r in (p2, p3):
                if isinstance(r, int) and r > 0:
                    self.add(r, {_OTHER})

    def run(self) -> None:
        for _ in range(20):
            self.changed = False
            for op in self.ops:
                self.step(op)
            if not self.changed:
                return

    def results(self) -> list[set[Any]] | None:
        """The sources of each result column (the union over every ResultRow)."""
        rows = [op for op in self.ops if op[1] == "ResultRow"]
        if not rows or len({op[3] for op in rows}) != 1:
            return None
        cols = [set() for _ in range(rows[0][3])]  # type: list[set[Any]]
        for op in rows:
            for j in range(op[3]):
                cols[j] |= self.get(op[2] + j)
        return cols


class _Linear(_Flow):
    """Sources in program order, a register holding what its last write put there: what a
    description needs (one type per column), where the fixpoint's union over every write
    to a reused register would mix the columns a sorter's input and output share."""

    def add(self, r: int, srcs: set[Any]) -> None:
        self.reg[r] = set(srcs)

    def results(self) -> list[set[Any]] | None:
        cols: list[set[Any]] = []
        for _ in range(2):  # the second pass sees the records the first one filled
            self.reg, cols = {}, []
            for op in self.ops:
                self.step(op)
                if op[1] == "ResultRow":
                    if cols and len(cols) != op[3]:
                        return None
                    cols = cols or [set() for _ in range(op[3])]
                    for j in range(op[3]):
                        cols[j] |= self.get(op[2] + j)
        return cols or None


def _column_type(srcs: set[Any], types: Sequence[type | None]) -> type | None:
    """The Python type one result column's values are read back as, or None to keep them."""
    if _OTHER in srcs:
        return None
    found: set[type] = set()
    for s in srcs:
        if isinstance(s, tuple) and s[0] == "param":
            t = types[s[1] - 1] if 0 < s[1] <= len(types) else None
            if t is None:
                return None
            found.add(t)
        elif isinstance(s, tuple) and s[0] in ("col", "rowid"):
            continue  # a table's column: read as its declared type says
        elif isinstance(s, tuple):  # a function: only ours say what they return
            if not s[1].startswith("decimal") or s[1] == "decimal_cmp":
                return None
            found.add(Decimal)
    return found.pop() if len(found) == 1 else None


def _typed(v: Any) -> type | None:
    """The Python type a parameter must come back as, None for SQLite's own types."""
    t = type(v)
    if t in _READERS:
        return t
    if t is dict:
        return Json
    return None


_TYPED_TYPES = frozenset((*_READERS, dict))
# From a word's start only: searched anywhere in a word, "decimal" * 585 (4 KiB) took
# 23 ms, quadratic in the text (helper-39); a function name starts a word.
_DECIMAL_FUNCTION = re.compile(r"\bdecimal\w*\s*\(", re.IGNORECASE)
# The parameter types whose values a result may carry back typed (ResultTyper.plan).
TYPED_PARAMETER_TYPES = _TYPED_TYPES


def has_typed_result(sql: str) -> bool:
    """Whether ``sql`` calls a decimal_* function, whose result ResultTyper types."""
    return ("ecimal" in sql or "ECIMAL" in sql) and bool(_DECIMAL_FUNCTION.search(sql))


Converters = list[tuple[int, Callable[[Any], Any]]]
# (result width, converters): what ResultTyper.plan found for one statement.
Plan = tuple[int, Converters]
_WRITE_HEAD = re.compile(r"\s*(?:insert|update|delete|replace)\b", re.IGNORECASE)
_STOPPED = (sqlite3.SQLITE_INTERRUPT, 18)  # interrupted, SQLITE_TOOBIG: the caller decides


class ResultTyper:
    """Per connection: which result columns of a statement to convert, cached by statement.

    :meth:`plan` runs before the statement does, so that an EXPLAIN stopped by the
    progress handler (a cancel, the event loop's cut-off) leaves nothing half done: the
    statement is then run again whole, as any stopped statement is.
    """

    CACHE = 256

    def __init__(self, db: sqlite3.Connection, fresh_schema: Callable[[], None] = lambda: None
                 ) -> None:
        self._db = db
        self._fresh_schema = fresh_schema  # before an EXPLAIN (see sqlite._Connection)
        self._cache: OrderedDict[tuple[Any, ...], Plan] = OrderedDict()
        self._declared: OrderedDict[tuple[Any, ...], list[str | None] | None] = OrderedDict()

    def plan(self, sql: str, params: Sequence[Any]) -> Plan | None:
        """How to read ``sql``'s result; None for most statements (checked cheaply)."""
        for p in params:  # the common case first: no typed parameter, no decimal_* call
            if type(p) in _TYPED_TYPES:
                break
        else:
            if not has_typed_result(sql):
                return None
        if _WRITE_HEAD.match(sql) and "returning" not in sql.lower():
            return None  # a write without RETURNING has no result to read
        types = [_typed(p) for p in params]
        version = self._db.execute("PRAGMA schema_version").fetchone()[0]
        # A long statement is cached under its digest: the cache must stay small.
        text: str | bytes = sql if len(sql) <= 1024 else hashlib.blake2b(sql.encode()).digest()
        key = (text, tuple(types), version)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._analyse(sql, params, types)
            if hit is None:
                return None  # EXPLAIN failed: the statement will say why; nothing cached
            self._cache[key] = hit
            if len(self._cache) > self.CACHE:
                self._cache.popitem(last=False)
        return hit

    def declared(self, sql: str, params: Sequence[Any], code: Callable[[Any], str | None],
                 in_loop: bool = False) -> list[str | None] | None:
        """:func:`declared_types` of ``sql``, cached like plans (by statement, parameter
        types and schema version).  ``in_loop``: asked in the event loop, where working
        them out is refused (TooLong: a thread does it once, then they are cached): it
        runs an EXPLAIN, whose compiling and listing SQLite never stops, and analyses the
        listing in Python (helper-39: a statement under 4 KiB held the loop 0.6-1.3 s)."""
        version = self._db.execute("PRAGMA schema_version").fetchone()[0]
        text: str | bytes = sql if len(sql) <= 1024 else hashlib.blake2b(sql.encode()).digest()
        key = ("declared", text, tuple(code(p) for p in params), version)
        if key not in self._declared:
            if in_loop:
                raise TooLong("the declared column types are worked out in a thread")
            self._declared[key] = declared_types(self._db, sql, params, code)
            if len(self._declared) > self.CACHE:
                self._declared.popitem(last=False)
        return self._declared[key]

    def _analyse(self, sql: str, params: Sequence[Any], types: list[type | None]
                 ) -> Plan | None:
        try:
            self._fresh_schema()
            ops = self._db.execute("EXPLAIN " + sql, params).fetchall()
        except sqlite3.Error as e:
            if getattr(e, "sqlite_errorcode", 0) in _STOPPED:
                raise
            return None
        flow = _Flow(ops)
        flow.run()
        cols = flow.results()
        if cols is None:
            return (-1, [])  # several result shapes: leave values as they are
        out = []
        for j, srcs in enumerate(cols):
            t = _column_type(srcs, types)
            if t is not None:
                out.append((j, _LENIENT[t]))
        return (len(cols), out)


# -- declared types of result columns (cursor.description) -------------------------------
# The first word of a declared type, as the read converters know it (sqlite.py).
_DECLARED = {"DATE": "date", "TIME": "time", "DATETIME": "datetime", "TIMESTAMP": "datetime",
             "TIMESTAMPTZ": "datetime", "DECIMAL": "decimal", "NUMERIC": "decimal",
             "BOOLEAN": "bool", "BOOL": "bool", "UUID": "uuid", "JSON": "json", "JSONB": "json"}
_WITHOUT_ROWID = re.compile(r"\)\s*WITHOUT\s+ROWID", re.IGNORECASE)


def declared_code(decl: str | None) -> str | None:
    """The description type code of a column declared ``decl``: a converter's name, else
    SQLite's affinity rules in their order (sqlite.org/datatype3.html §3.1); None for no
    type or NUMERIC affinity, whose values may be integers or floats."""
    d = (decl or "").strip().upper()
    head = re.split(r"[\s(]", d, maxsplit=1)[0]
    if head in _DECLARED:
        return _DECLARED[head]
    for words, code in ((("INT",), "integer"), (("CHAR", "CLOB", "TEXT"), "text"),
                        (("BLOB",), "bytes"), (("REAL", "FLOA", "DOUB"), "float")):
        if any(w in d for w in words):
            return code
    return None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _opened_columns(db: sqlite3.Connection, ops: list[tuple[Any, ...]]
                    ) -> dict[int, list[str | None]]:
    """For each cursor the program opens on a table or an index: the type code of each
    column of its records (an index's columns are its table's; -1 is the rowid)."""
    schemas = {r[0]: r[1] for r in db.execute("PRAGMA database_list")}
    out: dict[int, list[str | None]] = {}
    for op in ops:
        if op[1] not in _TABLE_OPENS or op[4] not in schemas:
            continue
        schema = _quote(schemas[op[4]])
        master = "sqlite_temp_schema" if op[4] == 1 else f"{schema}.sqlite_schema"
        row = db.execute(f"SELECT type, name, tbl_name, sql FROM {master} WHERE rootpage = ?",
                         (op[3],)).fetchone()
        if row is None or _WITHOUT_ROWID.search(row[3] or ""):
            continue  # WITHOUT ROWID: its records put the key first; not worth mapping
        table = [declared_code(c[2]) for c in
                 db.execute(f"PRAGMA {schema}.table_xinfo({_quote(row[2])})")]
        if row[0] == "table":
            virtual = {c[0] for c in db.execute(f"PRAGMA {schema}.table_xinfo("
                                                f"{_quote(row[2])})") if c[6] == 2}
            out[op[2]] = [t for k, t in enumerate(table) if k not in virtual]
        else:
            out[op[2]] = [table[c[1]] if 0 <= c[1] < len(table) else
                          "integer" if c[1] == -1 else None
                          for c in db.execute(f"PRAGMA {schema}.index_xinfo({_quote(row[1])})")]
    return out


def _declared(srcs: set[Any], cursors: dict[int, list[str | None]],
              params: Sequence[Any], code: Callable[[Any], str | None]) -> str | None:
    """The one type code every source of a result column has, else None."""
    found: set[str | None] = set()
    for s in srcs:
        if s == _NULL:
            continue
        if not isinstance(s, tuple):
            return None
        if s[0] == "col":
            cols = cursors.get(s[1], [])
            found.add(cols[s[2]] if s[2] < len(cols) else None)
        elif s[0] == "rowid":
            found.add("integer")
        elif s[0] == "param" and 0 < s[1] <= len(params):
            found.add(code(params[s[1] - 1]))
        else:
            return None  # a function: typed by its value only
    return found.pop() if len(found) == 1 else None


def declared_types(db: sqlite3.Connection, sql: str, params: Sequence[Any],
                   code: Callable[[Any], str | None]) -> list[str | None] | None:
    """The type code of each result column of ``sql`` from where its values come: a
    table's declared column type, a parameter's value (``code``), None for other
    expressions; None when the program cannot be read (the statement's group may not
    read the schema)."""
    try:
        ops = db.execute("EXPLAIN " + sql, params).fetchall()
        cols = _Linear(ops).results()
        if cols is None:
            return None
        cursors = _opened_columns(db, ops)
    except sqlite3.Error as e:
        if getattr(e, "sqlite_errorcode", 0) in _STOPPED:
            raise  # a cancel or the event loop's cut-off: the caller stops as for any read
        return None
    return [_declared(srcs, cursors, params, code) for srcs in cols]


def converters_for(plan: Plan | None, description: Sequence[Any] | None) -> Converters | None:
    """The converters of ``plan`` if the statement's result has the width it was made for."""
    if plan is None or description is None or len(description) != plan[0] or not plan[1]:
        return None
    return plan[1]


def convert_rows(rows: list[tuple[Any, ...]], conv: list[tuple[int, Callable[[Any], Any]]]
                 ) -> list[tuple[Any, ...]]:
    """``rows`` with the converted columns replaced."""
    out = []
    for row in rows:
        r = list(row)
        for j, f in conv:
            if r[j] is not None:
                r[j] = f(r[j])
        out.append(tuple(r))
    return out
