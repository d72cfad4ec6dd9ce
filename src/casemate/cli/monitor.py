"""``casemate status|sessions|drop|message|accept|reject URL``: a running server, as admin."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..errors import Error
from .shell import format_table


def _call(url: str, command: str, **args: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
    import casemate
    try:
        conn = casemate.connect(url, program="casemate admin", reconnect_attempts=0)
    except Error as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    try:
        return conn.admin_table(command, **args)
    except Error as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    finally:
        conn.close()


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


@click.command()
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(url: str, as_json: bool) -> None:
    """Show the server's state: mode, certificate, sessions, load, pending restart."""
    columns, rows = _call(url, "status")
    st = dict(zip(columns, rows[0], strict=True))
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    mode = st["mode"] + (f" (TLS {st['min_tls_version']} minimum)" if st["min_tls_version"]
                         else " (NOT encrypted)")
    lines = [("Server", f"Casemate {st['version']}, publication {st['publication']!r}"),
             ("Uptime", _duration(st["uptime_seconds"])), ("Mode", mode)]
    if st["certificate_subject"]:
        lines += [("Certificate", st["certificate_subject"]),
                  ("Fingerprint", st["certificate_sha256"]),
                  ("Key SHA-256", st["key_sha256"]),
                  ("Expires in", f"{st['certificate_days_left']} days")]
    lines += [("Warning", w) for w in st["certificate_warnings"]]
    lines += [("Restart pending", "YES: settings changed; restart the server to apply"
               if st["restart_pending"] else "no"),
              ("Accepting", "yes" if st["accepting"] else "NO (casemate accept URL resumes)"),
              ("Sessions", str(st["sessions"])),
              ("Statements/s", f"{st['statements_per_second']} ({st['statements_total']} total)"),
              ("Data size", f"{st['data_bytes'] / 1e6:.2f} MB ({st['storage']})"),
              ("Event loop", st.get("event_loop", "?")),
              ("Storage calls", f"{st.get('storage_calls_in_event_loop', 0)} in the event loop, "
                                f"{st.get('storage_calls_in_threads', 0)} in worker threads")]
    for k, v in lines:
        click.echo(f"{k + ':':<17}{v}")


@click.command()
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def sessions(url: str, as_json: bool) -> None:
    """List sessions: user, address, program, encryption, activity, transaction, and which
    one holds the write lock (others' writes wait for it) and for how long."""
    columns, rows = _call(url, "sessions")
    if as_json:
        click.echo(json.dumps([dict(zip(columns, r, strict=True)) for r in rows], indent=2))
        return
    show = ["id", "user", "address", "program", "connected_since", "idle_seconds", "encrypted",
            "tls_version", "cipher", "authenticated_by", "statements", "transaction_seconds",
            "write_lock_seconds"]
    show += [c for c in ("server",) if c in columns]  # every server over a PostgreSQL database
    idx = [columns.index(c) if c in columns else -1 for c in show]
    from ..server.audit import clean

    def cell(v: Any, c: str) -> Any:
        if v is None:  # not in a transaction / not holding the write lock: an empty cell
            return "" if c.endswith("_seconds") else None
        # Program names and the like come from clients: no control characters reach the
        # terminal (a newline would forge a row).
        return clean(v, 1000) if isinstance(v, str) else v
    click.echo(format_table(show, [tuple(cell(r[i] if i >= 0 else None, c)
                                         for i, c in zip(idx, show, strict=True))
                                   for r in rows]))
    click.echo(f"({len(rows)} session{'s' if len(rows) != 1 else ''})")


@click.command()
@click.argument("url")
@click.argument("session", type=int)
@click.option("--reason", default="", help="Told to the client.")
@click.option("--server", default="", help="The session's server, as casemate sessions shows "
              "it (PostgreSQL storage: another server over the same database drops it within "
              "2 seconds).")
def drop(url: str, session: int, reason: str, server: str) -> None:
    """End SESSION; its open transaction is rolled back and the client is told why."""
    columns, _ = _call(url, "drop", session=session, reason=reason, server=server)
    click.echo(f"Session {session} " + ("dropped." if columns == ["dropped"] else
                                        f"on {server}: drop requested."))


@click.command()
@click.argument("url")
@click.argument("text")
@click.option("--session", type=int, help="Only this session (default: all).")
def message(url: str, text: str, session: int | None) -> None:
    """Send TEXT to every session (or one) as a notice."""
    _, rows = _call(url, "message", text=text, session=session)
    click.echo(f"Delivered to {rows[0][0]} session(s).")


@click.command()
@click.argument("url")
def accept(url: str) -> None:
    """Resume accepting new sessions."""
    _call(url, "accept")
    click.echo("The server accepts new sessions.")


@click.command()
@click.argument("url")
def reject(url: str) -> None:
    """Stop accepting new sessions (current ones carry on)."""
    _call(url, "reject")
    click.echo("The server now refuses new sessions (casemate accept URL to resume).")
