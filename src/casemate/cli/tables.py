"""Tables and units for people reading a terminal: the shell's results and the admin lists.

One renderer for all, so ``casemate shell``, ``sessions``, ``user list`` and ``group list``
look alike and like psql (`` a | b`` over ``---+---``, numbers to the right, multi-line and
East Asian wide values aligned).  The layout comes from ``tabulate`` (the library pgcli's
output goes through); this module only turns values into text and keeps a table within the
terminal by shortening its longest text columns.
"""

from __future__ import annotations

import decimal
import re
import shutil
import sys
import unicodedata
from collections.abc import Sequence
from typing import Any

import tabulate as _tabulate
from wcwidth import wcswidth

from ..units import human_bytes, human_duration, human_time

__all__ = ["cell", "one_line", "printable", "render", "expanded", "human_bytes", "human_duration",
           "human_time", "terminal_width"]

_NUMBERS = (int, float, decimal.Decimal)


def terminal_width(default: int = 100) -> int:
    """Columns of the terminal; ``default`` when the output is not one (a file or a pipe
    gets the same table whatever terminal the command was started from)."""
    if not sys.stdout.isatty():
        return default
    return shutil.get_terminal_size((default, 24)).columns


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Control characters as ``\\xNN`` (newlines kept, tabs expanded): a value someone
    else stored (a row, a table name, a session's program name) must not drive the
    reader's terminal with escape sequences."""
    if "\t" in text:
        text = "\n".join(ln.expandtabs(8) for ln in text.split("\n"))
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


# Control and format characters (escapes, line breaks of every kind, bidirectional-text
# controls, invisible joiners), private and unassigned code points.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"})


def one_line(text: str, also: str = "") -> str:
    """Text someone else wrote (a server's error, a LAN announcement) as one line that
    cannot drive the terminal, draw lines of its own or reorder what is around it: the
    characters above, and those in ``also``, written as ``\\xNN``/``\\uNNNN``."""
    out = []
    for ch in text:
        if ch in also or unicodedata.category(ch) in _ESCAPED_CATEGORIES:
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o <= 0xFF else f"\\u{o:04x}" if o <= 0xFFFF
                       else f"\\U{o:08x}")
        else:
            out.append(ch)
    return "".join(out)


def cell(v: Any, null: str = "", escape: bool = True) -> str:
    """A value as psql shows it: NULL as ``null`` (empty), booleans t/f, bytes as hex,
    control characters escaped (unless ``escape`` is false: CSV keeps exact values)."""
    if v is None:
        return null
    if isinstance(v, bool):
        return "t" if v else "f"
    if isinstance(v, bytes | bytearray | memoryview):
        return "\\x" + bytes(v).hex()
    return printable(str(v)) if escape else str(v)


def _visible(text: str) -> int:
    """Terminal columns of one line (a wide character takes two)."""
    return max(wcswidth(text), len(text))


def _numeric(rows: Sequence[Sequence[Any]], i: int) -> bool:
    vals = [r[i] for r in rows if r[i] is not None]
    return bool(vals) and all(isinstance(v, _NUMBERS) and not isinstance(v, bool) for v in vals)


def _shorten(text: str, width: int) -> str:
    lines = [ln if _visible(ln) <= width else ln[:max(width - 1, 1)] + "…"
             for ln in text.split("\n")]
    return "\n".join(lines)


def render(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, null: str = "",
           fit: int | None = None, shrink: Sequence[str] = ()) -> str:
    """Rows under ``headers``, psql's aligned format.  With ``fit``, the columns named in
    ``shrink`` are cut (with an ellipsis), widest first, until the table fits."""
    for r in rows:
        if len(r) != len(headers):
            raise ValueError(f"a row has {len(r)} values for {len(headers)} columns")
    align = ["right" if _numeric(rows, i) else "left" for i in range(len(headers))]
    headers = [printable(h) for h in headers]
    cells = [[cell(v, null) for v in r] for r in rows]
    out = _draw(headers, cells, align)
    idx = [headers.index(c) for c in shrink if c in headers]
    while fit and idx and _width(out) > fit:
        widths = {i: max([_cell_width(r[i]) for r in cells] + [len(headers[i])]) for i in idx}
        i = max(widths, key=lambda k: widths[k])
        if widths[i] <= max(len(headers[i]), 4):
            break
        for r in cells:
            r[i] = _shorten(r[i], widths[i] - 1)
        out = _draw(headers, cells, align)
    return out


def _cell_width(text: str) -> int:
    return max(_visible(ln) for ln in text.split("\n"))


def _width(table: str) -> int:
    return max((_visible(ln) for ln in table.splitlines()), default=0)


def _draw(headers: Sequence[str], cells: list[list[str]], align: list[str]) -> str:
    # psql's widths: a column is as wide as its widest value, with no extra room for the
    # header (tabulate's module-wide MIN_PADDING, restored for other users such as pandas)
    padding, _tabulate.MIN_PADDING = _tabulate.MIN_PADDING, 0
    try:
        text = _tabulate.tabulate(cells, headers=list(headers), tablefmt="presto",
                                  disable_numparse=True, colalign=align or None)
    finally:
        _tabulate.MIN_PADDING = padding
    return "\n".join(ln.rstrip() for ln in text.splitlines())


def expanded(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, null: str = "") -> str:
    """psql's ``\\x`` layout: one ``-[ RECORD n ]`` block per row, a name | value line per
    column (a multi-line value continues under its first line)."""
    if not rows:
        return "(0 rows)"
    headers = [printable(h) for h in headers]
    w = max(_visible(h) for h in headers)
    out: list[str] = []
    for n, r in enumerate(rows, 1):
        values = [cell(v, null).split("\n") for v in r]
        vw = max((_visible(ln) for v in values for ln in v), default=0)
        rule, label = "-" * w + "-+-" + "-" * vw, f"-[ RECORD {n} ]"
        out.append(label + rule[len(label):])  # psql draws the label over the rule
        for h, (first, *more) in zip(headers, values, strict=True):
            pad = " " * (w - _visible(h))
            out.append(f"{h}{pad} | {first}".rstrip())
            out += [f"{'':{w}} | {ln}".rstrip() for ln in more]
    return "\n".join(out)
