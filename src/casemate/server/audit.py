"""``Logs/audit.jsonl``: one JSON object per security-relevant event.

Events: ``connection_accepted``, ``connection_refused``, ``login_ok``,
``login_failed``, ``disconnect``, ``permission_refused``, ``admin``.  Never
written: passwords, keys, SCRAM messages, statement text or parameters.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any

__all__ = ["AuditLog", "Throttle"]


class AuditLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives with the server
        self._lock = threading.Lock()

    def event(self, kind: str, **fields: Any) -> None:
        record = {"ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                  "event": kind, **fields}
        line = json.dumps(record, default=str, ensure_ascii=False)
        with self._lock:
            if not self._f.closed:
                self._f.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._f.close()


class Throttle:
    """Failed-login counters per address and per user name; delays grow, capped, then fade.

    An attempt counts as a failure from the moment it is made (a success clears it), and
    attempts queue one behind the other per address and per user: each gets its verdict
    one delay after the previous one's turn.  So guesses sent in parallel get no more
    verdicts per second than guesses sent in turn, and an attempt whose turn would come
    after its login deadline is refused at once, unheard, holding nothing.
    """

    def __init__(self, after: int, base: float, cap: float, forget: float) -> None:
        self.after, self.base, self.cap, self.forget = after, base, cap, forget
        self._failures: dict[str, list[float]] = {}
        self._turns: dict[str, float] = {}  # key -> when its last queued attempt is answered

    def _count(self, key: str, now: float) -> int:
        times = [t for t in self._failures.get(key, ()) if now - t < self.forget]
        if times:
            self._failures[key] = times[-64:]  # bounded: only the recent failures matter
        else:
            self._failures.pop(key, None)
        return len(times)

    def delay(self, address: str, user: str, now: float) -> float:
        """The step between two answers for this address and user, from recent failures."""
        n = max(self._count("a:" + address, now), self._count("u:" + user, now))
        if n < self.after:
            return 0.0
        return float(min(self.base * 2 ** (n - self.after), self.cap))

    def reserve(self, address: str, user: str, now: float, horizon: float) -> float | None:
        """Queue one attempt: seconds to wait before answering it, or None when its turn
        would come more than ``horizon`` seconds from now (refuse it, uncounted)."""
        keys = ("a:" + address, "u:" + user)
        turn = max(now, *(self._turns.get(k, 0.0) for k in keys)) + self.delay(address, user,
                                                                              now)
        if turn - now > horizon:
            return None
        for k in keys:
            self._turns[k] = turn
        self.failed(address, user, now)
        return turn - now

    def failed(self, address: str, user: str, now: float) -> None:
        for key in ("a:" + address, "u:" + user):
            self._failures.setdefault(key, []).append(now)
        if len(self._failures) > 100_000:  # bounded memory under a wide scan
            for k in list(self._failures)[:50_000]:
                del self._failures[k]
        if len(self._turns) > 100_000:
            self._turns = {k: t for k, t in self._turns.items() if t > now}

    def succeeded(self, address: str, user: str) -> None:
        self._failures.pop("a:" + address, None)
        self._failures.pop("u:" + user, None)
