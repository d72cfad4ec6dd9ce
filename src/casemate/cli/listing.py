"""What ``casemate sessions``, ``user list`` and ``group list`` print.

The admin commands return raw rows (seconds, ISO times, booleans, NULLs) so scripts get
exact values with ``--json``; people get a table that fits their terminal, durations and
times in words, and blanks where a value does not apply.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import click

from .tables import human_duration, human_time, render, terminal_width

__all__ = ["echo_sessions", "echo_users", "echo_groups"]

# Built-in groups have no grant rows: what they may do, said once.
_BUILTIN_RIGHTS = {"admin": "everything, and administration",
                   "readwrite": "SELECT, INSERT, UPDATE, DELETE", "readonly": "SELECT"}


def _echo_json(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    click.echo(json.dumps([dict(zip(columns, r, strict=True)) for r in rows], indent=2,
                          default=str))


def _footer(n: int, what: str) -> str:
    return f"({n} {what}{'s' if n != 1 else ''})"


def _age(iso: str | None) -> str:
    if not iso:
        return ""
    since = dt.datetime.fromisoformat(iso)
    return human_duration((dt.datetime.now(dt.UTC) - since).total_seconds())


def echo_sessions(columns: list[str], rows: Sequence[Sequence[Any]], wide: bool,
                  as_json: bool) -> None:
    """Default: what a DBA scans for (who, from where, how long, what it holds); --wide adds
    TLS detail, client certificates and exact times."""
    if as_json:
        _echo_json(columns, rows)
        return
    from ..server.audit import clean
    # Program names and the like come from clients: one line each, control characters
    # as text (a newline would forge a row).
    recs: list[dict[str, Any]] = [{c: clean(v, 1000) if isinstance(v, str) else v
                                   for c, v in zip(columns, r, strict=True)} for r in rows]
    headers = ["id", "user", "address", "program", "connected", "idle", "tls", "stmts",
               "txn", "lock"]
    table: list[tuple[Any, ...]] = [(r["id"], r["user"], r.get("address") or "",
              r.get("program") or "", _age(r.get("connected_since")),
              human_duration(r.get("idle_seconds")),
              (r.get("tls_version") or "").replace("TLSv", "") if r.get("encrypted") else "no",
              r.get("statements"), human_duration(r.get("transaction_seconds")),
              human_duration(r.get("write_lock_seconds"))) for r in recs]
    if "server" in columns:
        headers.append("server")
        table = [t + (r.get("server") or "",) for t, r in zip(table, recs, strict=True)]
    if wide:
        headers += ["client host", "since", "cipher", "client certificate", "authenticated by"]
        table = [t + (r.get("client_host") or "", human_time(r.get("connected_since")), r.get("cipher") or "",
                      r.get("client_certificate") or "", r.get("authenticated_by") or "")
                 for t, r in zip(table, recs, strict=True)]
    click.echo(render(headers, table, fit=None if wide else terminal_width(),
                      shrink=("program", "address", "user", "server")))
    click.echo(_footer(len(rows), "session"))


def echo_users(rows: Sequence[Sequence[Any]], as_json: bool) -> None:
    if as_json:
        _echo_json(["name", "group", "created"], rows)
        return
    click.echo(render(["name", "group", "created"],
                      [(n, g, human_time(c)) for n, g, c in rows]))
    click.echo(_footer(len(rows), "user"))


def echo_groups(rows: Sequence[Sequence[Any]], as_json: bool) -> None:
    if as_json:
        _echo_json(["group", "table", "privileges"], rows)
        return
    table = [(g, t or ("all tables" if g in _BUILTIN_RIGHTS else ""),
              p.replace(",", ", ") if t else _BUILTIN_RIGHTS.get(g, ""))
             for g, t, p in rows]
    click.echo(render(["group", "table", "privileges"], table))
    click.echo(_footer(len({r[0] for r in rows}), "group"))
