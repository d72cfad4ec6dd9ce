"""Server administration over the wire: status, sessions, drop, message, accept/reject.

These commands read or act on the running server (its session registry),
unlike the user/group commands of :mod:`casemate.admin`, which act on the
stored data.  Each returns ``(columns, rows)``.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING, Any

from ..errors import Codes, Error

if TYPE_CHECKING:
    from .app import Server
    from .session import Session

__all__ = ["SERVER_COMMANDS", "run_server_command", "status", "session_rows"]

Table = tuple[list[str], list[tuple[Any, ...]]]

SESSION_COLUMNS = ["id", "user", "address", "client_host", "program", "connected_since",
                   "idle_seconds", "encrypted", "tls_version", "cipher", "client_certificate",
                   "statements", "in_transaction", "transaction_seconds", "write_lock_seconds",
                   "transaction_since", "write_lock_since"]


def status(server: Server) -> dict[str, Any]:
    """What ``casemate status`` shows."""
    info = server.tls.info if server.tls else None
    return {
        "version": server.version,
        "publication": server.settings.network.publication_name,
        "uptime_seconds": round(time.time() - server.started, 1),
        "mode": "encrypted" if server.encrypted else "plain",
        "min_tls_version": server.settings.network.min_tls_version if server.encrypted else None,
        "certificate_subject": info.subject if info else None,
        "certificate_sha256": info.sha256 if info else None,
        "key_sha256": info.spki_sha256 if info else None,
        "certificate_days_left": info.days_left if info else None,
        "certificate_warnings": list(server.tls.warnings) if server.tls else [],
        "restart_pending": server.check_settings_change(),
        "accepting": server.accepting,
        "sessions": len(server.sessions),
        "statements_per_second": round(server.statement_rate(), 2),
        "statements_total": server.statements,
        "data_bytes": server.backend.data_size(),
        "storage": server.backend.name,
        "event_loop": server.event_loop,
        "storage_calls_in_event_loop": server.cost.inline_calls,
        "storage_calls_in_threads": server.cost.thread_calls,
    }


def _session_row(s: Session, now: float) -> tuple[Any, ...]:
    return (s.id, s.user, s.peer, s.client_host, s.program,
            dt.datetime.fromtimestamp(s.connected_at, dt.UTC).isoformat(timespec="seconds"),
            round(now - s.last_active, 1), s.tls_version is not None, s.tls_version, s.cipher,
            s.client_cert_subject, s.statements,
            s.storage is not None and s.storage.in_transaction, *_transaction(s))


def _transaction(s: Session) -> tuple[Any, ...]:
    """How long the session has been in its transaction and has held the write lock
    (None: it is not), and since when (ISO time, UTC)."""
    conn = s.storage
    since = (conn.txn_since, conn.write_since) if conn is not None else (None, None)
    now = time.time()
    return (*(None if t is None else round(now - t, 1) for t in since),
            *(None if t is None else dt.datetime.fromtimestamp(t, dt.UTC).isoformat(
                timespec="seconds") for t in since))


def session_rows(server: Server) -> list[tuple[Any, ...]]:
    now = time.monotonic()
    return [_session_row(s, now) for s in sorted(server.sessions.values(), key=lambda s: s.id)]


def _status(server: Server, caller: Session, args: dict[str, Any]) -> Table:
    st = status(server)
    return list(st), [tuple(st.values())]


def _sessions(server: Server, caller: Session, args: dict[str, Any]) -> Table:
    return SESSION_COLUMNS, session_rows(server)


def _target(server: Server, args: dict[str, Any]) -> Session:
    sid = args.get("session")
    s = server.sessions.get(sid) if isinstance(sid, int) else None
    if s is None:
        raise Error(f"no session {sid!r}; see casemate sessions URL", Codes.PROGRAMMING)
    return s


def _drop(server: Server, caller: Session, args: dict[str, Any]) -> Table:
    s = _target(server, args)
    s.drop(f"session dropped by administrator {caller.user!r}"
           + (f": {args['reason']}" if args.get("reason") else ""))
    return ["dropped"], [(s.id,)]


def _message(server: Server, caller: Session, args: dict[str, Any]) -> Table:
    text = str(args.get("text", ""))[:2000]
    if not text:
        raise Error("empty message", Codes.PROGRAMMING)
    targets = [_target(server, args)] if args.get("session") is not None else list(
        server.sessions.values())
    for s in targets:
        s.notice(Codes.ADMIN_MESSAGE, f"message from {caller.user}: {text}")
    return ["delivered_to"], [(len(targets),)]


def _accepting(value: bool) -> Any:
    def run(server: Server, caller: Session, args: dict[str, Any]) -> Table:
        server.accepting = value
        return ["accepting"], [(value,)]
    return run


SERVER_COMMANDS: dict[str, Any] = {
    "status": _status,
    "sessions": _sessions,
    "drop": _drop,
    "message": _message,
    "accept": _accepting(True),
    "reject": _accepting(False),
}


def run_server_command(server: Server, caller: Session, command: str,
                       args: dict[str, Any]) -> Table:
    table: Table = SERVER_COMMANDS[command](server, caller, args)
    return table
