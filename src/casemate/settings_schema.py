"""How a setting is declared, and how the declarations become the schema.

:func:`setting` declares one setting as a field of a frozen section dataclass
(its default, one-line comment, range check and conversion);
:func:`read_schema` reads the sections of the whole-file dataclass into one
:class:`Field` each, from which :mod:`casemate.settings` parses files and
:mod:`casemate.settings_file` writes the default file and ``docs/settings.md``.
Which settings exist is :mod:`casemate.settings`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any

__all__ = ["Check", "Field", "read_schema", "setting", "type_name"]


@dataclasses.dataclass(frozen=True)
class Check:
    """A value rule: ``allowed`` is what the error message and the docs say is allowed."""

    allowed: str
    problem: Callable[[Any], str | None]  # None: valid; else a detail added to ``allowed``


def setting(default: Any, comment: str, check: Check | None = None, *,
            convert: Callable[[Any], Any] | None = None, table: bool = False,
            example: tuple[str, ...] = ()) -> Any:
    """Declare one setting: a dataclass field carrying what the file, the checks and docs need.

    ``convert`` turns a valid TOML value into the attribute's value (lists
    become tuples and integers floats without it); ``table``: the file holds
    a TOML table, kept as sorted (key, value) pairs; ``example`` lines are
    rendered commented out instead of ``key = default``.
    """
    meta = {"comment": comment, "check": check, "convert": convert, "table": table,
            "example": example}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Field:
    """One setting as its declaration says, with its section and the TOML types accepted."""

    section: str
    name: str
    default: Any  # the attribute's value when the file lacks the key
    kind: tuple[type, ...]  # the TOML types accepted
    comment: str
    check: Check | None
    convert: Callable[[Any], Any] | None
    table: bool
    example: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def toml_default(self) -> Any:
        if self.table:
            return dict(self.default)
        return list(self.default) if isinstance(self.default, tuple) else self.default


_TOML_KINDS: dict[Any, tuple[type, ...]] = {bool: (bool,), int: (int,), float: (int, float),
                                            str: (str,), tuple: (list,)}


def _declared(section: str, cls: type, f: dataclasses.Field[Any], hint: Any) -> Field:
    if "comment" not in f.metadata:
        raise TypeError(f"{cls.__name__}.{f.name}: declare it with setting(default, comment, "
                        "check)")
    kind = (dict,) if f.metadata["table"] else _TOML_KINDS[typing.get_origin(hint) or hint]
    return Field(section, f.name, f.default, kind, **f.metadata)


def read_schema(root: type) -> dict[str, tuple[Field, ...]]:
    """One :class:`Field` per setting, by section: the sections are ``root``'s attributes."""
    schema = {}
    for section, cls in typing.get_type_hints(root).items():
        hints = typing.get_type_hints(cls)
        schema[section] = tuple(_declared(section, cls, f, hints[f.name])
                                for f in dataclasses.fields(cls))
    return schema


def type_name(kind: tuple[type, ...]) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    if set(kind) == {int, float}:
        return "a number"  # not "an integer or a number"
    return " or ".join(names.get(k, k.__name__) for k in kind)
