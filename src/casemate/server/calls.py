"""Running server methods inside a session: arguments, savepoint, time limit, results.

A call runs in a worker thread on the session's own storage connection
(so the caller's grants and transaction apply) inside a savepoint: the
method's changes are kept with the caller's transaction on success and
undone if it raises or runs over ``methods.time_limit_seconds``.  A method
over its limit gets an exception raised into its thread and its SQLite
statement interrupted; the event loop never waits on it.  A cancel and the
session's statement timeout stop it the same way (``Runner.call`` in runner.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import threading
from collections.abc import Iterator
from typing import Any

from ..errors import Codes, Error
from ..methods import ArgumentError, MethodContext, RowStream, ServerMethod
from ..storage import StorageConnection, StorageCursor

__all__ = ["MethodTimeout", "RESULT_COLUMN", "IterCursor", "run_method", "stop_method",
           "stop_thread"]

RESULT_COLUMN = "__result__"  # DESCRIPTION of a single-value result (not rows)
_savepoints = itertools.count(1)
# Held while a method thread is marked as running and while it is being stopped, so the
# timeout exception never lands in a thread that has moved on to other work.
_stop_lock = threading.Lock()


class MethodTimeout(BaseException):
    """Raised inside a method's thread when it runs over its time limit.

    A BaseException, so a method's ``except Exception`` cannot swallow it.
    """


class IterCursor(StorageCursor):
    """Rows produced by a method, pulled in batches like a query's (each pull time-limited
    and with the method's errors reported as the method's)."""

    def __init__(self, rows: Iterator[Any], columns: list[str] | None, name: str = "",
                 conn: StorageConnection | None = None) -> None:
        self.name = name
        self.conn = conn
        self.holder: dict[str, int] = {}
        self._rows = iter(rows)
        self._pending: list[tuple[Any, ...]] = []
        self.rowcount = -1
        self.lastrowid = None
        if columns is None:  # peek to learn the width
            first = next(self._rows, None)
            self._pending = [tuple(first)] if first is not None else []
            columns = [f"column{i + 1}" for i in range(len(first) if first is not None else 0)]
        self.description = [(c, None) for c in columns]

    def fetch(self, n: int) -> list[tuple[Any, ...]]:
        out, self._pending = self._pending[:n], self._pending[n:]
        with _stop_lock:
            self.holder["thread"] = threading.get_ident()
        if self.conn is not None:
            self.conn.set_in_method(True)
        try:
            out += [tuple(r) for r in itertools.islice(self._rows, n - len(out))]
        except (MethodTimeout, Error):
            raise
        except Exception as e:  # noqa: BLE001 - the method's own error, reported as such
            raise method_error(e, self.name) from None
        finally:
            if self.conn is not None:
                self.conn.set_in_method(False)
            with _stop_lock:
                self.holder.pop("thread", None)
        return out

    def close(self) -> None:
        close = getattr(self._rows, "close", None)
        if close is not None:
            close()


class ValueCursor(StorageCursor):
    """A single value, sent as one row of the :data:`RESULT_COLUMN` column."""

    def __init__(self, value: Any) -> None:
        self._rows = [(value,)]
        self.description = [(RESULT_COLUMN, None)]
        self.rowcount = 1
        self.lastrowid = None

    def fetch(self, n: int) -> list[tuple[Any, ...]]:
        out, self._rows = self._rows[:n], self._rows[n:]
        return out

    def close(self) -> None:
        self._rows = []


def run_method(conn: StorageConnection, m: ServerMethod, ctx: MethodContext, args: tuple[Any, ...],
               kwargs: dict[str, Any], begin: bool, holder: dict[str, int]) -> StorageCursor:
    """Blocking: run ``m`` in a savepoint on ``conn``; return its result as a cursor."""
    with _stop_lock:
        holder["thread"] = threading.get_ident()
    if begin:
        conn.begin()
    sp = f"casemate_call_{next(_savepoints)}"
    conn.savepoint(sp)
    try:
        bound = m.bind(args, kwargs)
        bound.arguments[next(iter(bound.arguments))] = ctx
        conn.set_in_method(True)
        try:
            result = m.fn(*bound.args, **bound.kwargs)
        finally:
            conn.set_in_method(False)
        cursor: StorageCursor
        if m.streams:
            if isinstance(result, RowStream):
                cursor = IterCursor(iter(result), result.columns, m.name, conn)
            else:
                cursor = IterCursor(iter(result), None, m.name, conn)
        else:
            m.check_result(result)
            cursor = ValueCursor(result)
        conn.release(sp, undo=False)
        return cursor
    except BaseException:
        conn.release(sp, undo=True)
        raise
    finally:
        with _stop_lock:
            holder.pop("thread", None)


def stop_thread(ident: int) -> None:
    """Raise MethodTimeout in thread ``ident`` at its next bytecode."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident),
                                               ctypes.py_object(MethodTimeout))


def stop_method(holder: dict[str, int]) -> None:
    """Stop the method whose thread ``holder`` names, if it is still running one."""
    with _stop_lock:
        if "thread" in holder:
            stop_thread(holder["thread"])


def method_error(e: BaseException, name: str) -> Error:
    """What the caller sees when a method fails: type and message, never a traceback."""
    if isinstance(e, ArgumentError):
        return Error(str(e), Codes.WRONG_ARGUMENTS, "check the method's signature: "
                     "casemate methods DIR")
    return Error(f"method {name}() raised {type(e).__name__}: {e}", Codes.METHOD_RAISED)


async def guarded(coro_factory: Any, conn: StorageConnection, holder: dict[str, int],
                  limit: float, name: str) -> Any:
    """Await a method's work with a time limit; stop it (not the loop) when it runs over."""
    fut = asyncio.ensure_future(coro_factory())
    # asyncio.wait, not wait_for: it leaves fut running at the limit (as shield did), and
    # needs no current task (a handler may start in data_received: handlers.serve_now).
    done, _ = await asyncio.wait({fut}, timeout=limit)
    if done:
        try:
            return fut.result()
        finally:
            # Not held by this frame, which a failed method's traceback keeps: the future
            # holds that exception, and the cycle kept the method's data (50 MB values,
            # once per call) until the garbage collector ran (found by the red team).
            del fut, done
    for _ in range(50):  # ask repeatedly: the thread may be inside a C call
        stop_method(holder)
        conn.interrupt()
        done, _ = await asyncio.wait({fut}, timeout=0.1)
        if done:
            break
    if not fut.done():
        fut.add_done_callback(lambda f: f.exception())
    elif not fut.cancelled() and fut.exception() is None:
        return fut.result()  # finished in the grace period after all
    raise Error(f"method {name}() ran over its time limit of {limit:g} s "
                "(methods.time_limit_seconds) and was stopped; its changes were undone",
                Codes.TIME_LIMIT)
