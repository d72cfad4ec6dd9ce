"""The last hour of the server, sample by sample, for the web page's live graphs.

A DBA keeps the monitor page open to see a trend, not a number: how many sessions,
how many of them encrypted, statements per second, bytes in and out, CPU.  The
server's counters only go up, so a sampler reads them every :data:`INTERVAL`
seconds and keeps the differences in a ring buffer of one hour; the page fetches
the samples newer than the last one it has (``/api/history?since=T``).  Nothing
is written to disk: the graphs start empty when the server starts.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Server

__all__ = ["INTERVAL", "SERIES", "History"]

INTERVAL = 2.0   # seconds between samples (as often as the page refreshes)
KEEP = 3600.0    # seconds of samples kept
# The fields of one sample after its time (the page's graphs, in this order).
SERIES = ["sessions", "encrypted_percent", "statements_per_second", "bytes_in_per_second",
          "bytes_out_per_second", "cpu_percent"]


class History:
    """A ring buffer of samples ``(unix time, *SERIES)``, one every ``interval`` seconds."""

    def __init__(self, server: Server, interval: float = INTERVAL) -> None:
        self.server = server
        self.interval = interval
        self.samples: collections.deque[tuple[float, ...]] = collections.deque(
            maxlen=int(KEEP / interval))
        self._last = self._counters()

    def _counters(self) -> tuple[float, float, int, int, int]:
        s = self.server
        return (time.monotonic(), time.process_time(), s.statements, s.bytes_in, s.bytes_out)

    def sample(self) -> tuple[float, ...]:
        """Take one sample now (rates since the previous one) and keep it."""
        now = self._counters()
        (t0, cpu0, st0, in0, out0), self._last = self._last, now
        dt = max(now[0] - t0, 1e-3)
        sessions = list(self.server.sessions.values())
        encrypted = sum(1 for x in sessions if x.tls_version is not None)
        row = (round(time.time(), 1), len(sessions),
               round(100 * encrypted / len(sessions), 1) if sessions else 0.0,
               round((now[2] - st0) / dt, 2), round((now[3] - in0) / dt, 1),
               round((now[4] - out0) / dt, 1), round(100 * (now[1] - cpu0) / dt, 1))
        self.samples.append(row)
        return row

    def since(self, t: float) -> dict[str, Any]:
        """The samples taken after unix time ``t``, as columns (uPlot's data layout)."""
        rows = [r for r in self.samples if r[0] > t]
        return {"interval": self.interval, "time": [r[0] for r in rows],
                **{name: [r[k + 1] for r in rows] for k, name in enumerate(SERIES)}}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.sample()
