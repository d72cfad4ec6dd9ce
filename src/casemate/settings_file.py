"""The text forms of the settings: the ``casemate.toml`` that ``casemate init`` writes, one
value changed in a file (comments kept), and ``docs/settings.md``.

All three come from the declarations in :mod:`casemate.settings`, so a new
setting appears in each without being written again.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from typing import Any

from .settings import _CROSS_CHECKS, _SCHEMA, SettingsError, _all_fields
from .settings_schema import type_name

__all__ = ["render_default_toml", "render_settings_reference", "set_toml_value"]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        # TOML basic strings cannot hold control characters (a publication name taken
        # from a folder name may): escape them, as well as backslash and quote.
        text = v.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + "".join(f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F else c
                             for c in text) + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_value(k)


def _resolve(values: Mapping[str, Any], by_name: Mapping[str, Any]) -> dict[str, Any]:
    """``{"section.key": value}`` from dotted keys and from names found in one section only."""
    keys = {f.key for f in _all_fields()}
    out = dict(values)
    for key in out:
        if key not in keys:
            raise TypeError(f"unknown setting {key!r}")
    for name, value in by_name.items():
        found = [f.key for f in _all_fields() if f.name == name]
        if len(found) != 1:
            raise TypeError(f"setting name {name!r} is in {len(found)} sections "
                            f"({', '.join(found)}): pass it as {{'section.{name}': value}}")
        out[found[0]] = value
    return out


def render_default_toml(values: Mapping[str, Any] | None = None, /, **by_name: Any) -> str:
    """The commented settings file with every key at its default, but for the given values.

    ``values`` maps ``"section.key"`` to a value; a keyword names a key found
    in one section only (``port`` and ``listen``, in two, must be dotted).
    """
    overrides = _resolve(values or {}, by_name)
    lines = ["# Casemate database settings. Read once at server start:",
             "# restart the server after changing them.", ""]
    for section, fields in _SCHEMA.items():
        lines.append(f"[{section}]")
        for f in fields:
            lines.append(f"# {f.comment}")
            if f.example:
                lines.append("# For example:")
                lines.extend(f"# {e}" for e in f.example)
                continue
            lines.append(f"{f.name} = {_toml_value(overrides.get(f.key, f.toml_default))}")
        lines.append("")
    return "\n".join(lines)


def _value_end(lines: list[str], i: int) -> int:
    """The index after the last line of the ``key = value`` starting at line ``i``."""
    for j in range(i + 1, len(lines) + 1):
        try:
            tomllib.loads("\n".join(lines[i:j]))
            return j
        except tomllib.TOMLDecodeError:
            pass
    return i + 1


def set_toml_value(text: str, section: str, key: str, value: Any) -> str:
    """Return ``text`` with ``key`` in ``[section]`` set to ``value`` (comments kept).

    A key the file lacks (a file written by an older version) is added at
    the end of its section, with its comment; an unknown key is a SettingsError.
    """
    field = next((f for f in _all_fields() if f.key == f"{section}.{key}"), None)
    if field is None:
        raise SettingsError(f"unknown setting {section}.{key}")
    lines = text.splitlines()
    current, end = None, None  # the table the line is in; where [section]'s content ends
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if header := re.match(r"(\[?)\[\s*([A-Za-z0-9_.-]+)\s*\]", stripped):
            current = None if header[1] else header[2]  # [[array]]: keys of an element
            end = i + 1 if current == section else end
        elif stripped and not stripped.startswith("#"):
            after = _value_end(lines, i)  # a value may span lines (an array)
            if current == section and re.match(rf"{re.escape(key)}\s*=", stripped):
                lines[i:after] = [f"{key} = {_toml_value(value)}"]
                return "\n".join(lines) + "\n"
            end = after if current == section else end
            i = after
            continue
        i += 1
    added = [f"# {field.comment}", f"{key} = {_toml_value(value)}"]
    if end is None:
        lines += ["", f"[{section}]", *added]
    else:
        lines[end:end] = added
    return "\n".join(lines) + "\n"


_REFERENCE_NOTE = ("Generated from src/casemate/settings.py, do not edit: python -c 'import "
                   "casemate.settings_file as s; print(s.render_settings_reference(), end=\"\")' "
                   "> docs/settings.md")


def render_settings_reference() -> str:
    """``docs/settings.md``: every setting with its default, what is allowed and why."""
    out = ["# Settings reference", "",
           f"<!-- {_REFERENCE_NOTE} -->", "",
           "Each database folder holds `casemate.toml`, written by `casemate init` with every "
           "key at its default and this comment above it. The server reads it once, at start; "
           "a key missing from the file takes its default, so files written by older versions "
           "keep working. An unknown section or key, a value of the wrong type or out of range "
           "stops the server with a message naming the key, the value and what is allowed.", ""]
    for section, fields in _SCHEMA.items():
        out += [f"## [{section}]", "", "| Key | Default | Allowed | What it does |",
                "|---|---|---|---|"]
        for f in fields:
            allowed = f.check.allowed if f.check else type_name(f.kind)
            if f.kind == (int,):
                allowed = allowed.replace("a number from", "an integer from")
            out.append(f"| `{f.name}` | `{_toml_value(f.toml_default)}` | {allowed} | "
                       f"{f.comment} |")
        for f in fields:
            if f.example:
                out += ["", f"For example (`{f.key}`):", "", "```toml", *f.example, "```"]
        out.append("")
    out += ["## Checked together", "", *(f"- {text}" for text, _ in _CROSS_CHECKS), ""]
    return "\n".join(out)
