"""The DDL rewrite of the SQLite storage (docs/types.md): the columns of ``CREATE TABLE``
and ``ALTER TABLE ... ADD COLUMN`` stored and checked as their declared types say.

A ``DECIMAL``/``NUMERIC`` column becomes ``DECIMAL TEXT(p,s) COLLATE DECIMAL``
(TEXT affinity keeps the exact digits, which NUMERIC affinity would round to a
64-bit float; the first word still names the read converter; the collation
makes comparisons, ``ORDER BY``, ``MIN``/``MAX`` and indexes numeric), ``JSON``
becomes ``JSON TEXT``, and each typed column gets a named ``CHECK`` that
refuses a value its type cannot hold (``'abc'`` into a ``DATE``) with SQLSTATE
``22007`` or ``22P02``, as PostgreSQL does; :func:`type_error` reads such a
refusal back.  Part of :mod:`casemate.storage.sqlite_types`.
"""

from __future__ import annotations

import re
import sqlite3

__all__ = ["rewrite_ddl", "type_error"]

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
