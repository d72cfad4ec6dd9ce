"""Connecting from the command line, as psql does: the password is asked on a terminal.

``casemate status casemate://admin@localhost`` finds no password in the URL, the
environment or the passwords file; a library raises (code 28P02), a command on a
terminal asks for it once (the commands that connect twice reuse the answer), and
off a terminal it says how to give it in command-line terms.
"""

from __future__ import annotations

import getpass
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click

from ..client.params import login_user
from ..errors import Codes, Error
from .tables import one_line

if TYPE_CHECKING:
    from ..dbapi import Connection

__all__ = ["PORT", "SESSION_ID", "cli_connect"]

# Numeric arguments are range-checked by click ("70000 is not in the range 0<=x<=65535")
# rather than passed on, where a port would wrap (70000 listened on 4464).
PORT = click.IntRange(0, 65535)
SESSION_ID = click.IntRange(1, 2**63 - 1)

_answers: dict[str, str] = {}  # URL -> password typed at the prompt, for this process


def cli_connect(url: str, **kw: Any) -> Connection:
    """A :class:`casemate.Connection` to ``url``; on an error, print it and exit 2."""
    import casemate
    if url in _answers:
        kw = {"password": _answers[url], **kw}
    try:
        return casemate.connect(url, **kw)
    except Error as e:
        if e.code != Codes.NO_PASSWORD or not sys.stdin.isatty():
            _exit(e)
    try:
        _answers[url] = getpass.getpass(f"Password for user {login_user(url)}: ")
    except EOFError:
        _exit(Error("no password given"))
    try:
        return casemate.connect(url, password=_answers[url], **kw)
    except Error as e:
        _exit(e)


def _exit(e: Error) -> NoReturn:
    # The message and hint may come from the server (or from whoever answered in its
    # place): shown on one line each, with control characters escaped.
    message, hint = one_line(e.message), one_line(e.hint) if e.hint else None
    text = message
    if e.code == Codes.NO_PASSWORD:
        text += ("\nHint: run the command on a terminal to be asked for it, put it in the URL "
                 "(casemate://USER:PASSWORD@HOST), set CASEMATE_PASSWORD, or add a line "
                 "HOST:PORT:USER:PASSWORD to the passwords file (see 'casemate shell --help')")
    elif e.code or hint:
        text = (f"[{e.code}] " if e.code else "") + message + (f"\nHint: {hint}" if hint else "")
    click.echo(f"error: {text}", err=True)
    sys.exit(2)
