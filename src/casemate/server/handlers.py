"""The request handlers of a logged-in session: one function per request kind.

Each takes the :class:`~casemate.server.session.Session` and the request body,
and reaches storage only through the session (``s.runner.call``: in the event loop
when the cost model has seen the call to be short, else in a worker thread;
``s.lease`` for the storage connection).  Each handler is written once: started
from ``data_received`` when the session is idle (:func:`serve_now`), it runs there
until it first waits, and the session's task awaits the rest (:class:`Resumed`);
a request that arrives while another is served is queued and run by the task
(:func:`handle`).  Only the storage call decides where the work runs.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, TypeVar

from ..admin import run_admin_command
from ..errors import Codes, Error, ProtocolError
from ..methods import MethodContext
from ..protocol import Message, Msg
from ..protocol.codec import Json
from ..protocol.messages import Admin, Call, ClosePortal, Complete, ExecuteMany, Fetch, Query
from ..storage import Busy, StorageConnection, StorageCursor, StorageError, TooLong
from ..storage.access import PermissionDenied
from ..storage.base import LaneRead
from .calls import IterCursor, guarded, method_error, run_method
from .monitor import SERVER_COMMANDS
from .results import (
    REPORTED,
    Batch,
    Closed,
    execute_first,
    execute_many,
    fetch_batch,
    storage_error,
)

T = TypeVar("T")

if TYPE_CHECKING:
    from .session import Session

__all__ = ["HANDLERS", "Resumed", "complete", "handle", "serve_now"]

MAX_PORTALS = 256
# SET / SHOW statement_timeout, answered by the session itself (PostgreSQL's syntax: a
# bare number is milliseconds), so it never reaches a pooled storage connection.
_SET_TIMEOUT = re.compile(r"\s*SET\s+(?:SESSION\s+)?statement_timeout\s*(?:=|\s+TO\s)\s*"
                          r"'?\s*([^';]*?)\s*'?\s*;?\s*\Z", re.I)
_SET_OR_SHOW = ("SET", "SHO")
_SHOW_TIMEOUT = re.compile(r"\s*SHOW\s+statement_timeout\s*;?\s*\Z", re.I)
_UNITS = {"": 0.001, "ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


async def handle(s: Session, m: Message) -> None:
    s.seq += 1
    handler = HANDLERS.get(m.type)
    if handler is None:
        raise ProtocolError(f"unexpected {m.type.name} message", Codes.PROTOCOL_VIOLATION)
    try:
        # Unable to read the user store: this request fails, the session goes on.
        # (current: the check without its coroutine, for the common case of no change)
        if (s.closed or not s.server.rights.current(s)) and not await s.server.rights.check(s):
            raise Closed  # the user was removed or moved: see server/rights.py
        await handler(s, m.body)
    except ProtocolError:
        raise  # a malformed request ends the session (run() reports it and closes)
    except REPORTED as e:
        _failed(s, e)
    s.lease.maybe_release()
    s.last_active = time.monotonic()


def _failed(s: Session, e: Exception) -> None:
    """Tell the client why its request failed (the session goes on)."""
    if isinstance(e, Error):
        s.send_error(e)
        return
    err = storage_error(e)
    if err.code == Codes.INSUFFICIENT_PRIVILEGE:
        s.server.audit.event("permission_refused", session=s.id, user=s.user,
                                address=s.peer_ip, detail=err.message)
    s.send_error(err)


# -- starting a request in data_received -------------------------------------------------
class Resumed:
    """A request whose handler :func:`serve_now` started in ``data_received`` and that now
    waits for something (a worker thread, the write lock, a reload of the user store):
    the session's task takes it from the queue and awaits the rest of it."""

    type = None  # not a message: the task's loop tells it apart by this
    __slots__ = ("_coro", "_waits_for")

    def __init__(self, coro: Coroutine[Any, Any, None], waits_for: Any) -> None:
        self._coro = coro
        self._waits_for = waits_for

    def __await__(self) -> Generator[Any, Any, None]:
        # Hand what the handler waits for to the awaiting task, as the handler's own
        # ``await`` would have, then go on driving the handler (``yield from`` for a
        # coroutine that was started elsewhere).
        coro, waits_for = self._coro, self._waits_for
        # Held no longer than it runs: what the handler waited for may hold a large result
        # (or an exception whose frames do), and the task keeps this object until its next
        # request.
        del self._coro, self._waits_for
        while True:
            try:
                yield waits_for
            except BaseException as e:  # the task was cancelled (the session ends)
                waits_for = None
                try:
                    waits_for = coro.throw(e)
                except StopIteration:
                    return
                continue
            # Not held while the handler runs on: an exception raised there has this frame
            # in its traceback's chain of callers (f_back), and the future it came from
            # holds the exception, a cycle that kept a failed 150 MB result alive until the
            # garbage collector ran (tests/postgresql/test_pg_memory.py).
            waits_for = None
            try:
                waits_for = coro.send(None)
            except StopIteration:
                return


def serve_now(s: Session, m: Message) -> bool:
    """Serve ``m`` from ``data_received``: its handler (:func:`handle`, the same one the
    task runs) starts at once and runs until it first waits.  Most requests never wait
    (on SQLite a statement the cost model has seen to be short runs in the event loop,
    ``Runner.call``), and are answered before this returns; one that waits is queued as
    :class:`Resumed` for the session's task.  False: ``m`` is left to the task.

    Only called when the task is idle with nothing queued, so replies keep the order
    of requests, and while the transport takes writes (a client that does not read its
    replies still meets the write buffer limit).  Saves the task switch and two loop
    iterations per request.
    """
    if s.closed or m.type is Msg.TERMINATE:
        return False
    s.last_active = time.monotonic()  # a request that waits is no idle session to end
    if m.type is Msg.QUERY and query_now(s, m.body):
        return True
    coro = handle(s, m)
    try:
        waits_for = coro.send(None)
    except StopIteration:
        return True
    except Closed:  # the user was removed or moved: the task ends the session
        s.close()
        return True
    s.inbox.append(Resumed(coro, waits_for))
    return True


def complete(s: Session, rowcount: int = -1, lastrowid: int | None = None) -> None:
    in_txn = s.storage is not None and s.storage.in_transaction
    s.send(Msg.COMPLETE, Complete(rowcount, lastrowid, in_txn))


def _check_statement(s: Session, sql: str) -> None:
    limit = s.server.settings.limits.max_statement_bytes
    if len(sql) > limit // 4 and len(sql.encode()) > limit:
        raise Error(f"statement of {len(sql.encode())} bytes exceeds the limit of {limit} "
                    "bytes (limits.max_statement_bytes)", Codes.MESSAGE_TOO_LARGE,
                    "pass large values as parameters")


def _count_statement(s: Session, n: int = 1) -> None:
    s.statements += n
    s.server.statements += n


def _check_portals(s: Session) -> None:
    if len(s.portals) >= MAX_PORTALS:
        raise Error(f"too many open cursors (limit {MAX_PORTALS}); close some",
                    Codes.PROGRAMMING)


async def on_query(s: Session, body: Any) -> None:
    q = Query.decode(body)
    _check_statement(s, q.sql)
    if q.portal in s.portals:
        await s.runner.call(s.portals.pop(q.portal).close, key=s.runner.key("close"),
                            cleanup=True)
    if _session_statement(s, q.sql):
        return
    _check_portals(s)
    conn = s.storage or await s.lease.get()
    _count_statement(s)
    key = s.runner.key(q.sql, q.begin or conn.in_transaction)
    cut = None if key is None else _may_cut(s, conn, q.sql, q.params)
    if cut is None and key is not None:
        # Not yet worked out: this run goes to a worker thread (not timed), which works it
        # out for the next (an EXPLAIN, whose compiling SQLite never stops: helper-39 held
        # the event loop 0.4-0.9 s with each new text).
        result = await s.runner.call_retrying(_learning, execute_first, conn, q.sql, q.params,
                                              conn, q.sql, q.params, q.begin, q.batch_rows)
    else:
        if not cut:
            key = None  # a write in a transaction: never cut off, so never in the event loop
        result = await s.runner.call_retrying(execute_first, conn, q.sql, q.params, q.begin,
                                              q.batch_rows, key=key)
    _query_done(s, q.portal, q.sql, conn, result)


def _learning(fn: Callable[..., T], conn: StorageConnection, sql: str, params: Any,
              *args: Any) -> T:
    """In a worker thread: work out (and keep) whether ``sql`` may be cut off, which the
    event loop only reads (:func:`_may_cut`), then ``fn(*args)``."""
    conn.may_cut(sql, params)
    return fn(*args)


def query_now(s: Session, body: Any) -> bool:
    """A QUERY's common case served in one synchronous call, without the coroutines of
    :func:`handle`, :func:`on_query` and the runner: the rights are current, no cursor is
    open, no session statement, and the cost model runs the statement in the event loop.
    The same checks and the same calls as that path, in the same order.  False, with nothing
    sent, run or counted: the general path serves the request (it also takes the
    statement stopped at the cut-off, or met by the write lock, which undid nothing)."""
    server = s.server
    if s.portals or not server.rights.current(s):
        return False
    q = Query.decode(body)  # a malformed body: ProtocolError, which ends the session either way
    sql = q.sql
    if (len(sql) > server.settings.limits.max_statement_bytes // 4 or sql[:1].isspace()
            or sql[:3].upper() in _SET_OR_SHOW):
        return False  # _check_statement's and _session_statement's cases
    conn = s.storage
    if conn is None:
        if server.cost.limit <= 0:
            return False  # PostgreSQL: a connection is acquired in a thread
        try:
            conn = s.storage = s.lease.acquire_now()
        except REPORTED:
            return False  # reported by the general path, which tries again
    cost = server.cost  # (Runner.key's, without the call)
    in_txn = conn.in_transaction
    key = cost.key(sql, q.begin or in_txn)
    if not cost.inline(key) or not conn.may_cut(sql, q.params, False):  # (_may_cut's, no call)
        return False
    s.seq += 1
    try:
        # The fast lane first (a statement that writes nothing, on a connection that can):
        # the same checks, stops and reply in fewer steps; else the general inline call.
        done = (s.runner.read_now(conn, key, sql, q.params, q.batch_rows)
                if s.result_frames and (in_txn or not q.begin) else None)
        if done is None:
            result = s.runner.inline(conn, key, execute_first, conn, sql, q.params, q.begin,
                                     q.batch_rows)
    except (TooLong, Busy):
        s.seq -= 1  # nothing ran: the general path runs it again (in a thread, or waits)
        return False
    except REPORTED as e:
        _count_statement(s)
        _failed(s, e)
    else:
        _count_statement(s)
        if done is not None:
            _lane_done(s, q.portal, conn, done)
        else:
            _query_done(s, q.portal, sql, conn, result)
    s.lease.maybe_release()
    s.last_active = time.monotonic()
    return True


def _may_cut(s: Session, conn: StorageConnection, sql: str, params: tuple[Any, ...]
             ) -> bool | None:
    """Whether ``sql`` may run in the event loop, where it is stopped at the cut-off and
    run again: every step of it must be short (the cut-off falls between steps), and it
    must write nothing.  Stopping a write inside a transaction undoes the transaction and
    the session's open cursors with it; and SQLite may report the stop of an autocommit
    write after its own commit (its last progress check comes after the Halt that
    commits), so running it again would write it twice (seen under load: rows doubled)."""
    return conn.may_cut(sql, params, learn=False)  # (None: not yet worked out: see on_query)


def _session_statement(s: Session, sql: str) -> bool:
    """Answer SET / SHOW statement_timeout here; False for any other statement."""
    if sql[:3].upper() not in _SET_OR_SHOW and not sql[:1].isspace():
        return False  # (most statements: a SELECT or an INSERT is told at once)
    if m := _SET_TIMEOUT.match(sql):
        s.set_timeout(_parse_timeout(s, m.group(1)))
        complete(s)
        return True
    if _SHOW_TIMEOUT.match(sql):
        s.send(Msg.DESCRIPTION, [("statement_timeout", "text")])
        s.write(s.proto.send(Msg.ROWS, [[(f"{s.statement_timeout:g}s",)]]))
        complete(s, 1)
        return True
    return False


def _parse_timeout(s: Session, text: str) -> float:
    if text.upper() == "DEFAULT":
        return s.server.settings.limits.statement_timeout_seconds
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?)\s*([a-z]*)", text.lower())
    if m is None or m.group(2) not in _UNITS:
        raise Error(f"invalid value for statement_timeout: {text!r}", Codes.DATA,
                    "a number of milliseconds, or with a unit: '500ms', '30s', '5min', '1h'")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _query_done(s: Session, portal: int, sql: str, conn: StorageConnection,
                result: tuple[StorageCursor, Batch | None]
                ) -> None:
    cur, first = result
    if not conn.in_transaction:
        s.server.lock_released()  # an autocommit write just ended
    _send_result(s, portal, cur, first, describe=True)
    if first is not None and portal not in s.portals:
        cur.close()  # exhausted: closing a finished cursor does no I/O


def _lane_done(s: Session, portal: int, conn: StorageConnection, done: LaneRead) -> None:
    """:func:`_query_done` for the fast lane's read (StorageConnection.read_now): the same
    frames, from what it gives."""
    cur, desc, types, body, rows, more, lastrowid = done
    in_txn = conn.in_transaction
    if not in_txn:
        s.server.lock_released()
    if more:  # the rest stays for FETCH: the general reply, with the cursor
        _send_result(s, portal, cur, Batch(body, rows, True, types), describe=True)
        return
    s.write(s.proto.send_result(desc, types, body, -1, lastrowid, in_txn))
    cur.close()


def _send_result(s: Session, portal: int, cur: StorageCursor,
                 first: Batch | None, describe: bool) -> None:
    if first is None:  # statement without a result set
        complete(s, cur.rowcount, cur.lastrowid)
        return
    body, more = first.body, first.more
    if describe:
        desc = cur.description or ()
        if not more and s.result_frames:  # the whole result: one frame
            in_txn = s.storage is not None and s.storage.in_transaction
            s.write(s.proto.send_result(desc, first.types, body, cur.rowcount, cur.lastrowid,
                                        in_txn))
            return
        types = first.types or [None] * len(desc)
        s.send(Msg.DESCRIPTION, [(d[0], t) for d, t in zip(desc, types, strict=False)])
    s.write(s.proto.send_packed(Msg.ROWS, body))
    if more:
        s.portals[portal] = cur
        s.send(Msg.SUSPENDED, portal)
    else:
        complete(s, cur.rowcount, cur.lastrowid)


async def on_call(s: Session, body: Any) -> None:
    c = Call.decode(body)
    portal, name = c.portal, c.name
    m = s.server.methods.get(name)
    if m is None:
        raise Error(f"no server method {name!r}; see casemate methods DIR",
                    Codes.UNDEFINED_METHOD)
    conn = await s.lease.get()
    if not s.policy.may_call(name):
        raise Error(f"permission denied for group {s.group!r}: EXECUTE on method "
                    f"{name}", Codes.INSUFFICIENT_PRIVILEGE,
                    f"an administrator can grant it: casemate group grant TARGET "
                    f"{s.group} method:{name} EXECUTE")
    if portal in s.portals:
        s.portals.pop(portal).close()
    _count_statement(s)
    ctx = MethodContext(conn, s.user, s.group, s.id)
    holder: dict[str, int] = {}
    limit = s.server.settings.methods.time_limit_seconds

    def work() -> Any:
        return s.runner.call(run_method, conn, m, ctx, c.args, dict(c.kwargs), c.begin, holder,
                         holder=holder)
    try:
        # A method that meets another session's write lock is undone to its savepoint;
        # it runs again once the lock is released, like a statement.
        cur = await s.runner.retrying(lambda: guarded(work, conn, holder, limit, name))
        first = await guarded(lambda: s.runner.call(fetch_batch, cur, c.batch_rows,
                                                holder=getattr(cur, "holder", None)),
                              conn, holder, limit, name)
    except (Error, PermissionDenied, Busy, StorageError):
        raise
    except BaseException as e:  # the method's own exception: type and message only
        if isinstance(e, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
            raise
        raise method_error(e, name) from None
    _send_result(s, portal, cur, first, describe=True)
    if portal not in s.portals:
        cur.close()


async def on_fetch(s: Session, body: Any) -> None:
    f = Fetch.decode(body)
    portal, batch = f.portal, f.batch_rows
    cur = s.portals.pop(portal, None)
    if cur is None:
        raise Error(f"cursor {portal} has no pending result", Codes.INVALID_CURSOR)
    if isinstance(cur, IterCursor) and s.storage is not None:  # a method's rows
        conn, limit = s.storage, s.server.settings.methods.time_limit_seconds
        first = await guarded(lambda: s.runner.call(fetch_batch, cur, batch, False, holder=cur.holder),
                              conn, cur.holder, limit, cur.name)
    else:  # in a thread: an open cursor cannot be cut off and run again
        first = await s.runner.call(fetch_batch, cur, batch, False)
    _send_result(s, portal, cur, first, describe=False)
    if portal not in s.portals:
        cur.close()


async def on_close_portal(s: Session, body: Any) -> None:
    cur = s.portals.pop(ClosePortal.decode(body).portal, None)
    if cur is not None:
        await s.runner.call(cur.close, key=s.runner.key("close"),
                            cleanup=True)
    complete(s)


async def on_execute_many(s: Session, body: Any) -> None:
    em = ExecuteMany.decode(body)
    sql, seq, begin = em.sql, em.param_sets, em.begin
    _check_statement(s, sql)
    conn = await s.lease.get()
    _count_statement(s)
    # Writes in a thread (see _may_cut): a write stopped part-way undoes the transaction,
    # and one stopped after its commit must not run again.
    first = seq[0] if seq and isinstance(seq[0], tuple) else ()
    cut = None if conn.in_transaction or s.portals else _may_cut(s, conn, sql, first)
    if cut is None and not conn.in_transaction and not s.portals:
        # not yet worked out: a worker thread does, as for a QUERY (on_query)
        n = await s.runner.call_retrying(_learning, execute_many, conn, sql, first,
                                         conn, sql, seq, begin)
    else:
        key = s.runner.key(sql, len(seq).bit_length(), begin) if cut else None
        n = await s.runner.call_retrying(execute_many, conn, sql, seq, begin, key=key)
    if not conn.in_transaction:
        s.server.lock_released()
    complete(s, n, None)


async def on_commit(s: Session, body: Any) -> None:
    if s.storage is not None:
        await s.runner.call_retrying(s.storage.commit,
                                 key=None if s.txn_wrote else s.runner.key("commit"))
        s.server.lock_released()
    complete(s)


async def on_rollback(s: Session, body: Any) -> None:
    await _close_portals(s)
    if s.storage is not None:
        await s.runner.call(s.storage.rollback, key=s.runner.key("rollback"))
        s.server.lock_released()
    complete(s)


async def on_sync(s: Session, body: Any) -> None:
    complete(s)


async def on_admin(s: Session, body: Any) -> None:
    a = Admin.decode(body)
    command, args = a.command, a.args
    if s.group == "admin" and not await s.server.rights.still_admin(s.user):
        raise Closed  # removed or moved meanwhile: see server/rights.py
    if s.group != "admin":
        s.server.audit.event("permission_refused", session=s.id, user=s.user,
                                address=s.peer_ip, detail=f"admin command {command}")
        raise Error(f"admin command {command!r} needs the admin group; user {s.user!r} "
                    f"is in {s.group!r}", Codes.INSUFFICIENT_PRIVILEGE)
    if bad := next((k for k, v in args.items() if isinstance(v, Json | dict) or (
            isinstance(v, tuple | list) and any(isinstance(x, Json | dict) for x in v))), None):
        raise Error(f"admin command {command!r}: argument {bad!r} must be text, a number "
                    "or a list, not JSON", Codes.PROGRAMMING)
    if command in SERVER_COMMANDS:
        # In the event loop: these touch the session registry and its transports.
        columns, rows = s.server.admin_command(s, command, args)
    else:
        rows = await s.runner.call(run_admin_command, s.server.backend, command, args)
        columns = [f"column{i + 1}" for i in range(len(rows[0]) if rows else 0)]
    if command not in ("status", "sessions"):
        target = args.get("name") or args.get("group") or args.get("session")
        s.server.audit.event("admin", session=s.id, user=s.user,
                                address=s.peer_ip, command=command, target=target)
    s.send(Msg.DESCRIPTION, [(c, None) for c in columns])
    s.write(s.proto.send(Msg.ROWS, [rows]))
    complete(s, len(rows))


async def _close_portals(s: Session) -> None:
    for cur in s.portals.values():
        await s.runner.call(cur.close, key=s.runner.key("close"),
                            cleanup=True)
    s.portals.clear()


HANDLERS: dict[Msg, Callable[[Session, Any], Awaitable[None]]] = {
    Msg.QUERY: on_query,
    Msg.FETCH: on_fetch,
    Msg.CLOSE_PORTAL: on_close_portal,
    Msg.EXECUTE_MANY: on_execute_many,
    Msg.COMMIT: on_commit,
    Msg.ROLLBACK: on_rollback,
    Msg.SYNC: on_sync,
    Msg.ADMIN: on_admin,
    Msg.CALL: on_call,
}
