"""Typed values on SQLite, which has only NULL, 64-bit INTEGER, REAL, TEXT and BLOB.

Three things make values come back as they went in (docs/types.md):

* **DDL rewrite** (:mod:`.sqlite_ddl`).  ``CREATE TABLE`` (and ``ALTER TABLE
  ... ADD COLUMN``) sent through Casemate is rewritten column by column: a
  ``DECIMAL``/``NUMERIC`` column becomes ``DECIMAL TEXT(p,s) COLLATE DECIMAL``
  (TEXT affinity keeps the exact digits, which NUMERIC affinity would round to
  a 64-bit float; the first word still names the read converter; the collation
  makes comparisons, ``ORDER BY``, ``MIN``/``MAX`` and indexes numeric),
  ``JSON`` becomes ``JSON TEXT``, and each typed column gets a named ``CHECK``
  that refuses a value its type cannot hold (``'abc'`` into a ``DATE``) with
  SQLSTATE ``22007`` or ``22P02``, as PostgreSQL does.
* **Decimal functions** (here) registered on every connection, with the names
  of SQLite's own ``decimal`` extension: ``decimal``, ``decimal_add``,
  ``decimal_sub``, ``decimal_mul``, ``decimal_cmp``, the aggregate
  ``decimal_sum`` (and ``decimal_avg``).
* **Typed results of expressions** (:mod:`.sqlite_typer`).  SQLite reports no
  declared type for an expression, so ``SELECT ?`` with a ``date`` would come
  back as text.  When a statement has typed parameters (or calls a
  ``decimal_*`` function), its bytecode (``EXPLAIN``, cached per statement) is
  followed from each result column back to where its value comes from: a
  result column fed only by parameters of one Python type (and NULLs, or table
  columns as in ``COALESCE(?, col)``) is read back as that type; one fed by a
  ``decimal_*`` function as ``Decimal``.  Anything else (arithmetic, other
  functions) leaves the value as SQLite returns it.

Here too: the adapters and converters of the values SQLite has no type for
(:func:`register_types`), the parameters it cannot store (:func:`big_ints`),
and the check for decimals an older database already rounded.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import sqlite3
import uuid
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
from .base import StorageError
from .sqlite_ddl import rewrite_ddl, type_error
from .sqlite_typer import ResultTyper, convert_rows, converters_for

__all__ = ["install", "rewrite_ddl", "type_error", "ResultTyper", "converters_for",
           "convert_rows", "decimal_text", "rounded_decimal_columns", "register_types",
           "big_ints", "OutOfRange"]


# -- values SQLite has no type for, and values it cannot store ----------------------------
def _lenient(parse: Any) -> Any:
    """A converter that hands back the stored text when it is not in the expected format
    (a column's declared type does not guarantee its contents in SQLite), or cannot be
    decoded: JSON nested deeper than Python's recursion limit (SQLite's ``json_valid``
    accepts up to 1,000 levels), which ended the session with an internal error."""
    def convert(b: bytes) -> Any:
        try:
            return parse(b)
        except (ValueError, ArithmeticError, RecursionError):
            return b.decode(errors="replace")
    return convert


def register_types() -> None:
    # Values without a native SQLite type are stored as ISO/decimal text and
    # read back typed when the column's declared type names them.
    sqlite3.register_adapter(Decimal, str)
    sqlite3.register_adapter(dt.date, lambda v: v.isoformat())
    sqlite3.register_adapter(dt.datetime, lambda v: v.isoformat())
    sqlite3.register_adapter(dt.time, lambda v: v.isoformat())
    sqlite3.register_adapter(uuid.UUID, str)
    sqlite3.register_adapter(Json, Json.dumps)
    sqlite3.register_adapter(dict, lambda v: Json(v).dumps())
    conv_dt = lambda b: dt.datetime.fromisoformat(b.decode())  # noqa: E731
    parsers: dict[str, Callable[[bytes], Any]] = {
        "DATE": lambda b: dt.date.fromisoformat(b.decode()),
        "TIME": lambda b: dt.time.fromisoformat(b.decode()),
        "DATETIME": conv_dt, "TIMESTAMP": conv_dt, "TIMESTAMPTZ": conv_dt,
        "DECIMAL": lambda b: Decimal(b.decode()), "NUMERIC": lambda b: Decimal(b.decode()),
        "BOOLEAN": lambda b: b not in (b"0", b""), "BOOL": lambda b: b not in (b"0", b""),
        "UUID": lambda b: uuid.UUID(b.decode()),
        "JSON": Json.read, "JSONB": Json.read,
    }
    for name, parse in parsers.items():
        sqlite3.register_converter(name, _lenient(parse))


class OutOfRange(ValueError):
    """An integer SQLite cannot store (beyond 64 bits)."""


def big_ints(params: Sequence[Any]) -> Sequence[Any]:
    # SQLite integers are 64-bit, and it silently turns larger ones into lossy floats:
    # refuse them instead of changing the value.
    for p in params:
        if type(p) is int and not -(2**63) <= p < 2**63:
            raise OutOfRange(f"integer {p} does not fit in 64 bits, the largest integer the "
                             "SQLite storage holds; store it as text (str(value))")
        if type(p) is float and p != p:
            raise StorageError("SQLite cannot store a float NaN (it would become NULL)",
                               "22000", "store Decimal('NaN') in a DECIMAL column, or NULL")
    return params


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
