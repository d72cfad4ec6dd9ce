"""``casemate shell URL``: interactive SQL, ``-c SQL``, or a script on standard input."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import click

from ..client.params import casemate_home
from ..errors import Error, InterfaceError

__all__ = ["shell", "split_statements", "split_script", "format_table"]


def split_statements(text: str) -> Iterator[str]:
    """Split SQL on ``;`` outside quotes and comments; yields non-empty statements."""
    for _is_command, stmt in _split(text, commands=False):
        yield stmt


def split_script(text: str) -> Iterator[tuple[bool, str]]:
    """Like :func:`split_statements`, but a backslash where a statement would begin starts
    a shell command (``\\commit``) that runs to the end of its line, as in the interactive
    shell.  Yields ``(is_command, text)``."""
    return _split(text, commands=True)


def _split(text: str, commands: bool) -> Iterator[tuple[bool, str]]:
    buf: list[str] = []
    started = False  # a statement has begun: a backslash is SQL from here to its ';'
    i, n = 0, len(text)
    quote: str | None = None
    while i < n:
        ch = text[i]
        if quote:
            buf.append(ch)
            if ch == quote:
                quote = None
        elif commands and ch == "\\" and not started:
            end = text.find("\n", i)
            end = n if end < 0 else end
            yield True, text[i:end].strip()
            i = end
            continue
        elif ch in "'\"`[":
            quote = "]" if ch == "[" else ch
            buf.append(ch)
            started = True
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            buf.append(" ")  # a comment separates tokens: SELECT/**/1 is SELECT 1
            continue
        elif ch == ";":
            if stmt := "".join(buf).strip():
                yield False, stmt
            buf, started = [], False
        else:
            buf.append(ch)
            started = started or not ch.isspace()
        i += 1
    if stmt := "".join(buf).strip():
        yield False, stmt


def _cell(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bytes):
        return "x'" + v.hex() + "'"
    return str(v)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows as an aligned text table (numbers right-aligned)."""
    cells = [[_cell(v) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    right = [any(r[i] is not None for r in rows) and
             all(isinstance(r[i], int | float) and not isinstance(r[i], bool)
                 for r in rows if r[i] is not None) for i in range(len(headers))]

    def line(vals: Sequence[str]) -> str:
        return " | ".join(v.rjust(w) if r else v.ljust(w)
                          for v, w, r in zip(vals, widths, right, strict=True)).rstrip()
    out = [line(list(headers)), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


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


def _run(conn: Any, sql: str, timing: bool) -> None:
    t0 = time.perf_counter()
    cur = conn.cursor()
    with _ctrl_c_cancels(conn):
        cur.execute(sql)
        rows = cur.fetchall() if cur.description is not None else []
    if cur.description is not None:
        click.echo(format_table([d[0] for d in cur.description], rows))
        summary = f"({len(rows)} row{'s' if len(rows) != 1 else ''})"
    else:
        summary = f"OK, {cur.rowcount} row{'s' if cur.rowcount != 1 else ''} affected" if (
            cur.rowcount >= 0) else "OK"
    if timing:
        summary += f"  {1000 * (time.perf_counter() - t0):.1f} ms"
    click.echo(summary)
    cur.close()


def _script(conn: Any, text: str, timing: bool) -> int:
    """``-c`` or standard input: statements and backslash commands in order; 1 at the first
    error."""
    try:
        for is_command, item in split_script(text):
            if is_command:
                if _meta(conn, item):
                    break
            else:
                _run(conn, item, timing)
        conn.commit()
    except Error as e:
        click.echo(f"error: {e}", err=True)
        return 1
    return 0


def _interactive(conn: Any) -> int:
    try:
        import readline
        hist = casemate_home() / "shell_history"
        hist.parent.mkdir(parents=True, exist_ok=True)
        try:
            readline.read_history_file(hist)
        except OSError:
            pass
    except ImportError:  # pragma: no cover - readline is missing on some platforms
        readline = None  # type: ignore[assignment]
    click.echo("Type SQL ending with ';'. Commands: \\q quit, \\security, \\commit, "
               "\\rollback, \\autocommit on|off. Autocommit is " +
               ("on." if conn.autocommit else "off: \\commit to save your changes."))
    buf = ""
    status = 0
    while True:
        try:
            line = input("casemate> " if not buf else "     ...> ")
        except EOFError:
            click.echo()
            break
        except KeyboardInterrupt:
            click.echo()
            buf = ""
            continue
        stripped = line.strip()
        if not buf and stripped.startswith("\\"):
            try:
                if _meta(conn, stripped):
                    break
            except Error as e:
                status = 1
                click.echo(f"error: {e}", err=True)
            continue
        buf += line + "\n"
        if not stripped.endswith(";"):
            continue
        for stmt in split_statements(buf):
            try:
                _run(conn, stmt, True)
            except Error as e:
                status = 1
                click.echo(f"error: {e}", err=True)
                if conn.closed:
                    return 1
        buf = ""
    if readline is not None:
        try:
            readline.write_history_file(hist)
        except OSError:
            pass
    if conn.in_transaction:
        click.echo("Uncommitted changes were rolled back (use \\commit).")
    return status


def _meta(conn: Any, cmd: str) -> bool:
    """Run a backslash command; True means quit.  Raises Error for an unknown command."""
    word, _, arg = cmd.rstrip("; \t").partition(" ")
    if word in ("\\q", "\\quit"):
        return True
    if word == "\\security":
        click.echo(str(conn.security))
    elif word == "\\commit":
        conn.commit()
        click.echo("Committed.")
    elif word == "\\rollback":
        conn.rollback()
        click.echo("Rolled back.")
    elif word == "\\autocommit":
        conn.autocommit = arg.strip().lower() in ("on", "true", "1")
        click.echo(f"Autocommit {'on' if conn.autocommit else 'off'}.")
    else:
        raise InterfaceError(f"unknown command {word}",
                             hint="commands: \\q, \\security, \\commit, \\rollback, "
                                  "\\autocommit on|off")
    return False


@click.command()
@click.argument("url", required=False, default="casemate://localhost")
@click.option("-c", "--command", "command", help="Run these statements and exit.")
@click.option("--tls-ca", type=click.Path(), help="Verify the server against this CA/cert file.")
@click.option("--encryption", type=click.Choice(["auto", "required"]), default="auto",
              show_default=True, help="'required' refuses a plaintext server.")
@click.option("--autocommit/--no-autocommit", default=None,
              help="Default: on for -c and scripts, off interactively.")
@click.option("--timing/--no-timing", default=False, help="Show timings in scripts.")
def shell(url: str, command: str | None, tls_ca: str | None, encryption: str,
          autocommit: bool | None, timing: bool) -> None:
    """Interactive SQL on the server at URL (casemate://user[:password]@host[:port]).

    The password comes from the URL, CASEMATE_PASSWORD, or $CASEMATE_HOME/passwords,
    else it is asked for.  With -c or SQL on standard input, statements and
    backslash commands (where a statement could begin) run in order and
    the exit code is 1 at the first error.  Ctrl-C while a statement runs
    cancels it on the server (a second Ctrl-C stops waiting); SET
    statement_timeout = '30s' bounds every statement of the session.
    """
    import casemate
    interactive = command is None and sys.stdin.isatty()
    try:
        conn = _connect(casemate, url, tls_ca, encryption, interactive)
    except Error as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    conn.on_notice = lambda code, text: click.echo(f"NOTICE [{code}]: {text}", err=True)
    if conn.security.note and not interactive:  # interactive: on the "Connection:" line
        click.echo(f"Note: {conn.security.note}", err=True)
    conn.autocommit = (not interactive) if autocommit is None else autocommit
    if interactive:
        click.echo(f"Connected to {conn.params.server_key} (server {conn.server_version}, "
                   f"{conn.backend}), session {conn.session_id}")
        click.echo(f"Connection: {conn.security}")
        status = _interactive(conn)
    else:
        status = _script(conn, command if command is not None else sys.stdin.read(), timing)
    conn.close()
    sys.exit(status)


def _connect(casemate: Any, url: str, tls_ca: str | None, encryption: str,
             interactive: bool) -> Any:
    kw: dict[str, Any] = {"encryption": encryption, "program": "casemate shell"}
    if tls_ca:
        kw["tls_ca"] = tls_ca
    try:
        return casemate.connect(url, **kw)
    except casemate.InterfaceError as e:
        if not interactive or "no password" not in str(e):
            raise
    import getpass
    return casemate.connect(url, password=getpass.getpass("Password: "), **kw)
