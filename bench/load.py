"""Load test: many concurrent sessions on one real server, a mix of reads, writes and
small transactions, for a fixed time.

Run from the repository root::

    python -m bench.load [--sessions 200] [--seconds 30] [--plain] [--quick] [--seed N]

It creates a temporary database (encrypted unless ``--plain``; the per-address and total
session limits raised above ``--sessions``), starts a real ``casemate serve`` process on
127.0.0.1, opens ``--sessions`` connections with :mod:`casemate.aio` (one event loop, one
task and one connection per session) and has each run, until the time is up, a seeded mix:

* 50 % ``read_pk``: one row by primary key;
* 15 % ``read_range``: 50 rows by a key range;
* 20 % ``write``: one INSERT, autocommit;
* 15 % ``txn``: a transfer between two accounts (two UPDATEs and an INSERT) then COMMIT.

It reports throughput, p50/p99 latency per kind, errors by kind, the server's RSS (start,
peak, end) and CPU, and checks two invariants at the end: the transfers conserved the total
balance, and every acknowledged write is in the table.  ``database is busy`` errors
(code 55P03, lock contention) are counted as expected; the transaction is rolled back.
Any other error, a broken invariant or no operation at all makes the exit status 1.
``--quick`` is 20 sessions for 3 s (what the test suite runs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

import casemate.aio
from casemate.database import create_database
from casemate.errors import Codes, Error
from casemate.testing import ADMIN_PASSWORD, ServerProcess

from ._common import set_setting

MIX = (("read_pk", 50), ("read_range", 15), ("write", 20), ("txn", 15))
ACCOUNTS = 1000
START_BALANCE = 1000
ITEMS = 10_000
EXPECTED_CODES = {Codes.BUSY}  # lock contention: rolled back, counted, not a failure
CONNECT_CONCURRENCY = 50


@dataclass
class Result:
    sessions: int
    seconds: float
    mode: str = ""
    security: str = ""
    connect_seconds: float = 0.0
    elapsed: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)
    rss_start: int = 0
    rss_peak: int = 0
    rss_end: int = 0
    server_cpu: float = 0.0  # CPU seconds used by the server during the run
    client_cpu: float = 0.0
    invariants: list[str] = field(default_factory=list)  # failures; empty = all held

    @property
    def operations(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    @property
    def ok(self) -> bool:
        return self.operations > 0 and not self.unexpected and not self.invariants


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


@contextmanager
def _client_home(path: Path) -> Iterator[None]:
    """Known servers of the throw-away database go to a throw-away CASEMATE_HOME."""
    old = os.environ.get("CASEMATE_HOME")
    os.environ["CASEMATE_HOME"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CASEMATE_HOME", None)
        else:
            os.environ["CASEMATE_HOME"] = old


class _RSSSampler:
    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return

    def __enter__(self) -> _RSSSampler:
        self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _setup(url: str) -> None:

    with casemate.connect(url) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
        cur.executemany("INSERT INTO accounts VALUES (?, ?)",
                        [(i, START_BALANCE) for i in range(1, ACCOUNTS + 1)])
        cur.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
        cur.executemany("INSERT INTO items VALUES (?, ?, ?)",
                        [(i, f"item {i}", i / 100) for i in range(1, ITEMS + 1)])
        cur.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, session INTEGER, "
                    "n INTEGER, kind TEXT)")


async def _session(sid: int, conn: casemate.aio.AsyncConnection, end: float, seed: int,
                   res: Result, acked: Counter[int]) -> None:
    rng = random.Random(seed * 100_003 + sid)
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    lat = res.latencies
    n = 0
    conn.autocommit = True
    while time.monotonic() < end:
        kind = rng.choices(kinds, weights)[0]
        n += 1
        t0 = time.perf_counter()
        try:
            if kind == "read_pk":
                i = rng.randrange(1, ITEMS + 1)
                rows = await conn.fetch("SELECT name, price FROM items WHERE id = ?", (i,))
                if rows != [(f"item {i}", i / 100)]:
                    res.unexpected[f"wrong answer to read_pk {i}"] += 1
            elif kind == "read_range":
                i = rng.randrange(1, ITEMS - 49)
                rows = await conn.fetch("SELECT id, name FROM items WHERE id BETWEEN ? AND ?",
                                        (i, i + 49))
                if [r[0] for r in rows] != list(range(i, i + 50)):
                    res.unexpected["wrong answer to read_range"] += 1
            elif kind == "write":
                await conn.execute("INSERT INTO events (session, n, kind) VALUES (?, ?, ?)",
                                   (sid, n, kind))
                acked[sid] += 1
            else:
                a, b = rng.sample(range(1, ACCOUNTS + 1), 2)
                amount = rng.randrange(1, 50)
                conn.autocommit = False
                try:
                    await conn.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?",
                                       (amount, a))
                    await conn.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?",
                                       (amount, b))
                    await conn.execute("INSERT INTO events (session, n, kind) VALUES (?, ?, ?)",
                                       (sid, n, kind))
                    await conn.commit()
                    acked[sid] += 1
                except BaseException:
                    await conn.rollback()
                    raise
                finally:
                    conn.autocommit = True
        except Error as e:
            label = f"{type(e).__name__} {e.code}: {e.message[:80]}"
            res.errors[label] += 1
            if e.code not in EXPECTED_CODES:
                res.unexpected[label] += 1
                if conn.closed or isinstance(e, casemate.OperationalError) and (
                        e.code == Codes.CONNECTION_FAILURE):
                    return  # the connection is gone: this session ends
            continue
        lat.setdefault(kind, []).append(time.perf_counter() - t0)


async def _drive(url: str, sessions: int, seconds: float, seed: int, res: Result,
                 acked: Counter[int]) -> None:
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def open_one() -> casemate.aio.AsyncConnection:
        async with sem:
            return await casemate.aio.connect(url, connect_timeout=30)

    t0 = time.monotonic()
    opened = await asyncio.gather(*(open_one() for _ in range(sessions)),
                                  return_exceptions=True)
    res.connect_seconds = time.monotonic() - t0
    conns = [c for c in opened if isinstance(c, casemate.aio.AsyncConnection)]
    for e in opened:
        if isinstance(e, BaseException):
            res.unexpected[f"connect: {type(e).__name__}: {e}"[:120]] += 1
    if conns:
        res.security = str(conns[0].security)
    try:
        start = time.monotonic()
        end = start + seconds
        async with asyncio.timeout(seconds + 120):
            await asyncio.gather(*(_session(i, c, end, seed, res, acked)
                                   for i, c in enumerate(conns)))
        res.elapsed = time.monotonic() - start
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


def _check(url: str, res: Result, acked: Counter[int]) -> None:

    with casemate.connect(url) as conn:
        total = conn.execute("SELECT sum(balance) FROM accounts").fetchone()[0]  # type: ignore[index]
        if total != ACCOUNTS * START_BALANCE:
            res.invariants.append(f"total balance {total} != {ACCOUNTS * START_BALANCE}")
        rows = dict(conn.execute("SELECT session, count(*) FROM events GROUP BY session")
                    .fetchall())
    for sid, n in acked.items():
        if rows.get(sid, 0) != n:
            res.invariants.append(f"session {sid}: {n} acknowledged writes, "
                                  f"{rows.get(sid, 0)} stored")


def run(sessions: int, seconds: float, plain: bool = False, seed: int = 1) -> Result:
    """Start a server in a temporary folder, load it, check it, stop it; return the figures."""
    res = Result(sessions, seconds)
    with tempfile.TemporaryDirectory(prefix="casemate-load-") as tmp:
        db = Path(tmp) / "db"
        create_database(db, "load", ADMIN_PASSWORD)
        if not plain:
            set_setting(db, "encrypt_client_server_connections", "true")
        set_setting(db, "max_sessions_per_address", str(sessions + 20))
        set_setting(db, "max_sessions", str(max(1000, sessions + 20)))
        with _client_home(Path(tmp) / "client-home"):
            server = ServerProcess(db).start()
            try:
                res.mode = server.mode
                _setup(server.url)
                proc = psutil.Process(server.pid)
                res.rss_start = proc.memory_info().rss
                cpu0 = proc.cpu_times()
                me = psutil.Process()
                me0 = me.cpu_times()
                acked: Counter[int] = Counter()
                with _RSSSampler(proc) as sampler:
                    asyncio.run(_drive(server.url, sessions, seconds, seed, res, acked))
                res.rss_end = proc.memory_info().rss
                res.rss_peak = max(sampler.peak, res.rss_end)
                cpu1, me1 = proc.cpu_times(), me.cpu_times()
                res.server_cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
                res.client_cpu = (me1.user + me1.system) - (me0.user + me0.system)
                _check(server.url, res, acked)
            finally:
                rc = server.stop()
                if rc != 0:
                    res.invariants.append(f"server exited with status {rc}")
    return res


def report(res: Result) -> str:
    mb = 1024 * 1024
    el = max(res.elapsed, 1e-9)
    lines = [
        f"Casemate load test: {res.sessions} sessions, {res.seconds:g} s, server {res.mode}",
        f"  {res.security}",
        f"  Python {platform.python_version()}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs; client: one asyncio event loop",
        f"connect: {res.sessions} sessions in {res.connect_seconds:.2f} s",
        "",
        f"{'operation':<12}{'count':>10}{'ops/s':>10}{'p50 ms':>10}{'p99 ms':>10}",
    ]
    every: list[float] = []
    for kind, _ in MIX:
        v = res.latencies.get(kind, [])
        every += v
        lines.append(f"{kind:<12}{len(v):>10,}{len(v) / el:>10,.0f}"
                     f"{_percentile(v, 50) * 1e3:>10.2f}{_percentile(v, 99) * 1e3:>10.2f}")
    lines.append(f"{'all':<12}{len(every):>10,}{len(every) / el:>10,.0f}"
                 f"{_percentile(every, 50) * 1e3:>10.2f}{_percentile(every, 99) * 1e3:>10.2f}")
    lines.append("")
    if res.errors:
        lines.append("errors by kind:")
        for label, n in res.errors.most_common():
            tag = "UNEXPECTED" if label in res.unexpected else "expected"
            lines.append(f"  {n:>8,}  {tag:<10} {label}")
    else:
        lines.append("errors: none")
    for label, n in res.unexpected.items():
        if label not in res.errors:
            lines.append(f"  {n:>8,}  UNEXPECTED {label}")
    lines += [
        f"server RSS: start {res.rss_start / mb:.0f} MB, peak {res.rss_peak / mb:.0f} MB, "
        f"end {res.rss_end / mb:.0f} MB",
        f"CPU during the run: server {res.server_cpu / el * 100:.0f} % of one core, "
        f"client {res.client_cpu / el * 100:.0f} % of one core",
        "invariants: " + ("balance conserved, every acknowledged write stored"
                          if not res.invariants else "FAILED: " + "; ".join(res.invariants[:5])),
        "result: " + ("OK" if res.ok else "FAILED"),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Result:
    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=None, help="concurrent sessions (200)")
    ap.add_argument("--seconds", type=float, default=None, help="duration of the load (30)")
    ap.add_argument("--plain", action="store_true", help="unencrypted server")
    ap.add_argument("--quick", action="store_true", help="20 sessions, 3 s")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    sessions = a.sessions or (20 if a.quick else 200)
    seconds = a.seconds or (3.0 if a.quick else 30.0)
    res = run(sessions, seconds, a.plain, a.seed)
    print(report(res), flush=True)
    return res


if __name__ == "__main__":
    sys.exit(0 if main().ok else 1)
