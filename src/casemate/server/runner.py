"""Where a session's storage call runs, and what stops it.

Every storage call of a session goes through :meth:`Runner.call`: in the event
loop when the cost model (``inline.py``) has seen calls of its kind to be short
(stopped at the cut-off and run again in a thread if it is not), otherwise in a
worker thread, where a CANCEL, the statement timeout or the session's end stops
it.  The request handlers do not know which: only the call decides.  A call
that meets another session's write lock is retried here (:meth:`Runner.retrying`),
waiting in the event loop, up to the busy timeout.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import Codes, Error
from ..protocol.messages import decode_cancel
from ..storage import Busy, Interrupted, StorageConnection, TooLong
from ..storage.base import LaneRead
from .calls import stop_method
from .results import BATCH_BYTES, Closed

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Runner"]

T = TypeVar("T")


class _Running:
    """The storage call a session has in a worker thread: what a cancel, the statement
    timeout or the session's end stops."""

    __slots__ = ("conn", "holder", "reason")

    def __init__(self, conn: StorageConnection, holder: dict[str, int] | None) -> None:
        self.conn = conn
        self.holder = holder  # a server method's thread, to stop as well
        self.reason: str | None = None  # why it was stopped

    def stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.conn.interrupt()
        if self.holder is not None:
            stop_method(self.holder)


def _unless_stopped(run: _Running, fn: Callable[..., T], *args: Any) -> T:
    """In the worker thread: a call stopped while it waited for a thread never starts.
    (Interrupting a connection stops a statement only from its next progress check, which
    a short one never reaches: a dead session's INSERT, queued behind another session's
    long read on the only worker thread, still ran once the thread came free.)"""
    if run.reason is not None:
        raise Interrupted("statement stopped before it started")
    return fn(*args)


class Runner:
    """Runs one session's storage calls; holds the call in a worker thread, if any."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self.server = session.server
        self.running: _Running | None = None
        self.cancel_seq = 0  # the client cancelled every request up to this one

    async def call(self, fn: Callable[..., T], *args: Any, key: Hashable | None = None,
                   holder: dict[str, int] | None = None, cleanup: bool = False) -> T:
        """Run a blocking storage call: directly, when calls of kind ``key`` have been seen
        to be short (``server.inline``) and this one stays short, otherwise in a worker
        thread, where a cancel or the statement timeout stops it (``holder``: a server
        method's thread, stopped with it).  ``cleanup``: closing a cursor, which a cancel
        or the session's end must not prevent (it would hold its snapshot until collected)."""
        conn = self.s.storage
        if conn is not None and self.server.cost.inline(key):
            try:
                return self.inline(conn, key, fn, *args, cleanup=cleanup)
            except TooLong:
                pass  # stopped at the cut-off and undone: run it again in a thread
        return await self._in_thread(conn, key, holder, fn, *args, cleanup=cleanup)

    def inline(self, conn: StorageConnection, key: Hashable | None, fn: Callable[..., T],
               *args: Any, cleanup: bool = False) -> T:
        """Run in the event loop, stopped (TooLong) past the cut-off of the cost model."""
        # A request the CANCEL covered, or of a session already ended, does not start here
        # either (_in_thread checks the same for the worker-thread path).
        if not cleanup and (self.cancel_seq >= self.s.seq or self.s.closed):
            raise self._stop_error("cancel" if not self.s.closed else self.s.end_reason)
        cost = self.server.cost
        conn.arm(cost.cutoff)
        try:
            return cost.run_inline(key, fn, *args)
        except TooLong:
            cost.cut_calls += 1
            cost.record(key, cost.cutoff)  # however quickly it was stopped: a thread next time
            raise
        finally:
            conn.disarm()

    def read_now(self, conn: StorageConnection, key: Hashable, sql: str,
                 params: tuple[Any, ...], max_rows: int) -> LaneRead | None:
        """:meth:`inline` for the fast lane (:meth:`StorageConnection.read_now`): the
        same stops, cut-off and cost accounting, without the layers of a general call.
        None where the lane does not take the statement: nothing ran, nothing counted."""
        if self.cancel_seq >= self.s.seq or self.s.closed:
            return None  # (the general call reports why)
        cost = self.server.cost
        conn.arm(cost.cutoff)
        t0 = time.perf_counter()
        try:
            done = conn.read_now(sql, params, max_rows, BATCH_BYTES)
        except BaseException as e:
            cost.inline_calls += 1
            cost.record(key, time.perf_counter() - t0)
            if isinstance(e, TooLong):
                cost.cut_calls += 1
                cost.record(key, cost.cutoff)  # as inline(): a thread next time
            raise
        finally:
            conn.disarm()
        if done is not None:
            cost.inline_calls += 1
            cost.record(key, time.perf_counter() - t0)
        return done

    async def _in_thread(self, conn: StorageConnection | None, key: Hashable | None,
                         holder: dict[str, int] | None, fn: Callable[..., T], *args: Any,
                         cleanup: bool = False) -> T:
        cost = self.server.cost
        loop = asyncio.get_running_loop()
        cost.thread_calls += 1
        work = (fn, *args) if key is None else (cost.timed, key, fn, *args)
        if conn is None or cleanup:  # no statement runs: nothing a stop could end
            return await loop.run_in_executor(self.server.executor, *work)
        if self.s.closed:  # dropped, disconnected, shut down: start nothing more
            raise self._stop_error(self.s.end_reason)
        if self.cancel_seq >= self.s.seq:
            raise self._stop_error("cancel")
        conn.arm()
        run = self.running = _Running(conn, holder)
        limit = self.s.statement_timeout
        timer = loop.call_later(limit, run.stop, "timeout") if limit else None
        try:
            return await loop.run_in_executor(self.server.executor, _unless_stopped, run, *work)
        except BaseException as e:  # a stopped method's thread raises MethodTimeout
            if run.reason is not None and not isinstance(e, asyncio.CancelledError):
                raise self._stop_error(run.reason) from e
            raise
        finally:
            if conn.in_transaction:
                self.s.txn_wrote = True
            if self.running is run:
                self.running = None
            if timer is not None:
                timer.cancel()

    def stop_running(self, reason: str) -> None:
        if self.running is not None:
            self.running.stop(reason)

    def on_cancel(self, body: Any) -> None:
        """CANCEL n: stop every request up to n that runs now or has not started (the
        later ones are not the client's to cancel yet); those answered already are done."""
        n = decode_cancel(body)
        if n > self.cancel_seq:
            self.cancel_seq = n
        if n >= self.s.seq:
            self.stop_running("cancel")

    def _stop_error(self, reason: str) -> Error:
        if reason == "timeout":
            return Error(f"canceling statement due to statement timeout "
                         f"({self.s.statement_timeout:g} s)", Codes.QUERY_CANCELED,
                         "make the statement cheaper, or give this session more time: "
                         "SET statement_timeout = '10min' (limits.statement_timeout_seconds "
                         "is the default and, except for admins, the most)")
        if reason == "cancel":
            return Error("canceling statement due to user request", Codes.QUERY_CANCELED,
                         "the client cancelled it (cancel() or Ctrl-C in casemate shell); in "
                         "a transaction, roll back before going on")
        return Error(f"canceling statement: {reason}", Codes.QUERY_CANCELED)

    def key(self, *parts: Any) -> Hashable | None:
        """The kind of a storage call, for :meth:`call` (None: always a worker thread)."""
        return self.server.cost.key(*parts)

    async def call_retrying(self, fn: Callable[..., T], *args: Any,
                            key: Hashable | None = None) -> T:
        """Like :meth:`call`, retrying while the write lock is busy, up to the busy timeout."""
        conn = self.s.storage
        if conn is not None and self.server.cost.inline(key):
            # The common case first, without the coroutines of the general one (a lookup
            # pays for each): a short call, run in the event loop, that meets no lock.
            try:
                return self.inline(conn, key, fn, *args)
            except TooLong:
                pass  # nothing ran: as below, in a thread
            except Busy as e:  # nothing ran, and it met the lock: wait before trying again
                return await self.retrying(lambda: self.call(fn, *args, key=key), busy=e)
        return await self.retrying(lambda: self.call(fn, *args, key=key))

    async def retrying(self, attempt: Callable[[], Awaitable[T]],
                       busy: Busy | None = None) -> T:
        """Await ``attempt()``, again while it raises Busy, up to the busy timeout (with
        ``busy``, a first attempt already met the lock: wait before the next).

        The wait happens here, in the event loop, so a blocked writer never holds a
        worker thread that the lock's holder needs to commit.
        """
        timeout = self.server.settings.storage.busy_timeout_seconds
        deadline = time.monotonic() + timeout
        delay = 0.05
        waited = False
        while True:
            if busy is None:
                try:
                    return await attempt()
                except Busy as e:
                    busy = e
            else:
                met, busy = busy, None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Error(
                        f"database is busy: waited more than {timeout:g} s for the write lock "
                        "that other sessions' transactions hold", Codes.BUSY,
                        "roll back and retry the transaction, or raise "
                        "storage.busy_timeout_seconds") from met
                # Woken (in turn) when a session's transaction ends; the timeout covers
                # writers in other processes (a backup) and lost wake-ups.
                await self.server.wait_lock_released(min(delay * (0.5 + random.random()), left),
                                                     first=waited)
                waited = True
                # The rights may have changed while we waited (a revoke, the user removed or
                # moved): the statement runs again under the rights of now, as a new request
                # would (found by the red team: a revoked INSERT was retried and stored).
                if not await self.server.rights.check(self.s):
                    raise Closed from None
