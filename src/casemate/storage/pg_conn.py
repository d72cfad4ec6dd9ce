"""One session's PostgreSQL connection: statements checked and bound, sent in as few round
trips as possible, transactions and savepoints, and interrupts.

Part of the PostgreSQL backend (:mod:`casemate.storage.postgresql`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus

from .access import Policy
from .base import StorageConnection, StorageCursor, StorageError
from .pg_cursors import _Cursors, _PlainCursor, _Result
from .pg_errors import _error
from .pg_pool import _Phys
from .pg_sql import SQLTextError, Statement, analyze, refusal
from .pg_values import _params

if TYPE_CHECKING:
    from .postgresql import PostgreSQLBackend

T = TypeVar("T")

CANCEL_RETRY = 0.1         # an interrupted statement still running is cancelled again after
_IDLE, _INTRANS, _INERROR = (TransactionStatus.IDLE, TransactionStatus.INTRANS,
                             TransactionStatus.INERROR)


class _Connection(StorageConnection):
    """A session's handle: a PostgreSQL connection of its group's role, taken from the
    pool for a transaction or while cursors are open, and given back in between.

    Statements go out with client-side parameter binding over the simple query
    protocol, so what is owed to the connection (a deferred ``BEGIN``, a
    ``CLOSE ALL``) and a cursor's ``DECLARE`` and first ``FETCH`` travel in the
    same round trip as the statement.
    """

    def __init__(self, backend: PostgreSQLBackend) -> None:
        self._b = backend
        self.policy = Policy("readonly")
        self._phys: _Phys | None = None
        self._begin_pending = False
        self._lost: StorageError | None = None   # the connection died inside a transaction
        self._cursors = _Cursors(self)
        self._savepoints: list[str] = []
        self._stop = _Interrupts(self._broken)

    # -- state --
    @property
    def in_transaction(self) -> bool:
        if self._begin_pending or self._lost is not None:
            return True
        p = self._phys
        return p is not None and p.conn.info.transaction_status in (_INTRANS, _INERROR)

    @property
    def holds_shared(self) -> bool:
        return self.in_transaction or self._phys is not None  # a pooled connection

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        p = self._phys
        if p is not None and p.key != policy.group and not self.in_transaction:
            self._cursors.close_all()
            self._give_back(force=True)

    def _take(self) -> _Phys:
        self._stop.settle()
        if self._lost is not None:
            raise self._lost
        if self._phys is None:
            self._phys = self._b._pool.get(self.policy.group)
        return self._phys

    def _give_back(self, force: bool = False) -> None:
        with self._stop.handoff:
            p = self._phys
            if p is None or (not force and (self._cursors.open or self.in_transaction)):
                return
            self._phys = None
        self._stop.settle()
        self._savepoints.clear()
        self._b._pool.put(p)

    def _broken(self, p: _Phys) -> None:
        """The connection is unusable: drop it; an open transaction is lost."""
        was_txn = self._begin_pending or p.conn.info.transaction_status != _IDLE
        self._phys = None
        for c in self._cursors.open.values():
            c.gone = c.closed = True
        self._cursors.open.clear()
        self._b._pool.discard(p)
        self._begin_pending = False
        if was_txn:
            self._lost = StorageError(
                "the connection to PostgreSQL was lost; the transaction was rolled back",
                "08006", "roll back, then run the transaction again")

    def _prefix(self, p: _Phys) -> list[str]:
        """Statements owed to the connection, sent ahead of the next one (same round trip)."""
        pre = []
        if p.close_all and not self._cursors.open:
            pre.append("CLOSE ALL")
            p.close_all = False
        if self._begin_pending:
            pre.append("BEGIN")
            self._begin_pending = False
        return pre

    def arm(self, inline_seconds: float = 0.0) -> None:
        self._stop.arm()

    def _send(self, statements: list[str], prefix: bool = True, statement: bool = False
              ) -> _Result:
        """Run ``statements`` in one round trip (the simple query protocol); return the last
        result."""
        p = self._take()
        pre = self._prefix(p) if prefix else []
        query = "\n;".join(pre + statements)  # "\n": a statement may end in a -- comment
        return self._stop.guard(p, lambda: _Result(p, query, self._b.max_result, self._b.budget),
                                statement)

    def _bind(self, p: _Phys, st: Statement, params: Sequence[Any]) -> str:
        _check_lexing(p)
        return self._stop.guard(p, lambda: p.mog.mogrify(st.text, _params(params)))

    # -- transactions --
    def begin(self) -> None:
        if not self.in_transaction:
            self._begin_pending = True
            self.note_transaction()

    def commit(self) -> None:
        self._end("COMMIT")

    def rollback(self) -> None:
        self._end("ROLLBACK")

    def _end(self, what: str) -> None:
        try:
            self._finish(what)
        except Exception:
            self._give_back()  # a failed COMMIT (a deferred constraint) ended the transaction
            raise
        finally:
            self.note_transaction()

    def _finish(self, what: str) -> None:
        if self._lost is not None:
            err, self._lost = self._lost, None
            if what == "COMMIT":
                raise err
            return
        if self._begin_pending:  # BEGIN goes out with the first statement: none was sent
            self._begin_pending = False
            self._give_back()
            return
        p = self._phys
        if p is None or p.conn.info.transaction_status == _IDLE:
            return
        cur = self._send([what])
        self._savepoints.clear()
        if what == "ROLLBACK":
            for c in list(self._cursors.open.values()):
                if c.depth >= 0:  # declared in the transaction: PostgreSQL dropped it
                    c.gone = True
                    self._cursors.open.pop(c.name, None)
        self._give_back()
        if what == "COMMIT" and cur.statusmessage == "ROLLBACK":
            raise StorageError("the transaction was rolled back, not committed: a statement "
                               "in it had failed", "25P02",
                               "in PostgreSQL a failed statement ends the transaction; roll "
                               "back after an error and run the transaction again")

    def savepoint(self, name: str) -> None:
        self.begin()
        self._send([f"SAVEPOINT {_ident(name)}"])
        self._savepoints.append(name)

    def release(self, name: str, undo: bool) -> None:
        ident = _ident(name)
        self._send(([f"ROLLBACK TO SAVEPOINT {ident}"] if undo else [])
                   + [f"RELEASE SAVEPOINT {ident}"], prefix=False)
        depth = self._savepoints.index(name) if name in self._savepoints else len(self._savepoints)
        del self._savepoints[depth:]
        if undo:  # cursors opened since the savepoint are gone with it
            for c in list(self._cursors.open.values()):
                if c.depth > depth:
                    c.gone = True
                    self._cursors.open.pop(c.name, None)

    # -- statements --
    def execute(self, sql: str, params: Sequence[Any]) -> StorageCursor:
        try:
            return self._execute(sql, params)
        except Exception:
            self._give_back()  # outside a transaction a failed statement keeps no connection
            raise

    def _execute(self, sql: str, params: Sequence[Any]) -> StorageCursor:
        kind = _statement(sql, self.policy)
        p = self._take()
        bound = self._bind(p, kind, params)
        if kind.cursor:
            cursor = self._cursors.declare(p, bound)
            self.note_transaction(sql)
            self._give_back()
            return cursor
        if kind.no_transaction_block:  # VACUUM & co. must be alone in their query
            owed = self._prefix(p)
            if owed:
                self._send(owed, prefix=False)
        result = _PlainCursor(self._send([bound], statement=True))
        self.note_transaction(sql, result.rowcount > 0)
        if p.conn.info.transaction_status == _IDLE:  # a COMMIT or ROLLBACK sent as SQL
            self._savepoints.clear()
        if kind.undoes_savepoint:  # ROLLBACK (TO) or COMMIT in SQL: some cursors may be gone
            for c in self._cursors.open.values():
                if c.depth >= 0:
                    c.uncertain = True
        self._give_back()
        return result

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> int:
        try:
            return self._executemany(sql, seq)
        except Exception:
            self._give_back()
            raise

    def _executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> int:
        st = _statement(sql, self.policy)
        if not seq:
            return 0
        p = self._take()
        if st.rows:  # psycopg would take each result whole: one by one, counted
            return self._each(p, sql, st, seq)
        text = st.text
        rows = [_params(p) for p in seq]
        owed = self._prefix(p)

        def run() -> int:
            with p.conn.cursor() as cur:  # server-side binding, pipelined by psycopg
                if owed:
                    with p.conn.pipeline():
                        for s in owed:
                            p.conn.execute(s)
                        cur.executemany(text, rows)
                else:
                    cur.executemany(text, rows)
                return max(cur.rowcount, 0)
        n = self._stop.guard(p, run, statement=True)
        self.note_transaction(sql, n > 0)
        self._give_back()
        return n

    def _each(self, p: _Phys, sql: str, st: Statement, seq: Sequence[Sequence[Any]]) -> int:
        """executemany of a statement that may return rows (ignored): one round trip each,
        read like any result."""
        n = 0
        for params in seq:
            n += max(self._send([self._bind(p, st, params)], statement=True).rowcount, 0)
        self.note_transaction(sql, n > 0)
        self._give_back()
        return n

    def interrupt(self) -> None:
        """Cancel the running statement (from another thread; never blocks the caller)."""
        self._stop.interrupt(lambda: self._phys)

    def close(self) -> None:
        self._cursors.close_all()
        self._lost = None
        p = self._phys
        if p is None:
            self._begin_pending = False
            return
        try:
            if self.in_transaction and not self._begin_pending:
                p.conn.execute("ROLLBACK")
        except psycopg.Error:
            pass
        self._begin_pending = False
        self._give_back(force=True)


class _Interrupts:
    """A session's interrupts: a cancel sent from another thread to the statement on its way,
    and the guard every round trip runs under (a statement interrupted before it went out
    does not start)."""

    def __init__(self, broken: Callable[[_Phys], None]) -> None:
        self._broken = broken  # the connection is unusable: the session drops it
        self._cancelling = threading.Lock()
        # interrupt() picks the connection to cancel and marks the cancel under this lock, and
        # _give_back() detaches the connection under it: a cancel never targets a connection
        # already on its way to the pool (and another session's statement).
        self.handoff = threading.Lock()
        self._stopped = False  # interrupt() until the next arm(): nothing more goes out
        self._round_trip: _Phys | None = None  # the connection a statement is on its way on

    def arm(self) -> None:
        with self.handoff:
            self._stopped = False

    def settle(self) -> None:
        """Wait for a cancel request still on its way (interrupt), so that it never reaches
        a later statement of this session or, once the connection is back in the pool,
        of another."""
        if self._cancelling.locked():
            with self._cancelling:
                pass

    def guard(self, p: _Phys, work: Callable[[], T], statement: bool = False) -> T:
        """Run ``work`` (a round trip on ``p``): PostgreSQL's errors as StorageError; a
        ``statement`` interrupted before it went out does not start."""
        with self.handoff:
            if statement and self._stopped:
                self._stopped = False  # this statement was the one to stop
                raise StorageError("canceling statement due to user request", "57014")
            self._round_trip = p
        try:
            return work()
        except psycopg.Error as e:
            err = _error(e)
            if not p.usable or err.code.startswith("08"):
                self._broken(p)
            raise err from e
        except BaseException:
            if not p.usable or p.conn.info.transaction_status == TransactionStatus.ACTIVE:
                self._broken(p)  # interrupted mid round trip (a method over its time limit)
            raise
        finally:
            with self.handoff:
                self._round_trip = None
                if statement:
                    self._stopped = False

    def interrupt(self, current: Callable[[], _Phys | None]) -> None:
        """Cancel the statement running on the ``current()`` connection (from another thread;
        never blocks the caller)."""
        with self.handoff:
            self._stopped = True
            p = current()
            if p is None or not self._cancelling.acquire(blocking=False):
                return

        def cancel() -> None:
            try:
                while True:  # PostgreSQL ignores a cancel that comes before the statement
                    p.conn.cancel_safe(timeout=5)
                    time.sleep(CANCEL_RETRY)
                    with self.handoff:
                        if self._round_trip is not p or not self._stopped:
                            break
            except (psycopg.Error, OSError):
                pass
            finally:
                self._cancelling.release()
        threading.Thread(target=cancel, name="casemate-pg-cancel", daemon=True).start()


def _statement(sql: str, policy: Policy) -> Statement:
        """The statement read by PostgreSQL's parser, or StorageError if the session may not
        run it (docs/postgresql.md, "What sessions may run")."""
        try:
            st = analyze(sql)
        except SQLTextError as e:
            raise StorageError(e.message, e.code) from None
        why = refusal(st, policy.is_admin)
        if why is not None:
            raise StorageError(why, "42501", _REFUSAL_HINT)
        return st


_REFUSAL_HINT = ("Casemate refused it before PostgreSQL saw it; docs/postgresql.md, \"What "
                 "sessions may run\", lists what is refused and why")


def _check_lexing(p: _Phys) -> None:
    """Placeholders were found by a lexer that reads strings as standard-conforming: refuse
    to bind on a connection where a SET changed that (a literal would be misread)."""
    if p.conn.info.parameter_status("standard_conforming_strings") != "on":
        raise StorageError("standard_conforming_strings is off on this session: parameters "
                           "cannot be bound safely", "42601",
                           "leave standard_conforming_strings on (RESET it)")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
