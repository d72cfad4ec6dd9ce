"""Server methods ("execute on server"): Python functions in a database's ``Methods/`` folder.

A method runs on the server inside the caller's session: same user, same
grants, same open transaction; only its result crosses the network::

    # MyDatabase/Methods/accounts.py
    from decimal import Decimal
    from casemate.methods import Rows, method

    @method
    def transfer(db, source: int, target: int, amount: Decimal) -> int:
        \"\"\"Move an amount between two accounts; returns the rows changed.\"\"\"
        n = db.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?",
                       (amount, source)).rowcount
        return n + db.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?",
                              (amount, target)).rowcount

    @method
    def history(db, account: int) -> Rows:
        \"\"\"Stream an account's movements.\"\"\"
        return db.rows("SELECT * FROM movements WHERE account = ?", (account,))

Clients call ``conn.call("transfer", 1, 2, Decimal("10.00"))``.  Arguments
and results are checked against the annotations; a group needs the EXECUTE
right on ``method:NAME`` (``casemate group grant DIR GROUP method:transfer
EXECUTE``) unless it is ``admin``.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import inspect
import sys
import traceback
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

__all__ = ["method", "Rows", "RowStream", "MethodContext", "ServerMethod", "MethodLoadError",
           "load_methods", "ArgumentError"]

_ATTR = "__casemate_method__"


class Rows:
    """Return annotation of a method whose result is rows (streamed like a query)."""


class MethodLoadError(Exception):
    """A module in Methods/ failed to import or declares a bad method (names file and line)."""


class ArgumentError(TypeError):
    """Arguments or result do not match the method's declared signature."""


def method(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Mark ``fn(db, ...)`` as a server method (optionally under another ``name``)."""
    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        setattr(f, _ATTR, name or f.__name__)
        return f
    return mark(fn) if fn is not None else mark


class MethodContext:
    """What a method gets as ``db``: statements in the caller's session and transaction."""

    def __init__(self, conn: Any, user: str, group: str, session_id: int) -> None:
        self._conn = conn
        self.user = user
        self.group = group
        self.session_id = session_id

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run a statement; the returned cursor has ``fetchall()``, ``rowcount``, ``lastrowid``."""
        return _ResultCursor(self._conn.execute(sql, tuple(params)))

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> int:
        return int(self._conn.executemany(sql, [tuple(p) for p in seq]))

    def rows(self, sql: str, params: Sequence[Any] = ()) -> RowStream:
        """Stream a query's rows (return this from a ``-> Rows`` method)."""
        cur = self._conn.execute(sql, tuple(params))
        names = [d[0] for d in cur.description or ()]

        def gen() -> Iterator[tuple[Any, ...]]:
            try:
                while batch := cur.fetch(500):
                    yield from batch
            finally:
                cur.close()
        return RowStream(gen(), names)


class RowStream:
    """Rows with column names, produced lazily (what ``db.rows()`` returns)."""

    def __init__(self, rows: Iterator[tuple[Any, ...]], columns: list[str]) -> None:
        self.rows = rows
        self.columns = columns

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return self.rows


class _ResultCursor:
    def __init__(self, cur: Any) -> None:
        self._cur = cur
        self.rowcount: int = cur.rowcount
        self.lastrowid: int | None = cur.lastrowid
        self.description = cur.description

    def fetchall(self) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        if self._cur.description is not None:
            while batch := self._cur.fetch(1000):
                out.extend(batch)
        self._cur.close()
        return out

    def fetchone(self) -> tuple[Any, ...] | None:
        rows = self._cur.fetch(1) if self._cur.description is not None else []
        return rows[0] if rows else None


_SIMPLE = {int, float, str, bytes, bool, Decimal, dt.date, dt.time, dt.datetime, list, dict,
           tuple, type(None)}


def _check_type(value: Any, ann: Any, what: str) -> None:
    if ann is inspect.Parameter.empty or ann is Any:
        return
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(ann):
            try:
                _check_type(value, option, what)
                return
            except ArgumentError as e:
                errors.append(str(e))
        raise ArgumentError(f"{what} is {type(value).__name__}, expected {_name(ann)}")
    base = origin or ann
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return
    if base in (list, tuple) and isinstance(value, list | tuple):
        return
    if base is int and isinstance(value, bool):
        raise ArgumentError(f"{what} is bool, expected int")
    if isinstance(base, type) and not isinstance(value, base):
        raise ArgumentError(f"{what} is {type(value).__name__}, expected {_name(ann)}")


def _name(ann: Any) -> str:
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


@dataclass
class ServerMethod:
    name: str
    fn: Callable[..., Any]
    signature: inspect.Signature
    doc: str
    source: str

    @property
    def streams(self) -> bool:
        return self.signature.return_annotation is Rows

    def describe(self) -> str:
        params = list(self.signature.parameters.values())[1:]
        sig = self.signature.replace(parameters=params)
        return f"{self.name}{sig}".replace("casemate.methods.", "")

    def bind(self, args: Sequence[Any], kwargs: dict[str, Any]) -> inspect.BoundArguments:
        """Check arguments against the signature (count, names, types); raises ArgumentError."""
        try:
            bound = self.signature.bind(None, *args, **kwargs)
        except TypeError as e:
            raise ArgumentError(f"{self.name}{self.describe()[len(self.name):]}: {e}") from None
        bound.apply_defaults()
        for pname, value in list(bound.arguments.items())[1:]:
            ann = self.signature.parameters[pname].annotation
            _check_type(value, ann, f"argument {pname!r} of {self.name}()")
        return bound

    def check_result(self, value: Any) -> None:
        ann = self.signature.return_annotation
        if ann is Rows:
            return
        _check_type(value, ann, f"result of {self.name}()")


def _from_module(mod: types.ModuleType, path: Path) -> list[ServerMethod]:
    hints_ns = vars(mod)
    out = []
    for obj in vars(mod).values():
        name = getattr(obj, _ATTR, None)
        if name is None or not callable(obj):
            continue
        try:
            hints = typing.get_type_hints(obj, globalns=hints_ns)
        except Exception as e:  # noqa: BLE001 - any bad annotation is a load error
            raise MethodLoadError(f"{path}: method {name}: bad annotation: {e}") from e
        sig = inspect.signature(obj)
        params = [p.replace(annotation=hints.get(p.name, p.annotation))
                  for p in sig.parameters.values()]
        if not params:
            line = obj.__code__.co_firstlineno
            raise MethodLoadError(f"{path}:{line}: method {name} must take the db context "
                                  "as its first parameter")
        sig = sig.replace(parameters=params, return_annotation=hints.get(
            "return", sig.return_annotation))
        out.append(ServerMethod(name, obj, sig, inspect.getdoc(obj) or "",
                                f"{path.name}:{obj.__code__.co_firstlineno}"))
    return out


def load_methods(folder: Path) -> dict[str, ServerMethod]:
    """Import every ``*.py`` in ``folder``; raises MethodLoadError naming file, line and error."""
    methods: dict[str, ServerMethod] = {}
    if not folder.is_dir():
        return methods
    for path in sorted(folder.glob("*.py")):
        modname = f"casemate_methods.{path.stem}"
        spec = importlib.util.spec_from_file_location(modname, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as e:  # noqa: BLE001 - report any import failure precisely
            tb = traceback.extract_tb(e.__traceback__)
            frames = [f for f in tb if f.filename == str(path)]
            line = frames[-1].lineno if frames else getattr(e, "lineno", "?")
            raise MethodLoadError(f"{path}:{line}: {type(e).__name__}: {e}") from e
        for m in _from_module(mod, path):
            if m.name in methods:
                raise MethodLoadError(f"{path}: method {m.name!r} is already defined in "
                                      f"{methods[m.name].source}")
            methods[m.name] = m
    return methods
