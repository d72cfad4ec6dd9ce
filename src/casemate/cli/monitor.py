"""``casemate status|sessions|drop|message|accept|reject URL``: a running server, as admin."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..errors import Error
from .connect import SESSION_ID, cli_connect
from .listing import echo_sessions
from .tables import human_bytes, human_duration


def _call(url: str, command: str, **args: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
    conn = cli_connect(url, program="casemate admin", reconnect_attempts=0)
    try:
        return conn.admin_table(command, **args)
    except Error as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    finally:
        conn.close()


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
             ("Uptime", human_duration(st["uptime_seconds"])), ("Mode", mode)]
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
              ("Data size", f"{human_bytes(st['data_bytes'])} ({st['storage']})"),
              ("Event loop", st.get("event_loop", "?")),
              ("Row path", st.get("row_path", "?")),
              ("Protocol core", st.get("protocol_core", "?")),
              ("Storage calls", f"{st.get('storage_calls_in_event_loop', 0)} in the event loop, "
                                f"{st.get('storage_calls_in_threads', 0)} in worker threads")]
    for k, v in lines:
        click.echo(f"{k + ':':<17}{v}")


@click.command()
@click.argument("url")
@click.option("--wide", is_flag=True, help="Also client host, exact start time, cipher and "
              "client certificate (no cut to the terminal's width).")
@click.option("--json", "as_json", is_flag=True, help="Every column, exact values.")
def sessions(url: str, wide: bool, as_json: bool) -> None:
    """List sessions: user, address, program, encryption, activity, how long each has been
    in its transaction (txn) and held the write lock (lock; others' writes wait for it)."""
    columns, rows = _call(url, "sessions")
    echo_sessions(columns, rows, wide, as_json)


@click.command()
@click.argument("url")
@click.argument("session", type=SESSION_ID)
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
@click.option("--session", type=SESSION_ID, help="Only this session (default: all).")
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
