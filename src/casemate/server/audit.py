"""``Logs/audit.jsonl`` and ``Logs/server.log``: what administrators read, bounded and safe.

Audit events: ``connection_accepted``, ``connection_refused``, ``login_ok``,
``login_failed``, ``disconnect``, ``permission_refused``, ``admin``.  Never
written: passwords, keys, SCRAM messages, statement text or parameters.

Both files rotate by size (``limits.log_file_max_kb``, keeping
``limits.log_files_kept`` old ones: ``audit.jsonl.1`` is the newest), so a
flood of refused connections cannot fill the disk.  Strings a client chose
(program name, host, user name of a failed login, certificate subject) pass
through :func:`clean` before an administrator sees them, and every server log
message is cleaned too: a newline in them cannot forge a line or a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import logging.handlers
import os
import threading
import time
import unicodedata
from pathlib import Path
from typing import Any

from .admission import address_key

__all__ = ["AuditLog", "SafeFormatter", "Throttle", "clean", "format_address",
           "server_log_handler"]

# Control, format (bidirectional overrides, zero-width) and line/paragraph separators:
# in a client's program name they could forge a row of `casemate sessions` or a log line.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def clean(value: object, limit: int = 200) -> str:
    """A client-supplied string made safe to show to an administrator (CLI, web page, logs):
    cut at ``limit`` characters, unsafe characters written as ``\\xNN``/``\\uNNNN``."""
    text = str(value)[:limit]
    if text.isprintable():
        return text
    return "".join(_escape(c) if unicodedata.category(c) in _UNSAFE_CATEGORIES else c
                   for c in text)


def _escape(c: str) -> str:
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (``[2001:db8::2]:41928``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SafeFormatter(logging.Formatter):
    """Log lines whose message has no control characters (tracebacks stay readable)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = clean(record.message, 100_000)
        return super().formatMessage(record)


def server_log_handler(path: Path, limits: Any) -> logging.Handler:
    """``Logs/server.log``, rotated like the audit log."""
    return logging.handlers.RotatingFileHandler(
        path, maxBytes=limits.log_file_max_kb * 1024,
        backupCount=limits.log_files_kept, encoding="utf-8")


def rotate(path: Path, keep: int) -> None:
    """``path`` -> ``path.1`` -> ... -> ``path.keep`` (the oldest is dropped)."""
    for i in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
    if path.exists():
        os.replace(path, path.with_name(f"{path.name}.1"))


class AuditLog:
    def __init__(self, path: Path, max_bytes: int = 10 * 1024 * 1024, keep: int = 5) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.max_bytes, self.keep = path, max_bytes, keep
        self._f = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives with the server
        self._size = self._f.tell()
        self._lock = threading.Lock()

    def event(self, kind: str, **fields: Any) -> None:
        # Fields can carry client text (a refused statement names what it tried): JSON
        # escapes C0 controls but would write bidi overrides and C1 controls (U+009B, a
        # CSI on many terminals) as they are, for an admin's `tail` to obey.
        record = {"ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                  "event": kind, **{k: clean(v, 1000) if isinstance(v, str) else v
                                    for k, v in fields.items()}}
        line = json.dumps(record, default=str, ensure_ascii=False) + "\n"
        size = len(line.encode())
        with self._lock:
            if self._f.closed:
                return
            if self._size and self._size + size > self.max_bytes:
                self._rotate()
            self._f.write(line)
            self._size += size

    def _rotate(self) -> None:
        self._f.close()
        try:
            rotate(self.path, self.keep)
        except OSError as e:  # keep writing to the full file rather than lose events
            logging.getLogger("casemate.server").error("cannot rotate %s: %s", self.path, e)
        self._f = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._size = self._f.tell()

    def close(self) -> None:
        with self._lock:
            self._f.close()


class Throttle:
    """Failed-login counters per address and per user name; delays grow, capped, then fade.

    An attempt counts as a failure from the moment it is made (a success clears it), and
    attempts queue one behind the other per address and per user: each gets its verdict
    one delay after the previous one's turn.  So guesses sent in parallel get no more
    verdicts per second than guesses sent in turn.  A success clears its address and
    user and wakes the attempts queued behind them (a pool of clients logging in at once
    goes through); an attempt still without a turn at its login deadline is refused
    unheard.  Runs in the server's event loop (session logins and the web page).

    The user's queue is shared by every address, so a stranger guessing a known name
    ("admin") from one address could keep it full and lock the user out everywhere.  An
    address a user has logged in from before is therefore queued apart for that user
    (its own address queue, and one for the pair): guesses from new addresses still
    share one queue, and the user's usual workstations still get in.
    """

    def __init__(self, after: int, base: float, cap: float, forget: float) -> None:
        self.after, self.base, self.cap, self.forget = after, base, cap, forget
        self._failures: dict[str, list[float]] = {}
        self._turns: dict[str, float] = {}  # key -> when its last queued attempt is answered
        self._epochs: dict[str, int] = {}  # key -> successes so far (a queue restarts)
        self._success = asyncio.Event()  # set, then replaced, at each success
        self._known: set[str] = set()  # "user@address" pairs that have logged in

    def _keys(self, address: str, user: str) -> tuple[str, str]:
        address = address_key(address)
        pair = f"{user}\0{address}"
        return ("a:" + address, ("p:" + pair) if pair in self._known else ("u:" + user))

    def _count(self, key: str, now: float) -> int:
        times = [t for t in self._failures.get(key, ()) if now - t < self.forget]
        if times:
            self._failures[key] = times[-64:]  # bounded: only the recent failures matter
        else:
            self._failures.pop(key, None)
        return len(times)

    def delay(self, address: str, user: str, now: float) -> float:
        """The step between two answers for this address and user, from recent failures."""
        n = max(self._count(k, now) for k in self._keys(address, user))
        if n < self.after:
            return 0.0
        return float(min(self.base * 2 ** (n - self.after), self.cap))

    def reserve(self, address: str, user: str, now: float, horizon: float) -> float | None:
        """Queue one attempt: seconds to wait before answering it, or None when its turn
        would come more than ``horizon`` seconds from now (refuse it, uncounted)."""
        keys = self._keys(address, user)
        turn = max(now, *(self._turns.get(k, 0.0) for k in keys)) + self.delay(address, user,
                                                                              now)
        if turn - now > horizon:
            return None
        for k in keys:
            self._turns[k] = turn
        self.failed(address, user, now)
        return turn - now

    async def wait_turn(self, address: str, user: str, horizon: float) -> bool:
        """Wait for this attempt's turn to be answered (counting it as a failure until a
        success clears it); False when it has none within ``horizon`` seconds."""
        keys = self._keys(address, user)
        end = time.monotonic() + horizon
        while (left := end - time.monotonic()) > 0:
            wait = self.reserve(address, user, time.monotonic(), left)
            if wait is None:  # the queue is full: only a success can make room
                await self._woken(left)
                continue
            epochs = [self._epochs.get(k, 0) for k in keys]
            turn = time.monotonic() + wait
            while (left := turn - time.monotonic()) > 0:
                if [self._epochs.get(k, 0) for k in keys] != epochs:
                    break  # a success cleared our address or user: queue again, afresh
                await self._woken(left)
            else:
                return True
        return False

    async def _woken(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._success.wait(), timeout)

    def failed(self, address: str, user: str, now: float) -> None:
        for key in self._keys(address, user):
            self._failures.setdefault(key, []).append(now)
        if len(self._failures) > 100_000:  # bounded memory under a wide scan
            # Forget the keys with the fewest failures first (then the least recent): a
            # flood of made-up names must not evict the counter of the user under attack.
            ranked = sorted(self._failures, key=lambda k: (len(self._failures[k]),
                                                            self._failures[k][-1]))
            for k in ranked[:50_000]:
                del self._failures[k]
        if len(self._turns) > 100_000:
            self._turns = {k: t for k, t in self._turns.items() if t > now}

    def succeeded(self, address: str, user: str) -> None:
        if len(self._known) >= 100_000:
            self._known.clear()  # bounded; known workstations are learnt again at login
        address = address_key(address)
        self._known.add(f"{user}\0{address}")
        for key in ("a:" + address, "u:" + user, f"p:{user}\0{address}"):
            self._failures.pop(key, None)
            self._turns.pop(key, None)
            self._epochs[key] = self._epochs.get(key, 0) + 1
        if len(self._epochs) > 100_000:
            self._epochs.clear()  # waiters see a change and queue again: harmless
        self._success.set()
        self._success = asyncio.Event()
