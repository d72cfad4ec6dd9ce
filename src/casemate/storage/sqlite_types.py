"""Typed values on SQLite, which has only NULL, 64-bit INTEGER, REAL, TEXT and BLOB.

Three things make values come back as they went in (docs/types.md):

* **DDL rewrite.** ``CREATE TABLE`` (and ``ALTER TABLE ... ADD COLUMN``) sent
  through Casemate is rewritten column by column: a ``DECIMAL``/``NUMERIC``
  column becomes ``DECIMAL TEXT(p,s) COLLATE DECIMAL`` (TEXT affinity keeps
  the exact digits, which NUMERIC affinity would round to a 64-bit float; the
  first word still names the read converter; the collation makes comparisons,
  ``ORDER BY``, ``MIN``/``MAX`` and indexes numeric), ``JSON`` becomes ``JSON
  TEXT``, and each typed column gets a named ``CHECK`` that refuses a value
  its type cannot hold (``'abc'`` into a ``DATE``) with SQLSTATE ``22007`` or
  ``22P02``, as PostgreSQL does.
* **Decimal functions** registered on every connection, with the names of
  SQLite's own ``decimal`` extension: ``decimal``, ``decimal_add``,
  ``decimal_sub``, ``decimal_mul``, ``decimal_cmp``, the aggregate
  ``decimal_sum`` (and ``decimal_avg``).
* **Typed results of expressions.** SQLite reports no declared type for an
  expression, so ``SELECT ?`` with a ``date`` would come back as text.  When a
  statement has typed parameters (or calls a ``decimal_*`` function), its
  bytecode (``EXPLAIN``, cached per statement) is followed from each result
  column back to where its value comes from: a result column fed only by
  parameters of one Python type (and NULLs, or table columns as in
  ``COALESCE(?, col)``) is read back as that type; one fed by a ``decimal_*``
  function as ``Decimal``.  Anything else (arithmetic, other functions)
  leaves the value as SQLite returns it.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import re
import sqlite3
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from decimal import (
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
)
from typing import Any

from ..protocol.codec import Json

__all__ = ["install", "rewrite_ddl", "type_error", "ResultTyper", "converters_for",
           "convert_rows", "decimal_text", "rounded_decimal_columns"]

# -- decimals ---------------------------------------------------------------------------
# Exact for + - * (the digits a result needs are at most the sum of its operands'): a
# result that would need more than 10,000 digits raises (Inexact is trapped) rather than
# being rounded, and SQLite reports "user-defined function raised exception".
_EXACT = Context(prec=10_000, Emax=999_999, Emin=-999_999,
                 traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])
_AVG = Context(prec=40)  # a mean has no exact finite form in general: 40 significant digits
_ROUNDING = Context(prec=10_000, Emax=999_999, Emin=-999_999)  # rounds to a scale, on purpose
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:Infinity|Inf|NaN)",
                     re.IGNORECASE)


def _dec(v: Any) -> Decimal | None:
    """A SQL value as a Decimal, None for NULL; raises ValueError for text that is no number."""
    if v is None:
        return None
    if isinstance(v, int | float):
        return Decimal(v) if isinstance(v, int) else Decimal(repr(v))
    text = v.decode() if isinstance(v, bytes) else str(v)
    if not _NUMBER.fullmatch(text.strip()):
        raise ValueError(f"not a decimal number: {text!r}")
    return Decimal(text.strip())


def decimal_text(v: Decimal) -> str:
    """The stored form of a Decimal: ``str(v)``, which keeps every digit and the scale."""
    return str(v)


def _out(d: Decimal | None) -> str | None:
    return None if d is None else str(d)


def _binary(op: Callable[[Decimal, Decimal], Decimal]) -> Callable[[Any, Any], str | None]:
    def fn(a: Any, b: Any) -> str | None:
        x, y = _dec(a), _dec(b)
        return None if x is None or y is None else str(op(x, y))
    return fn


def _collate(a: str, b: str) -> int:
    """Numbers in numeric order (``'1.50'`` equals ``'1.5'``), then NaN, then other text."""
    ka, kb = _key(a), _key(b)
    return (ka > kb) - (ka < kb)


@functools.lru_cache(maxsize=4096)  # a sort compares each value ~log2(n) times
def _cached_key(s: str) -> tuple[int, Decimal, str]:
    return _parse_key(s)


def _key(s: str) -> tuple[int, Decimal, str]:
    # Only short texts are cached: the cache must not keep 4096 huge values alive.
    return _cached_key(s) if len(s) <= 64 else _parse_key(s)


def _parse_key(s: str) -> tuple[int, Decimal, str]:
    try:
        d = _dec(s)
    except ValueError:
        return (2, Decimal(0), s)
    if d is None or d.is_nan():
        return (1, Decimal(0), "")
    return (0, d, "")


def _cmp(a: Any, b: Any) -> int | None:
    if a is None or b is None:
        return None
    return _collate(str(a), str(b))


class _Sum:
    """``decimal_sum(x)``: the exact sum, as decimal text (NULL when there are no values)."""

    def __init__(self) -> None:
        self.total: Decimal | None = None
        self.n = 0

    def step(self, v: Any) -> None:
        d = _dec(v)
        if d is not None:
            self.total = d if self.total is None else _EXACT.add(self.total, d)
            self.n += 1

    def finalize(self) -> str | None:
        return _out(self.total)


class _Avg(_Sum):
    def finalize(self) -> str | None:
        return None if self.total is None else str(_AVG.divide(self.total, self.n))


def _decimal_fits(v: Any, precision: int, scale: int) -> int:
    """0 when ``v`` would not fit DECIMAL(precision, scale): PostgreSQL refuses it with
    22003 (once rounded to the scale, too many digits before the point; or infinite)."""
    try:
        d = _dec(v)
    except ValueError:
        return 1  # not a number at all: the 22P02 check says so
    if d is None or d.is_nan():
        return 1
    if d.is_infinite():
        return 0
    q = d.quantize(Decimal(1).scaleb(-scale), ROUND_HALF_UP, _ROUNDING)
    return int(q.is_zero() or q.adjusted() < precision - scale)


def _decimal_ok(v: Any) -> int:
    try:
        _dec(v)
    except ValueError:
        return 0
    return 1


def install(db: sqlite3.Connection) -> None:
    """Register the DECIMAL collation and the decimal functions on ``db``."""
    db.create_collation("DECIMAL", _collate)
    fns: dict[str, tuple[int, Callable[..., Any]]] = {
        "decimal": (1, lambda v: _out(_dec(v))),
        "decimal_add": (2, _binary(_EXACT.add)),
        "decimal_sub": (2, _binary(_EXACT.subtract)),
        "decimal_mul": (2, _binary(_EXACT.multiply)),
        "decimal_cmp": (2, _cmp),
        "casemate_is_decimal": (1, _decimal_ok),
        "casemate_decimal_fits": (3, _decimal_fits),
    }
    for name, (n, fn) in fns.items():
        db.create_function(name, n, fn, deterministic=True)
    db.create_aggregate("decimal_sum", 1, _Sum)  # type: ignore[arg-type]
    db.create_aggregate("decimal_avg", 1, _Avg)  # type: ignore[arg-type]


# -- the DDL rewrite ----------------------------------------------------------------------
_TOKEN = re.compile(r"""
    (?P<space>\s+|--[^\n]*|/\*.*?(?:\*/|$))
  | (?P<quoted>'(?:[^']|'')*'?|"(?:[^"]|"")*"?|`(?:[^`]|``)*`?|\[[^\]]*\]?)
  | (?P<word>[\w$]+)
  | (?P<other>.)""", re.VERBOSE | re.DOTALL)
_CONSTRAINT_WORDS = {"CONSTRAINT", "PRIMARY", "NOT", "NULL", "UNIQUE", "CHECK", "DEFAULT",
                     "COLLATE", "REFERENCES", "GENERATED", "AS"}
_TABLE_CONSTRAINTS = {"CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"}

# Declared type (first word) -> (SQLSTATE, CHECK expression on {c}) for values it refuses.
# date(julianday(x)) IS x: a real calendar day (date('2024-02-30') would let it through).
_REAL_DAY = "date(julianday({d})) IS {d}"
# (Seconds only: SQLite rounds .999999 up, past 9999-12-31 23:59:59.)
_DATETIME = ("22007", "datetime(substr({c}, 1, 19)) IS NOT NULL AND "
             + _REAL_DAY.format(d="substr({c}, 1, 10)"))
_CHECKS: dict[str, tuple[str, str]] = {
    "DATE": ("22007", _REAL_DAY.format(d="{c}")),
    "TIME": ("22007", "time(substr({c}, 1, 8)) IS NOT NULL AND substr({c}, 1, 2) < '24' AND "
             "{c} GLOB '[0-2][0-9]:[0-5]*'"),
    "DATETIME": _DATETIME, "TIMESTAMP": _DATETIME, "TIMESTAMPTZ": _DATETIME,
    "DECIMAL": ("22P02", "casemate_is_decimal({c})"),
    "NUMERIC": ("22P02", "casemate_is_decimal({c})"),
    "BOOLEAN": ("22P02", "{c} IN (0, 1)"), "BOOL": ("22P02", "{c} IN (0, 1)"),
    "UUID": ("22P02", "typeof({c}) = 'text' AND length({c}) = 36"),
    "JSON": ("22P02", "json_valid({c})"), "JSONB": ("22P02", "json_valid({c})"),
}
_TEXT_STORED = {"DECIMAL", "NUMERIC", "JSON", "JSONB"}  # rewritten to TEXT affinity
_CHECK_NAME = re.compile(r"CHECK constraint failed: (22\w{3}):(\w+):(.*)$", re.DOTALL)
_PROBLEM = {"22007": "the value is not a valid date/time value",
            "22003": "the value does not fit its declared precision and scale"}


def _tokens(sql: str) -> list[tuple[str, str]]:
    return [(m.lastgroup or "other", m.group()) for m in _TOKEN.finditer(sql)]


def _affinity_check(word: str) -> tuple[str, str, str] | None:
    """(SQLSTATE, CHECK expression, type named in the error) for a declared type."""
    if word in _CHECKS:
        return (*_CHECKS[word], word)
    if "INT" in word:  # SQLite's affinity rules, in their order
        return ("22P02", "typeof({c}) = 'integer'", "INTEGER")
    if any(k in word for k in ("CHAR", "CLOB", "TEXT", "BLOB")):
        return None
    if any(k in word for k in ("REAL", "FLOA", "DOUB")):
        return ("22P02", "typeof({c}) IN ('real', 'integer')", "REAL")
    return None


def _type_args(item: list[tuple[str, str]], after: int) -> list[int]:
    """The integers in the parentheses that follow the type name (``(10, 2)``), if any."""
    rest = [t for k, t in item[after + 1:] if k != "space"]
    if not rest or rest[0] != "(" or ")" not in rest:
        return []
    inner = rest[1:rest.index(")")]
    nums = [t for t in inner if t != ","]
    return [int(t) for t in nums] if all(t.isdigit() for t in nums) else []


def _named_check(code: str, typ: str, name: str, expr: str) -> str:
    label = f"{code}:{typ}:{name}".replace('"', '""')
    return f' CONSTRAINT "{label}" CHECK ({{c}} IS NULL OR ({expr}))'.format(c=name)


def _column(item: list[tuple[str, str]]) -> list[tuple[str, str]] | None:
    """The rewritten tokens of one column definition, or None to keep it as it is."""
    words = [(i, t) for i, (k, t) in enumerate(item) if k != "space"]
    if len(words) < 2 or item[words[0][0]][0] not in ("word", "quoted"):
        return None
    type_at = words[1][0]
    first = item[type_at][1].upper()
    if item[type_at][0] != "word" or first in _CONSTRAINT_WORDS:
        return None
    rest_words = {t.upper() for _, t in words[2:]}
    if rest_words & {"AS", "GENERATED"}:
        return None  # a generated column: its value is computed, not given
    name = item[words[0][0]][1]
    out = list(item)
    if first in _TEXT_STORED:
        out[type_at] = ("word", f"{first} TEXT")
    suffix = ""
    if first in ("DECIMAL", "NUMERIC") and "COLLATE" not in rest_words:
        suffix += " COLLATE DECIMAL"
    type_words = [t.upper() for _, t in words[1:]]
    whole = " ".join(type_words[:next((i for i, w in enumerate(type_words)
                                       if w in _CONSTRAINT_WORDS or not w.isidentifier()),
                                      len(type_words))])
    check = _affinity_check(first) or _affinity_check(whole)
    if check is not None:
        suffix += _named_check(check[0], check[2], name, check[1])
    args = _type_args(item, type_at)
    if first in ("DECIMAL", "NUMERIC") and args:
        p, sc = args[0], args[1] if len(args) > 1 else 0
        suffix += _named_check("22003", first, name, f"casemate_decimal_fits({{c}}, {p}, {sc})")
    while out and out[-1][0] == "space":
        out.pop()
    return [*out, ("other", suffix)]


def _split_items(toks: list[tuple[str, str]], start: int) -> tuple[list[list[tuple[str, str]]], int]:
    """The comma-separated items from ``toks[start]`` (just after "(") to the closing ")"."""
    items: list[list[tuple[str, str]]] = [[]]
    depth = 0
    for i in range(start, len(toks)):
        t = toks[i][1]
        if t == "(":
            depth += 1
        elif t == ")":
            if depth == 0:
                return items, i
            depth -= 1
        elif t == "," and depth == 0:
            items.append([])
            continue
        items[-1].append(toks[i])
    raise ValueError("unbalanced parentheses")


def _rewrite_create(toks: list[tuple[str, str]], words: list[int]) -> str | None:
    opening = next((i for i, (_, t) in enumerate(toks) if t == "("), None)
    if opening is None or any(toks[i][1].upper() == "AS" for i in words if i < opening):
        return None  # CREATE TABLE ... AS SELECT: the types come from the query
    items, closing = _split_items(toks, opening + 1)
    if any(t.upper() == "STRICT" for _, t in toks[closing:]):
        return None  # STRICT tables check types themselves (and allow no other type names)
    new_items = []
    for item in items:
        head = next((t.upper() for k, t in item if k != "space"), "")
        col = None if head in _TABLE_CONSTRAINTS else _column(item)
        new_items.append("".join(t for _, t in (col if col is not None else item)))
    return ("".join(t for _, t in toks[:opening + 1]) + ",".join(new_items)
            + "".join(t for _, t in toks[closing:]))


def _rewrite_add_column(toks: list[tuple[str, str]], words: list[int]) -> str | None:
    for n, i in enumerate(words):
        if toks[i][1].upper() == "ADD":
            after = words[n + 1] if n + 1 < len(words) else None
            if after is not None and toks[after][1].upper() == "COLUMN":
                after = words[n + 2] if n + 2 < len(words) else None
            if after is None:
                return None
            col = _column(toks[after:])
            return None if col is None else "".join(t for _, t in toks[:after] + col)
    return None


_DDL_FIRST = frozenset("cCaA \t\r\n")
_DDL_HEAD = re.compile(r"\s*(?:create|alter)\s", re.IGNORECASE)


def rewrite_ddl(sql: str) -> str:
    """``sql`` with its DECIMAL/NUMERIC/JSON columns stored exactly and its typed columns
    checked; any other statement unchanged (cheap: most statements stop at the first word)."""
    if sql[:1] not in _DDL_FIRST or not _DDL_HEAD.match(sql):
        return sql  # (the first character settles it for almost every statement)
    try:
        toks = _tokens(sql)
        words = [i for i, (k, _) in enumerate(toks) if k in ("word", "quoted")]
        kw = [toks[i][1].upper() for i in words[:4]]
        if kw[:2] == ["CREATE", "TABLE"] or kw[:3] in (["CREATE", "TEMP", "TABLE"],
                                                       ["CREATE", "TEMPORARY", "TABLE"]):
            new = _rewrite_create(toks, words)
        elif kw[:2] == ["ALTER", "TABLE"]:
            new = _rewrite_add_column(toks, words)
        else:
            new = None
    except ValueError:
        return sql  # SQLite reports the syntax error itself
    return sql if new is None else new


def type_error(e: sqlite3.DatabaseError) -> tuple[str, str] | None:
    """(message, SQLSTATE) when ``e`` is one of the rewrite's type checks failing."""
    if not isinstance(e, sqlite3.IntegrityError):
        return None
    if str(e) == "datatype mismatch":  # not an integer into an INTEGER PRIMARY KEY
        return ("invalid input for an INTEGER PRIMARY KEY column: the value is not an "
                "integer", "22P02")
    m = _CHECK_NAME.search(str(e))
    if m is None:
        return None
    code, typ, col = m.groups()
    problem = _PROBLEM.get(code, f"the value is not a valid {typ.lower()} value")
    return (f"invalid input for column {col} of type {typ}: {problem} (a value that does "
            "not fit its column's declared type is refused, see docs/types.md)", code)


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
    return Json(json.loads(v)) if isinstance(v, str) else v


_READERS: dict[type, Callable[[Any], Any]] = {
    Decimal: _as_decimal, dt.date: _as_date, dt.time: _as_time, dt.datetime: _as_datetime,
    bool: _as_bool, uuid.UUID: _as_uuid, Json: _as_json,
}


def _lenient(read: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def convert(v: Any) -> Any:
        try:
            return read(v)
        except (ValueError, ArithmeticError):
            return v  # not in the expected form (COALESCE(?, other_column)): as stored
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
_DECIMAL_FUNCTION = re.compile(r"decimal\w*\s*\(", re.IGNORECASE)


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
            if ("ecimal" not in sql and "ECIMAL" not in sql) or not _DECIMAL_FUNCTION.search(sql):
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

    def declared(self, sql: str, params: Sequence[Any], code: Callable[[Any], str | None]
                 ) -> list[str | None] | None:
        """:func:`declared_types` of ``sql``, cached like plans (by statement, parameter
        types and schema version)."""
        version = self._db.execute("PRAGMA schema_version").fetchone()[0]
        text: str | bytes = sql if len(sql) <= 1024 else hashlib.blake2b(sql.encode()).digest()
        key = ("declared", text, tuple(code(p) for p in params), version)
        if key not in self._declared:
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


# -- databases made before: DECIMAL columns already rounded -----------------------------------
def rounded_decimal_columns(db: sqlite3.Connection, count: bool = True
                            ) -> list[tuple[str, str, int]]:
    """(table, column, rows) for each DECIMAL/NUMERIC column with NUMERIC affinity that
    holds numbers SQLite stored as INTEGER/REAL: those values may have lost digits (a
    float keeps about 15) or their scale, and Casemate cannot tell which, so it reports
    them rather than "fix" them.  Without ``count``, rows is 1 for "some" (a quicker scan)."""
    found = []
    tables = [r[0] for r in db.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    for table in tables:
        qt = '"' + table.replace('"', '""') + '"'
        for col in db.execute(f"PRAGMA table_info({qt})").fetchall():
            decl = str(col[2]).upper()
            first = re.split(r"[\s(]", decl, maxsplit=1)[0]
            if first not in ("DECIMAL", "NUMERIC") or "TEXT" in decl:
                continue
            qc = '"' + str(col[1]).replace('"', '""') + '"'
            where = f"FROM {qt} WHERE typeof({qc}) IN ('real', 'integer')"
            n = db.execute(f"SELECT count(*) {where}" if count else
                           f"SELECT EXISTS (SELECT 1 {where})").fetchone()[0]
            if n:
                found.append((table, str(col[1]), int(n)))
    return found
