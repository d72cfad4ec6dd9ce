"""The shell's backslash commands, psql's where psql has one (``\\d``, ``\\x``, ``\\timing``,
``\\g``, ``\\i`` ...), plus Casemate's own (``\\security``, ``\\commit``, ``\\autocommit``).

Each command is a small function taking the shell and its argument text; the table below
is also the ``\\?`` help, so the help cannot drift from what runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import InterfaceError
from .split import Splitter
from .tables import human_time, printable, render

if TYPE_CHECKING:
    from .shell import Shell

__all__ = ["run_command", "COMMANDS"]

MAX_INCLUDE_DEPTH = 16  # \i of a file that includes itself stops here

Handler = Callable[["Shell", str], bool | None]


def _quit(sh: Shell, arg: str) -> bool:
    return True


def _help(sh: Shell, arg: str) -> None:
    lines = ["General", *_section("general"), "", "Query buffer", *_section("buffer"), "",
             "Informational", *_section("info"), "", "Formatting", *_section("format"), "",
             "Transactions and connection", *_section("txn"), "",
             "SQL ends with ';'.  Tab completes table and column names; Ctrl-C cancels the "
             "running statement, or clears the line at the prompt."]
    sh.page("\n".join(lines))


def _section(name: str) -> list[str]:
    return [f"  {usage:<26} {text}" for usage, (section, text, _) in COMMANDS.items()
            if section == name]


def _on_off(arg: str, current: bool, what: str) -> bool:
    word = arg.strip().lower()
    if not word:
        return not current
    if word in ("on", "true", "1", "yes"):
        return True
    if word in ("off", "false", "0", "no"):
        return False
    raise InterfaceError(f"unrecognized value \"{arg.strip()}\" for \"{what}\": on or off "
                         "expected")


def _timing(sh: Shell, arg: str) -> None:
    sh.options.timing = _on_off(arg, sh.options.timing, "\\timing")
    click.echo(f"Timing is {'on' if sh.options.timing else 'off'}.")


def _expanded(sh: Shell, arg: str) -> None:
    if arg.strip().lower() == "auto":
        sh.options.expanded = "auto"
    else:
        sh.options.expanded = "on" if _on_off(arg, sh.options.expanded == "on", "\\x") else "off"
    shown = "used automatically" if sh.options.expanded == "auto" else sh.options.expanded
    click.echo(f"Expanded display is {shown}.")


_PSET = {"format": ("aligned", "csv", "json"), "pager": ("on", "off", "always"),
         "expanded": ("on", "off", "auto")}


def _pset(sh: Shell, arg: str) -> None:
    key, _, value = arg.strip().partition(" ")
    value = value.strip().strip("'")
    if key == "null":
        sh.options.null = value
        click.echo(f'Null display is "{value}".')
        return
    if key not in _PSET or value not in _PSET[key]:
        raise InterfaceError(f"\\pset: unknown option or value: {arg.strip()!r}",
                             hint="\\pset format aligned|csv|json, pager on|off|always, "
                                  "expanded on|off|auto, null TEXT")
    setattr(sh.options, key, value)
    click.echo(f"{key.capitalize()} is {value}.")


def _go(sh: Shell, arg: str) -> None:
    stmt = sh.split.take()
    if not stmt:
        raise InterfaceError("\\g: the query buffer is empty")
    sh.run(stmt)


def _reset(sh: Shell, arg: str) -> None:
    sh.split.reset()
    click.echo("Query buffer reset (cleared).")


def _print(sh: Shell, arg: str) -> None:
    click.echo(sh.split.pending or "Query buffer is empty.")


def _include(sh: Shell, arg: str) -> bool:
    """The file runs as a script of its own (its last statement needs no ';') inside the
    session; the query buffer typed so far waits."""
    path = arg.strip()
    if not path:
        raise InterfaceError("\\i: missing the file name")
    if sh.depth >= MAX_INCLUDE_DEPTH:
        raise InterfaceError(f"\\i {path}: files include each other more than "
                             f"{MAX_INCLUDE_DEPTH} deep")
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as e:
        raise InterfaceError(f"{path}: {e.strerror}") from e
    outer, sh.split = sh.split, Splitter()
    sh.depth += 1
    try:
        return sh.feed(text) or sh.finish()
    finally:
        sh.split, sh.depth = outer, sh.depth - 1


def _echo(sh: Shell, arg: str) -> None:
    click.echo(arg.strip())


def _describe(kind: str) -> Handler:
    def run(sh: Shell, arg: str) -> None:
        name = arg.strip().strip('"')
        if name and not kind:
            _describe_one(sh, name)
            return
        rows = sh.catalog.relations_of(sh.conn, kind)
        if name:
            rows = [r for r in rows if r[0] == name]
        if not rows:
            click.echo("Did not find any relations." if not name else
                       f'Did not find any relation named "{name}".')
            return
        sh.show(["name", "type"], rows, title="List of relations")
    return run


def _describe_one(sh: Shell, name: str) -> None:
    found = sh.catalog.describe(sh.conn, name)
    if found is None:
        click.echo(f'Did not find any relation named "{name}".', err=True)
        return
    kind, columns, indexes = found
    rows = [(col, typ or "", "not null" if notnull else "", default)
            for col, typ, notnull, default in columns]
    text = [printable(f'{kind.capitalize()} "{name}"'),
            _table(["column", "type", "nullable", "default"], rows)]
    if indexes:
        text += ["Indexes:", *[printable(f'    "{n}" {d}') for n, d in indexes]]
    sh.page("\n".join(text))


def _table(headers: list[str], rows: list[tuple[Any, ...]]) -> str:
    return render(headers, rows)


def _users(sh: Shell, arg: str) -> None:
    rows = sh.conn.admin("user_list")
    name = arg.strip()
    rows = [(n, g, c) for n, g, c in rows if not name or n == name]
    sh.show(["name", "group", "created"], [(n, g, human_time(c)) for n, g, c in rows],
            title="List of users")


def _security(sh: Shell, arg: str) -> None:
    click.echo(str(sh.conn.security))


def _conninfo(sh: Shell, arg: str) -> None:
    c = sh.conn
    click.echo(f'You are connected as user "{c.params.user}" to {c.params.server_key} '
               f"(server {c.server_version}, {c.backend}), session {c.session_id}.")
    click.echo(f"Connection: {c.security}")


def _commit(sh: Shell, arg: str) -> None:
    sh.conn.commit()
    sh.wrote = False
    click.echo("Committed.")


def _rollback(sh: Shell, arg: str) -> None:
    sh.conn.rollback()
    sh.wrote = False
    click.echo("Rolled back.")


def _autocommit(sh: Shell, arg: str) -> None:
    sh.conn.autocommit = _on_off(arg, sh.conn.autocommit, "\\autocommit")
    click.echo(f"Autocommit {'on' if sh.conn.autocommit else 'off'}.")


# usage -> (help section, help text, handler); aliases below.
COMMANDS: dict[str, tuple[str, str, Handler]] = {
    "\\?": ("general", "this help", _help),
    "\\q": ("general", "quit", _quit),
    "\\i FILE": ("general", "run the statements and commands in FILE", _include),
    "\\echo TEXT": ("general", "print TEXT", _echo),
    "\\g": ("buffer", "run the query buffer (the statement typed so far)", _go),
    "\\p": ("buffer", "show the query buffer", _print),
    "\\r": ("buffer", "clear the query buffer", _reset),
    "\\d [NAME]": ("info", "list tables and views, or describe table or view NAME", _describe("")),
    "\\dt [NAME]": ("info", "list tables", _describe("t")),
    "\\dv [NAME]": ("info", "list views", _describe("v")),
    "\\di [NAME]": ("info", "list indexes", _describe("i")),
    "\\du [NAME]": ("info", "list users and their groups (admin only)", _users),
    "\\conninfo": ("info", "who, where, and how the connection is protected", _conninfo),
    "\\x [on|off|auto]": ("format", "expanded display: one record per block", _expanded),
    "\\timing [on|off]": ("format", "show how long each statement takes", _timing),
    "\\pset OPTION VALUE": ("format", "format aligned|csv|json, pager on|off|always, "
                                      "null TEXT", _pset),
    "\\security": ("txn", "the connection's encryption and server identity", _security),
    "\\commit": ("txn", "commit the open transaction (or COMMIT)", _commit),
    "\\rollback": ("txn", "roll back the open transaction (or ROLLBACK)", _rollback),
    "\\autocommit [on|off]": ("txn", "off: every statement joins one transaction until "
                                     "\\commit", _autocommit),
}
_BY_WORD: dict[str, Handler] = {usage.split()[0]: h for usage, (_, _, h) in COMMANDS.items()}
_BY_WORD.update({"\\quit": _quit, "\\h": _help, "\\help": _help, "\\include": _include,
                 "\\go": _go, "\\reset": _reset, "\\print": _print, "\\dS": _describe("")})


def run_command(sh: Shell, line: str) -> bool:
    """Run one backslash command line; True means quit."""
    word, _, arg = line.rstrip("; \t").partition(" ")
    handler = _BY_WORD.get(word)
    if handler is None:
        raise InterfaceError(f"unknown command {word}", hint="\\? lists the commands")
    return bool(handler(sh, arg))

