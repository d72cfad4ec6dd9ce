"""Server administration over the wire: status, sessions, drop, message, accept/reject.

These commands read or act on the running server (its session registry),
unlike the user/group commands of :mod:`casemate.admin`, which act on the
stored data.  Each returns ``(columns, rows)``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from ..errors import Codes, Error
from ..protocol.core import PROTOCOL_CORE

if TYPE_CHECKING:
    from .app import Server
    from .session import Session

__all__ = ["SERVER_COMMANDS", "run_server_command", "status", "session_rows"]

Table = tuple[list[str], list[tuple[Any, ...]]]
log = logging.getLogger("casemate.server")

SESSION_COLUMNS = ["id", "user", "address", "client_host", "program", "connected_since",
                   "idle_seconds", "encrypted", "tls_version", "cipher", "client_certificate",
                   "authenticated_by",
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
        "row_path": server.backend.row_path,
        "protocol_core": PROTOCOL_CORE,
        "storage_calls_in_event_loop": server.cost.inline_calls,
        "storage_calls_in_threads": server.cost.thread_calls,
    }


def _session_row(s: Session, now: float) -> tuple[Any, ...]:
    return (s.id, s.user, s.peer, s.client_host, s.program,
            dt.datetime.fromtimestamp(s.connected_at, dt.UTC).isoformat(timespec="seconds"),
            round(now - s.last_active, 1), s.tls_version is not None, s.tls_version, s.cipher,
            s.client_cert_subject, s.authenticated_by, s.statements,
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
    if not server.backend.shares_sessions:
        return SESSION_COLUMNS, session_rows(server)
    name = server_name(server)  # several servers over one database: theirs too
    return SESSION_COLUMNS + ["server"], [r + (name,) for r in session_rows(server)] + [
        tuple(o.get(c) for c in SESSION_COLUMNS) + (o["server"],)
        for o in server.backend.other_sessions(name)]


def _target(server: Server, args: dict[str, Any]) -> Session:
    sid = args.get("session")
    s = server.sessions.get(sid) if isinstance(sid, int) else None
    if s is None:
        raise Error(f"no session {sid!r}; see casemate sessions URL", Codes.PROGRAMMING)
    return s


def _drop(server: Server, caller: Session, args: dict[str, Any]) -> Table:
    reason = (f"session dropped by administrator {caller.user!r}"
              + (f": {args['reason']}" if args.get("reason") else ""))
    if args.get("server") not in (None, "", server_name(server)):
        return _drop_elsewhere(server, str(args["server"]), args.get("session"), reason)
    s = _target(server, args)
    s.drop(reason)
    return ["dropped"], [(s.id,)]


def _drop_elsewhere(server: Server, other: str, sid: Any, reason: str) -> Table:
    """Another server over the same database drops it at its next share (SHARE_SECONDS)."""
    if not isinstance(sid, int):
        raise Error(f"no session {sid!r}; see casemate sessions URL", Codes.PROGRAMMING)
    try:
        server.backend.request_drop(other, sid, reason)
    except KeyError:
        raise Error(f"no live server {other!r} over this database; see casemate sessions URL",
                    Codes.PROGRAMMING) from None
    return ["drop_requested"], [(sid,)]


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


SHARE_SECONDS = 2.0  # how often a server publishes its sessions to the others over its database


def server_name(server: Server) -> str:
    """How the other servers over the same database call this one: host and port."""
    return f"{socket.gethostname()}:{server.addresses[0][1] if server.addresses else 0}"


async def share_sessions(server: Server) -> None:
    """Publish this server's sessions and carry out the drops other servers asked of it."""
    loop = asyncio.get_running_loop()
    name = server_name(server)
    failing = False  # log once per outage, not every SHARE_SECONDS
    while True:
        rows = [dict(zip(SESSION_COLUMNS, r, strict=True)) for r in session_rows(server)]
        try:
            drops = await loop.run_in_executor(server.executor, server.backend.share_sessions,
                                               name, rows)
            failing = False
        except Exception as e:  # noqa: BLE001 - the storage may be away for a while
            if not failing:
                log.warning("could not share this server's sessions: %s", e)
            failing, drops = True, []
        for sid, why in drops:
            s = server.sessions.get(sid)
            if s is not None:
                s.drop(why)
        await asyncio.sleep(SHARE_SECONDS)


def run_server_command(server: Server, caller: Session, command: str,
                       args: dict[str, Any]) -> Table:
    table: Table = SERVER_COMMANDS[command](server, caller, args)
    return table
