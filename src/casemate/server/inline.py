"""Which storage calls run in the event loop, and which in worker threads.

A worker thread costs every call a hand-over and a wake-up (measured here:
about a quarter of the server's CPU per primary-key lookup), while most
statements take SQLite microseconds.  :class:`CostModel` remembers how long
each kind of call took (its SQL text, in or out of a transaction) and lets a
session run the call directly in the event loop when it has been seen to
take less than ``limit`` seconds.  A statement never seen before, a slow one
(a large scan, a commit that waits for ``fsync``) and every call of a
backend that waits on the network (PostgreSQL) go to a worker thread, so one
slow statement still blocks only its own session.  The estimate is the mean of
the last run and the estimate before it, so one run longer than about twice the
limit sends the next call of its kind to a thread.

An estimate is a guess from history, and history can be trained (the same SQL
text with a small bound, then a huge one).  So a call run in the event loop is
also bounded by the work it does: the storage stops it after :attr:`CostModel.cutoff`
seconds (SQLite's progress handler) and undoes it (:class:`~casemate.storage.TooLong`),
the session runs it again in a worker thread, and the estimate learns.  Only calls
that can be stopped and run again are inlined: never a fetch from an open cursor
(the rows already read would be lost), never a write inside a transaction (SQLite
undoes the whole transaction when it stops one).  The event loop is held up for
at most about ``cutoff``, whatever a session sends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

__all__ = ["CostModel"]

T = TypeVar("T")

# Keys remembered (statement texts are part of the key; a long one is never inlined).
MAX_KEYS = 2048
MAX_KEY_TEXT = 4096
# A call in the event loop is stopped after this many times the limit (at least 2 ms):
# long enough that a call near the limit is not cut off and run twice, short enough that
# no session holds up the others noticeably.
CUTOFF_FACTOR = 10
MIN_CUTOFF = 0.002


class CostModel:
    """Per-kind running estimate (exponentially weighted) of a storage call's duration."""

    def __init__(self, limit_seconds: float) -> None:
        self.limit = limit_seconds
        self.cutoff = max(MIN_CUTOFF, CUTOFF_FACTOR * limit_seconds)
        self.cut_calls = 0  # inline calls stopped at the cut-off and run again in a thread
        self._est: dict[Hashable, float] = {}
        self.inline_calls = 0  # counted in the event loop's thread only
        self.thread_calls = 0

    def key(self, *parts: Any) -> Hashable | None:
        """A key for a call, or None when it must not be remembered (too long a text)."""
        if self.limit <= 0:
            return None
        for p in parts:
            if isinstance(p, str) and len(p) > MAX_KEY_TEXT:
                return None
        return parts

    def inline(self, key: Hashable | None) -> bool:
        if key is None:
            return False
        est = self._est.get(key)
        return est is not None and est < self.limit

    def record(self, key: Hashable | None, seconds: float) -> None:
        """Called from the loop or a worker thread (dict updates are atomic under the GIL)."""
        if key is None:
            return
        old = self._est.get(key)
        if old is None and len(self._est) >= MAX_KEYS:
            self._est.clear()  # rare: many distinct statements; start learning again
        # Weighted towards the latest run, so a table that has grown is noticed quickly.
        self._est[key] = seconds if old is None else (old + seconds) / 2

    def run_inline(self, key: Hashable, fn: Callable[..., T], *args: Any) -> T:
        self.inline_calls += 1
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.record(key, time.perf_counter() - t0)

    def timed(self, key: Hashable | None, fn: Callable[..., T], *args: Any) -> T:
        """Run in a worker thread, recording the duration."""
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.record(key, time.perf_counter() - t0)
