"""``casemate shell URL``: interactive SQL, ``-c SQL``, ``-f FILE`` or a script on standard input.

It behaves like psql, because that is the shell our users already know: autocommit on
(``BEGIN`` opens a transaction), a backslash outside quotes starts a shell command anywhere
in a line (``SELECT 1 \\g``, or ``\\d`` while a statement is half typed), results in aligned
tables or ``\\x`` records, long results through a pager, ``\\timing``.  Scripts and the
interactive prompt go through one :class:`Shell`, so a command does the same in both; a
script stops at its first error (psql's ``ON_ERROR_STOP``), the prompt goes on.  Line
editing, history, completion and highlighting are in :mod:`.prompt`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..errors import Error, UncommittedWorkWarning
from .catalog import catalog_for
from .connect import cli_connect
from .split import Splitter, split_script, split_statements
from .tables import cell, expanded, printable, render

__all__ = ["shell", "Shell", "Options", "Splitter", "split_statements", "split_script",
           "format_table"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows as psql prints them (see :func:`.tables.render`)."""
    return render(headers, rows)


@contextlib.contextmanager
def _ctrl_c_cancels(conn: Any) -> Iterator[None]:
    """While a statement runs, Ctrl-C asks the server to stop it and the shell goes on
    (the statement fails with 57014); a second Ctrl-C stops waiting, as before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed = 0

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal pressed
        pressed += 1
        if pressed > 1:
            signal.default_int_handler(signum, frame)
        # From a thread: this one may be in the middle of sending on the connection.
        threading.Thread(target=conn.cancel, name="casemate-cancel", daemon=True).start()
    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@dataclass
class Options:
    """What ``\\pset``, ``\\x`` and ``\\timing`` change (psql's names)."""
    format: str = "aligned"  # aligned, csv, json
    expanded: str = "off"  # on, off, auto (records when the table is wider than the screen)
    pager: str = "on"  # on (when the output does not fit the screen), off, always
    null: str = ""
    timing: bool = False


_READ_ONLY = frozenset({"SELECT", "VALUES", "TABLE", "SHOW", "EXPLAIN", "BEGIN", "START",
                        "SAVEPOINT", "RELEASE", "SET", "COMMIT", "END", "ROLLBACK", "ABORT"})
_WRITES = re.compile(r"\b(INSERT|UPDATE|DELETE|REPLACE|MERGE)\b", re.IGNORECASE)
_DDL = frozenset({"CREATE", "DROP", "ALTER"})


def _first_word(sql: str) -> str:
    m = re.match(r"\s*\(*\s*([A-Za-z]+)", sql)
    return m.group(1).upper() if m else ""


def _tag(sql: str, rowcount: int) -> str:
    """psql's command tag: CREATE TABLE, INSERT 0 3, UPDATE 2, BEGIN."""
    words = re.findall(r"[A-Za-z]+", sql)[:3]
    first = words[0].upper() if words else "OK"
    if first in ("CREATE", "DROP", "ALTER") and len(words) > 1:
        second = words[1].upper()
        if second in ("UNIQUE", "TEMP", "TEMPORARY", "VIRTUAL") and len(words) > 2:
            second = words[2].upper()
        return f"{first} {second}"
    if first == "INSERT" and rowcount >= 0:
        return f"INSERT 0 {rowcount}"
    if first in ("UPDATE", "DELETE", "REPLACE", "MERGE") and rowcount >= 0:
        return f"{first} {rowcount}"
    return first


class Shell:
    """One session's state: the query buffer, output options, and whether the open
    transaction has written anything (only then is leaving it worth a word)."""

    def __init__(self, conn: Any, options: Options, interactive: bool) -> None:
        self.conn = conn
        self.options = options
        self.interactive = interactive
        self.split = Splitter()
        self.catalog = catalog_for(getattr(conn, "backend", "sqlite"))
        self.wrote = False
        self.failed = False
        self.depth = 0  # \\i files being run
        self.schema_changed = True  # completion reloads names when set

    # -- input ------------------------------------------------------------------------
    def feed(self, text: str) -> bool:
        """Run what ``text`` completes; True when the shell should end (``\\q``, or an
        error in a script)."""
        for is_command, item in self.split.feed(text):
            if self._guard(self.command if is_command else self.run, item):
                return True
        return False

    def finish(self) -> bool:
        """End of a script: an unfinished last statement runs, as with ``-c``."""
        stmt = self.split.take()
        return bool(stmt) and self._guard(self.run, stmt)

    def _guard(self, step: Any, item: str) -> bool:
        try:
            return bool(step(item))
        except Error as e:
            self.failed = True
            click.echo(printable(f"error: {e}"), err=True)
            return not self.interactive or bool(self.conn.closed)

    def prompt(self) -> str:
        state = self.split.state
        if state == "=" and self.conn.in_transaction:
            state = "=*"
        return f"casemate{state}> "

    # -- statements -------------------------------------------------------------------
    def run(self, sql: str) -> None:
        t0 = time.perf_counter()
        cur = self.conn.cursor()
        with _ctrl_c_cancels(self.conn):
            cur.execute(sql)
            rows = cur.fetchall() if cur.description is not None else []
        ms = 1000 * (time.perf_counter() - t0)
        self._track(sql)
        if cur.description is not None:
            self.show([d[0] for d in cur.description], rows)
        elif self.options.format == "aligned":
            click.echo(_tag(sql, cur.rowcount))
        cur.close()
        if self.options.timing:
            click.echo(f"Time: {ms:.3f} ms", err=self.options.format != "aligned")

    def _track(self, sql: str) -> None:
        word = _first_word(sql)
        if word in _DDL:
            self.schema_changed = True
        if not self.conn.in_transaction:
            self.wrote = False
        elif word not in _READ_ONLY and (word != "WITH" or _WRITES.search(sql)):
            self.wrote = True

    def show(self, headers: list[str], rows: Sequence[Sequence[Any]],
             footer: bool = True, title: str = "") -> None:
        o = self.options
        if o.format == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(headers)
            w.writerows([[cell(v, o.null, escape=False) for v in r] for r in rows])
            click.echo(buf.getvalue(), nl=False)
            return
        if o.format == "json":
            click.echo(json.dumps([dict(zip(headers, r, strict=True)) for r in rows],
                                  default=_json_value, ensure_ascii=False))
            return
        text = render(headers, rows, null=o.null)
        width = shutil.get_terminal_size().columns
        if o.expanded == "on" or (o.expanded == "auto" and len(text.partition("\n")[0]) > width):
            text = expanded(headers, rows, null=o.null)
        elif footer:
            text += f"\n({len(rows)} row{'s' if len(rows) != 1 else ''})"
        self.page((title + "\n" if title else "") + text)

    def page(self, text: str) -> None:
        """Print, through $CASEMATE_PAGER / $PAGER (else ``less``) when the text does not
        fit the terminal, as psql does."""
        size = shutil.get_terminal_size()
        lines = text.split("\n")
        fits = len(lines) < size.lines - 1 and max(map(len, lines)) <= size.columns
        cmd = os.environ.get("CASEMATE_PAGER", os.environ.get("PAGER")) or (
            "less -SFX" if shutil.which("less") else "more")
        if (self.options.pager == "off" or not sys.stdout.isatty()
                or (fits and self.options.pager != "always")):
            click.echo(text)
            return
        try:
            subprocess.run(cmd, shell=True, input=text + "\n", text=True, check=False)
        except KeyboardInterrupt:
            pass
        except OSError:
            click.echo(text)

    # -- backslash commands -----------------------------------------------------------
    def command(self, line: str) -> bool:
        """Run a backslash command; True means quit.  Raises Error if unknown."""
        from .meta import run_command
        with _ctrl_c_cancels(self.conn):  # \\d runs queries too
            return run_command(self, line)

    def leave(self) -> None:
        """The end of the session, whose open transaction is rolled back (closing does it,
        as in psql): say so if it had written something."""
        if self.conn.in_transaction and self.wrote and not self.conn.closed:
            click.echo("Uncommitted changes were rolled back (COMMIT or \\commit saves them).",
                       err=True)


def _json_value(v: Any) -> Any:
    if isinstance(v, bytes | bytearray | memoryview):
        return "\\x" + bytes(v).hex()
    return str(v)


def _interactive(sh: Shell) -> None:
    from .prompt import line_reader
    read = line_reader(sh)
    while True:
        try:
            line = read(sh.prompt())
        except KeyboardInterrupt:  # psql: Ctrl-C at the prompt drops the query buffer
            sh.split.reset()
            continue
        except EOFError:
            click.echo()
            break
        try:
            if sh.feed(line + "\n"):
                break
        except KeyboardInterrupt:  # a second Ctrl-C: the shell stopped waiting
            sh.split.reset()
            click.echo("\nInterrupted.", err=True)
            if sh.conn.closed:
                break
    sh.leave()


@click.command()
@click.argument("url", required=False, default="casemate://localhost")
@click.option("-c", "--command", "command", help="Run these statements and exit.")
@click.option("-f", "--file", "file", type=click.Path(dir_okay=False, allow_dash=True),
              help="Run the statements and commands in FILE ('-': standard input) and exit.")
@click.option("--csv", "fmt", flag_value="csv", help="Results as CSV (header line, no footer).")
@click.option("--json", "fmt", flag_value="json",
              help="Results as JSON: one array of objects per line and result.")
@click.option("--tls-ca", type=click.Path(), help="Verify the server against this CA/cert file.")
@click.option("--encryption", type=click.Choice(["auto", "required"]), default="auto",
              show_default=True, help="'required' refuses a plaintext server.")
@click.option("--autocommit/--no-autocommit", default=True, show_default=True,
              help="As psql: each statement commits unless BEGIN opened a transaction.")
@click.option("--timing/--no-timing", default=False, help="Show each statement's time.")
@click.option("--pager/--no-pager", default=True, show_default=True,
              help="Page results longer than the terminal ($CASEMATE_PAGER, $PAGER, less).")
def shell(url: str, command: str | None, file: str | None, fmt: str | None,
          tls_ca: str | None, encryption: str, autocommit: bool, timing: bool,
          pager: bool) -> None:
    """Interactive SQL on the server at URL (casemate://user[:password]@host[:port]).

    The password comes from the URL, CASEMATE_PASSWORD, or $CASEMATE_HOME/passwords,
    else it is asked for on a terminal; CASEMATE_HOST, CASEMATE_PORT and CASEMATE_USER
    fill what the URL leaves out.  \\? lists the backslash commands (\\d, \\dt, \\du, \\x,
    \\timing, ...).  With -c, -f or SQL on standard input, statements and backslash
    commands run in order and the exit code is 1 at the first error.  Ctrl-C while a
    statement runs cancels it on the server (a second Ctrl-C stops waiting); SET
    statement_timeout = '30s' bounds every statement of the session.
    """
    if command is not None and file is not None:
        raise click.UsageError("give -c or -f, not both")
    script = _script_text(command, file)
    interactive = script is None and sys.stdin.isatty()
    kw: dict[str, Any] = {"encryption": encryption, "program": "casemate shell"}
    conn = cli_connect(url, **kw, **({"tls_ca": tls_ca} if tls_ca else {}))
    conn.on_notice = lambda code, text: click.echo(printable(f"NOTICE [{code}]: {text}"),
                                                   err=True)
    if conn.security.note and not interactive:  # interactive: on the "Connection:" line
        click.echo(printable(f"Note: {conn.security.note}"), err=True)
    conn.autocommit = autocommit
    sh = Shell(conn, Options(format=fmt or "aligned", timing=timing,
                             pager="on" if pager else "off"), interactive)
    if interactive:
        click.echo(f"Connected to {conn.params.server_key} (server {conn.server_version}, "
                   f"{conn.backend}), session {conn.session_id}")
        click.echo(f"Connection: {conn.security}")
        click.echo('Type SQL ending with ";", "\\?" for help, "\\q" to quit.')
        _interactive(sh)
    else:
        if not sh.feed(script if script is not None else sys.stdin.read()):
            sh.finish()
        sh.leave()  # as psql: a transaction the script left open is rolled back
    with warnings.catch_warnings():  # the shell says so in its own words (Shell.leave)
        warnings.simplefilter("ignore", UncommittedWorkWarning)
        conn.close()
    sys.exit(1 if sh.failed else 0)


def _script_text(command: str | None, file: str | None) -> str | None:
    if command is not None:
        return command
    if file is None:
        return None
    if file == "-":
        return sys.stdin.read()
    try:
        return Path(file).read_text(encoding="utf-8")
    except OSError as e:
        raise click.BadParameter(f"cannot read {file}: {e.strerror}", param_hint="-f") from e

