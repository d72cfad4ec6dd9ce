"""Casemate plain and encrypted against PostgreSQL (sslmode disable and require), one run.

Run from the repository root::

    python -m bench.suite [--quick] [--rounds N] [--no-pin] [--write-docs] [--docs-dir DIR]

Four systems on this machine, in the same run: a Casemate server in plain mode, one in
encrypted mode, and a throw-away PostgreSQL (Debian's package, TLS on, SCRAM) driven by
psycopg 3 with ``sslmode=disable`` and ``sslmode=require``.  Same data, same client
process.  Workloads:

1. sequential primary-key lookups on one connection (round trips/s, p50/p99, CPU/op);
2. ``executemany`` of N rows in one transaction (rows/s, CPU/row);
3. fetch of every row of a table of N rows of four columns, in bounded client memory
   (Casemate streams batches; psycopg uses ``cursor.stream`` in chunks of 2,000 rows):
   rows/s, MB/s of row data, CPU/row, client RSS growth;
4. new connection + login + first query (per second, CPU/connect); for encrypted
   Casemate with a full TLS handshake and with a resumed TLS session;
5. 1, 8, 32, 128 concurrent clients (threads, one connection each) doing 80 % lookups
   and 20 % single-row updates in autocommit, for a fixed time (ops/s, p99, CPU/op);
6. server memory with 1,000 and 10,000 idle encrypted Casemate sessions (and 1,000
   plain ones), against 1,000 idle PostgreSQL TLS sessions (per session: the growth).

Method (that of ``bench/tls_bench.py``): the servers and this client are pinned to one
CPU (``--no-pin`` to lift it), so the figures compare CPU cost rather than how many
cores happen to be idle; beside wall-clock rates every workload records the CPU time it
cost the client and the server (``/proc``), which other jobs on the machine disturb far
less.  Workloads 1-4 run in ``--rounds`` interleaved rounds (the order of the systems
rotates each round), workload 5 in 3 rounds (1 in --quick); the report gives medians, the spread
(min-max) and every figure as a ratio against its counterpart in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import random
import re
import resource
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgpack
import psutil

from ._common import (
    Meter,
    choose_cpu,
    cpu_model,
    pin_client,
    pin_note,
    process_cpu,
    set_setting,
    summary,
    taskset_prefix,
    tree_cpu,
    write_marked,
)

CM_PLAIN, CM_TLS, PG_DISABLE, PG_REQUIRE = SYSTEMS = (
    "casemate-plain", "casemate-tls", "pg-disable", "pg-require")
LABELS = {CM_PLAIN: "Casemate plain", CM_TLS: "Casemate TLS",
          PG_DISABLE: "PostgreSQL disable", PG_REQUIRE: "PostgreSQL require"}
# Every figure as a ratio against its counterpart: (numerator, denominator, header).
PAIRS = ((CM_TLS, CM_PLAIN, "Casemate TLS / plain"),
         (PG_REQUIRE, PG_DISABLE, "PG require / disable"),
         (CM_TLS, PG_REQUIRE, "Casemate TLS / PG require"),
         (CM_PLAIN, PG_DISABLE, "Casemate plain / PG disable"))
DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"
DOC_START = "<!-- suite:start -->"
DOC_END = "<!-- suite:end -->"
PG_CHUNK = 2000  # rows per chunk of psycopg's cursor.stream (Casemate's batch is 2,000 too)
MIB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    rounds: int
    rows: int                      # rows of table t (looked up, fetched whole)
    lookups: int
    insert_rows: int
    connects: int
    concurrency: tuple[int, ...]
    mix_seconds: float
    mix_rounds: int
    idle: tuple[int, ...]          # idle encrypted Casemate sessions, cumulative
    pg_idle: int                   # idle PostgreSQL sessions (sslmode=require)


FULL = Sizes(rounds=5, rows=1_000_000, lookups=5000, insert_rows=100_000, connects=50,
             concurrency=(1, 8, 32, 128), mix_seconds=2.0, mix_rounds=3,
             idle=(1000, 10_000), pg_idle=1000)
QUICK = Sizes(rounds=1, rows=20_000, lookups=200, insert_rows=2000, connects=5,
              concurrency=(1, 8, 32, 128), mix_seconds=0.3, mix_rounds=1, idle=(200,), pg_idle=200)


# -- metrics and results ---------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    """One line of the table: the sample key per system, unit, scale and direction."""

    key: str
    workload: str
    label: str
    scale: float = 1.0
    fmt: str = "{:,.0f}"
    higher_is_better: bool = True
    keys: tuple[tuple[str, str], ...] = ()  # per-system sample key, when not ``key``

    def sample(self, system: str) -> str:
        return dict(self.keys).get(system, self.key)


def metrics(sizes: Sizes, idle_counts: set[int] | None = None) -> list[Metric]:
    """The table's lines; ``idle_counts``: the idle-session counts measured."""
    lk, ins, fe, co = ("PK lookups, one connection", "executemany, one transaction",
                       "fetch of the whole table", "connect + login + first query")
    out = [
        Metric("lookup_rate", lk, "round trips/s"),
        Metric("lookup_p50", lk, "p50 latency (µs)", 1e6, higher_is_better=False),
        Metric("lookup_p99", lk, "p99 latency (µs)", 1e6, higher_is_better=False),
        Metric("lookup_cpu", lk, "CPU µs per lookup (client + server)", 1e6,
               higher_is_better=False),
        Metric("lookup_server_cpu", lk, "server CPU µs per lookup", 1e6, higher_is_better=False),
        Metric("insert_rate", ins, f"rows/s ({sizes.insert_rows:,} rows)"),
        Metric("insert_cpu", ins, "CPU µs per row (client + server)", 1e6, "{:,.1f}",
               higher_is_better=False),
        Metric("fetch_rate", fe, f"rows/s ({sizes.rows:,} rows)"),
        Metric("fetch_mb", fe, "MB/s of row data (msgpack size)", fmt="{:,.1f}"),
        Metric("fetch_cpu", fe, "CPU ns per row (client + server)", 1e9, higher_is_better=False),
        Metric("fetch_client_mb", fe, "client RSS growth, MB (bounded memory)", fmt="{:,.1f}",
               higher_is_better=False),
        Metric("connect_rate", co, "per second (Casemate TLS: full handshake)", fmt="{:,.1f}"),
        Metric("connect_cpu", co, "CPU ms per connect (client + server)", 1e3, "{:,.2f}",
               higher_is_better=False),
        Metric("connect_resumed_rate", co, "per second, Casemate TLS resumed session "
               "(others: as above)", fmt="{:,.1f}", keys=(
                   (CM_PLAIN, "connect_rate"), (PG_DISABLE, "connect_rate"),
                   (PG_REQUIRE, "connect_rate"))),
        Metric("connect_resumed_cpu", co, "CPU ms per connect, resumed (others: as above)",
               1e3, "{:,.2f}", higher_is_better=False, keys=(
                   (CM_PLAIN, "connect_cpu"), (PG_DISABLE, "connect_cpu"),
                   (PG_REQUIRE, "connect_cpu"))),
    ]
    for n in sizes.concurrency:
        w = f"{n} concurrent client{'s' if n > 1 else ''}, 80/20 read/write"
        out += [Metric(f"mix{n}_rate", w, "operations/s"),
                Metric(f"mix{n}_p99", w, "p99 latency (ms)", 1e3, "{:,.1f}",
                       higher_is_better=False),
                Metric(f"mix{n}_cpu", w, "CPU µs per operation (client + server)", 1e6,
                       higher_is_better=False)]
    for n in sorted(idle_counts if idle_counts is not None else {*sizes.idle, sizes.pg_idle}):
        w = f"{n:,} idle sessions"
        out += [Metric(f"idle{n}_mb", w, "server memory (MiB)", 1 / MIB, "{:,.0f}",
                       higher_is_better=False),
                Metric(f"idle{n}_kb", w, "server memory per session (KiB)", 1 / 1024,
                       "{:,.1f}", higher_is_better=False)]
    return out


@dataclass
class Results:
    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, system: str, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.samples.setdefault((system, key), []).append(value)

    def median(self, system: str, key: str) -> float | None:
        v = self.samples.get((system, key))
        return statistics.median(v) if v else None

    def ratio(self, m: Metric, a: str, b: str) -> float | None:
        x, y = self.median(a, m.sample(a)), self.median(b, m.sample(b))
        if x is None or y is None or y == 0:
            return None
        return x / y


# -- the four systems -----------------------------------------------------------------

@dataclass
class System:
    """What the workloads need from one of the four systems."""

    name: str
    connect: Callable[[], Any]         # a DB-API connection
    server_cpu: Callable[[], float]    # CPU seconds the server has used so far
    param: str                         # "?" (qmark) or "%s" (psycopg)
    url: str = ""

    @property
    def is_pg(self) -> bool:
        return self.param == "%s"

    def sql(self, text: str) -> str:
        return text.replace("?", self.param)


def casemate_system(name: str, server: Any) -> System:
    import casemate

    url = server.url
    pid = server.pid
    return System(name, lambda: casemate.connect(url, program="bench"),
                  lambda: process_cpu(pid), "?", url)


def pg_system(name: str, pg: Any, sslmode: str) -> System:
    import psycopg

    dsn = pg.dsn(sslmode)

    def cpu() -> float:
        pids = pg.pids()
        return tree_cpu(pids[0], pids[1:])
    return System(name, lambda: psycopg.connect(dsn), cpu, "%s", dsn)


def clear_tls_cache() -> None:
    """Forget the Casemate client's TLS contexts and sessions: the next connect is full."""
    from casemate.client import blocking

    with blocking._cache_lock:
        blocking._tls_cache.clear()


# -- workloads ------------------------------------------------------------------------

def lookups(s: System, sizes: Sizes) -> dict[str, float]:
    keys = random.Random(42).choices(range(1, sizes.rows + 1), k=sizes.lookups)
    sql = s.sql("SELECT name, qty, price FROM t WHERE id = ?")
    times = []
    clock = time.perf_counter
    conn = s.connect()
    try:
        cur = conn.cursor()
        with Meter(s.server_cpu) as m:
            for k in keys:
                t0 = clock()
                cur.execute(sql, (k,))
                if cur.fetchone() is None:
                    raise RuntimeError(f"{s.name}: row {k} missing")
                times.append(clock() - t0)
        cur.close()
        conn.commit()
    finally:
        conn.close()
    n = sizes.lookups
    return {"lookup_rate": n / m.wall, "lookup_p50": statistics.median(times),
            "lookup_p99": statistics.quantiles(times, n=100)[98], "lookup_cpu": m.cpu / n,
            "lookup_server_cpu": m.server / n}


def inserts(s: System, sizes: Sizes) -> dict[str, float]:
    rows = [(i, f"name-{i}", i * 7) for i in range(sizes.insert_rows)]
    conn = s.connect()
    try:
        cur = conn.cursor()
        cur.execute("TRUNCATE ins" if s.is_pg else "DELETE FROM ins")
        conn.commit()
        gc.collect()
        with Meter(s.server_cpu) as m:
            cur.executemany(s.sql("INSERT INTO ins (id, name, qty) VALUES (?, ?, ?)"), rows)
            conn.commit()
        cur.execute("SELECT count(*) FROM ins")
        got = cur.fetchone()[0]
        cur.close()
        conn.commit()
    finally:
        conn.close()
    if got != sizes.insert_rows:
        raise RuntimeError(f"{s.name}: {got} rows inserted, expected {sizes.insert_rows}")
    return {"insert_rate": sizes.insert_rows / m.wall, "insert_cpu": m.cpu / sizes.insert_rows}


def fetch(s: System, sizes: Sizes, payload: int) -> dict[str, float]:
    sql = "SELECT id, name, qty, price FROM t"
    me = psutil.Process()
    gc.collect()
    base = peak = me.memory_info().rss
    n = 0
    conn = s.connect()
    try:
        cur = conn.cursor()
        with Meter(s.server_cpu) as m:
            rows = cur.stream(sql, size=PG_CHUNK) if s.is_pg else iter(cur.execute(sql))
            for _row in rows:
                n += 1
                if n % 50_000 == 0:
                    peak = max(peak, me.memory_info().rss)
        cur.close()
        conn.commit()
    finally:
        conn.close()
    if n != sizes.rows:
        raise RuntimeError(f"{s.name}: fetched {n} rows, expected {sizes.rows}")
    return {"fetch_rate": n / m.wall, "fetch_mb": payload / m.wall / 1e6, "fetch_cpu": m.cpu / n,
            "fetch_client_mb": (peak - base) / 1e6}


def connect_once(s: System, fresh_tls: bool) -> bool:
    """Connect, log in, ``SELECT 1``, close; return whether TLS resumed a session."""
    if fresh_tls:
        clear_tls_cache()
    conn = s.connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchone()
        cur.close()
        sock = None if s.is_pg else conn._channel.sock
        return bool(getattr(sock, "session_reused", False))
    finally:
        conn.close()


def connects(s: System, sizes: Sizes, res: Results) -> dict[str, float]:
    n = sizes.connects
    out = {}
    variants = [("connect", s.name == CM_TLS)]  # Casemate TLS: full handshake here
    if s.name == CM_TLS:
        variants.append(("connect_resumed", False))
    for key, fresh in variants:
        connect_once(s, fresh)  # the resumed case then starts with a session
        reused = 0
        with Meter(s.server_cpu) as m:
            for _ in range(n):
                reused += connect_once(s, fresh)
        if key == "connect_resumed":
            res.facts["resumed"] = res.facts.get("resumed", 0) + reused
            res.facts["resumed_of"] = res.facts.get("resumed_of", 0) + n
        out[f"{key}_rate"] = n / m.wall
        out[f"{key}_cpu"] = m.cpu / n
    return out


def mix(s: System, conns: list[Any], seconds: float, rows: int,
        report: list[str]) -> dict[str, float]:
    """``len(conns)`` threads, one connection each: 80 % lookups, 20 % single-row updates.

    Failed operations are not counted; they are appended to ``report``."""
    n = len(conns)
    stop = threading.Event()
    start = threading.Barrier(n + 1)
    lats: list[list[tuple[float, float]]] = [[] for _ in range(n)]
    errors: list[str] = []
    read = s.sql("SELECT name, qty, price FROM t WHERE id = ?")
    write = s.sql("UPDATE t SET qty = qty + 1 WHERE id = ?")

    def worker(i: int) -> None:
        cur = conns[i].cursor()
        rng = random.Random(i)
        mine = lats[i]
        clock = time.perf_counter
        start.wait()
        while not stop.is_set():
            k = rng.randint(1, rows)
            t0 = clock()
            try:
                if rng.random() < 0.8:
                    cur.execute(read, (k,))
                    cur.fetchone()
                else:
                    cur.execute(write, (k,))
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(e).__name__}: {e}")
                continue
            t1 = clock()
            mine.append((t1, t1 - t0))
        cur.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    gc.collect()
    with Meter(s.server_cpu) as m:
        start.wait()
        t_start = time.perf_counter()
        time.sleep(seconds)
        t_stop = time.perf_counter()
        stop.set()
        for t in threads:
            t.join()
    done = sorted(lat for per in lats for (t1, lat) in per if t1 <= t_stop)
    ops = sum(len(per) for per in lats)
    if errors:
        print(f"    {s.name}, {n} clients: {len(errors)} errors, e.g. {errors[0]}", flush=True)
        report.append(f"{s.name}, {n} clients: {len(errors)} ({errors[0].splitlines()[0]})")
    if not done:
        raise RuntimeError(f"{s.name}: no operation completed with {n} clients")
    return {f"mix{n}_rate": len(done) / (t_stop - t_start),
            f"mix{n}_p99": done[min(len(done) - 1, int(len(done) * 0.99))],
            f"mix{n}_cpu": m.cpu / max(ops, 1), f"mix{n}_errors": float(len(errors))}


def mix_round(s: System, sizes: Sizes, report: list[str]) -> dict[str, float]:
    """Open one connection per client of the largest level, then run every level."""
    conns = []
    try:
        for _ in range(max(sizes.concurrency)):
            c = s.connect()
            c.autocommit = True
            conns.append(c)
        out: dict[str, float] = {}
        for n in sizes.concurrency:
            out.update(mix(s, conns[:n], sizes.mix_seconds, sizes.rows, report))
        return out
    finally:
        for c in conns:
            c.close()


# -- idle sessions ----------------------------------------------------------------------

def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def idle_casemate(url: str, pid: int, counts: tuple[int, ...]) -> dict[str, float]:
    """Open ``counts`` idle sessions (cumulatively) with casemate.aio; server RSS at each."""
    import casemate.aio

    proc = psutil.Process(pid)
    out: dict[str, float] = {}

    async def hold() -> None:
        base = proc.memory_info().rss
        sem = asyncio.Semaphore(32)
        conns: list[Any] = []

        async def one() -> None:
            async with sem:
                conns.append(await casemate.aio.connect(url, program="bench-idle"))
        try:
            for n in counts:
                t0 = time.perf_counter()
                await asyncio.gather(*(one() for _ in range(n - len(conns))))
                took = time.perf_counter() - t0
                await asyncio.sleep(1.0)
                rss = proc.memory_info().rss
                out[f"idle{n}_mb"] = rss
                out[f"idle{n}_kb"] = (rss - base) / n
                print(f"    {n:,} sessions open ({took:.1f} s), server RSS "
                      f"{rss / MIB:,.0f} MiB", flush=True)
        finally:
            await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    asyncio.run(hold())
    return out


def pg_memory(pg: Any) -> float:
    """Proportional set size of all of PostgreSQL's processes (shared memory counted once)."""
    total = 0
    for pid in pg.pids():
        try:
            total += psutil.Process(pid).memory_full_info().pss
        except psutil.Error:
            pass
    return float(total)


def idle_pg(pg: Any, dsn: str, n: int) -> tuple[dict[str, float], int]:
    """Open up to ``n`` idle TLS sessions with psycopg's AsyncConnection; PSS growth."""
    import psycopg

    out: dict[str, float] = {}
    opened = [0]

    async def hold() -> None:
        base = pg_memory(pg)
        sem = asyncio.Semaphore(16)
        conns: list[Any] = []
        failures: list[str] = []

        async def one() -> None:
            async with sem:
                try:
                    conns.append(await psycopg.AsyncConnection.connect(dsn))
                except psycopg.Error as e:
                    failures.append(str(e).strip())
        try:
            await asyncio.gather(*(one() for _ in range(n)))
            opened[0] = len(conns)
            if failures:
                print(f"    PostgreSQL refused {len(failures)} sessions: {failures[0]}", flush=True)
            await asyncio.sleep(1.0)
            used = pg_memory(pg)
            m = len(conns)
            out[f"idle{m}_mb"] = used
            out[f"idle{m}_kb"] = (used - base) / m
            print(f"    {m:,} PostgreSQL sessions open, PSS {used / MIB:,.0f} MiB", flush=True)
        finally:
            for c in conns:
                await c.close()
    asyncio.run(hold())
    return out, opened[0]


# -- setting up -------------------------------------------------------------------------

def create_db(root: Path, name: str, encrypted: bool) -> Path:
    from casemate.database import create_database
    from casemate.testing import ADMIN_PASSWORD

    db = root / name
    create_database(db, f"bench-{name}", ADMIN_PASSWORD)
    if encrypted:
        set_setting(db, "encrypt_client_server_connections", "true")
    set_setting(db, "max_sessions", "20000")
    set_setting(db, "max_sessions_per_address", "20000")
    set_setting(db, "busy_timeout_seconds", "30")
    return db


@contextmanager
def casemate_server(root: Path, name: str, encrypted: bool, cpu: int | None) -> Iterator[Any]:
    from casemate.testing import ServerProcess

    server = ServerProcess(create_db(root, name, encrypted), prefix=taskset_prefix(cpu))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def postgres(cpu: int | None, max_connections: int) -> Iterator[Any]:

    from casemate.pgtest import PostgresServer

    pg = PostgresServer(ssl=True, prefix=taskset_prefix(cpu),
                        max_connections=max(300, max_connections))
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()


def load_data(s: System, rows: int) -> None:
    """Table t(id, name, qty, price) with ``rows`` rows, and the empty insert target."""
    conn = s.connect()
    try:
        cur = conn.cursor()
        if s.is_pg:
            cur.execute("CREATE TABLE t (id integer PRIMARY KEY, name text, qty integer, "
                        "price double precision)")
            cur.execute("INSERT INTO t SELECT i, 'customer-' || i, i %% 100, i * 0.25 "
                        "FROM generate_series(1, %s) AS i", (rows,))
            cur.execute("CREATE TABLE ins (id integer, name text, qty integer)")
        else:
            cur.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, "
                        "price REAL)")
            cur.execute("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r "
                        "WHERE i < ?) INSERT INTO t SELECT i, 'customer-' || i, i % 100, "
                        "i * 0.25 FROM r", (rows,))
            cur.execute("CREATE TABLE ins (id INTEGER, name TEXT, qty INTEGER)")
        cur.close()
        conn.commit()
        if s.is_pg:
            conn.autocommit = True
            conn.execute("VACUUM ANALYZE t")
    finally:
        conn.close()


def payload_bytes(rows: int) -> int:
    """Bytes of the msgpack encoding of table t's rows (one neutral measure of row data)."""
    pack = msgpack.Packer().pack
    return sum(len(pack((i, f"customer-{i}", i % 100, i * 0.25))) for i in range(1, rows + 1))


def warm_up(s: System, sizes: Sizes) -> None:
    lookups(s, replace(sizes, lookups=min(200, sizes.lookups)))
    for _ in range(3):
        connect_once(s, False)


# -- the run ------------------------------------------------------------------------------

def run(sizes: Sizes, cpu: int | None, log: Callable[[str], None]) -> Results:
    import psycopg

    res = Results()
    res.facts["load"] = [os.getloadavg()[0]]
    res.facts["fd_limit"] = raise_fd_limit()
    all_cpus = os.sched_getaffinity(0)
    pin_client(cpu)
    payload = payload_bytes(sizes.rows)
    res.facts["payload"] = payload
    with tempfile.TemporaryDirectory(prefix="casemate-suite-") as tmp:
        root = Path(tmp)
        os.environ["CASEMATE_HOME"] = str(root / "client-home")
        t0 = time.perf_counter()
        with casemate_server(root, "plain", False, cpu) as plain, \
                casemate_server(root, "tls", True, cpu) as enc, \
                postgres(cpu, sizes.pg_idle + 50) as pg:
            with psycopg.connect(pg.dsn()) as c:
                res.facts["pg_version"] = c.execute("SHOW server_version").fetchone()[0]
                res.facts["pg_max_connections"] = int(
                    c.execute("SHOW max_connections").fetchone()[0])
            systems = [casemate_system(CM_PLAIN, plain), casemate_system(CM_TLS, enc),
                       pg_system(PG_DISABLE, pg, "disable"), pg_system(PG_REQUIRE, pg, "require")]
            for s in systems[:3]:  # pg-disable and pg-require share one database
                load_data(s, sizes.rows)
            for s in systems:
                warm_up(s, sizes)
            log(f"setup: {time.perf_counter() - t0:.1f} s")
            for r in range(sizes.rounds):
                for s in systems[r % 4:] + systems[:r % 4]:
                    t0 = time.perf_counter()
                    gc.collect()
                    res.add(s.name, lookups(s, sizes))
                    res.add(s.name, inserts(s, sizes))
                    res.add(s.name, fetch(s, sizes, payload))
                    res.add(s.name, connects(s, sizes, res))
                    log(f"round {r + 1}/{sizes.rounds} {s.name}: {time.perf_counter() - t0:.1f} s")
            for r in range(sizes.mix_rounds):
                for s in systems[r % 4:] + systems[:r % 4]:
                    t0 = time.perf_counter()
                    res.add(s.name, mix_round(s, sizes, res.facts.setdefault("mix_errors", [])))
                    log(f"concurrency round {r + 1}/{sizes.mix_rounds} {s.name}: "
                        f"{time.perf_counter() - t0:.1f} s")
            # Idle sessions: memory, not CPU, is measured; the client may use every CPU
            # (the servers stay pinned), which makes opening 10,000 sessions faster.
            os.sched_setaffinity(0, all_cpus)
            log(f"idle sessions: {sizes.pg_idle:,} PostgreSQL (sslmode=require)")
            out, opened = idle_pg(pg, pg.dsn("require"), sizes.pg_idle)
            res.add(PG_REQUIRE, out)
            res.facts["pg_idle_opened"] = opened
        # Fresh Casemate servers: earlier workloads leave freed memory behind that new
        # sessions would reuse without growing RSS, hiding their cost.
        with casemate_server(root, "idle-tls", True, cpu) as enc:
            log(f"idle sessions: {', '.join(f'{n:,}' for n in sizes.idle)} encrypted Casemate")
            res.add(CM_TLS, idle_casemate(enc.url, enc.pid, sizes.idle))
        with casemate_server(root, "idle-plain", False, cpu) as plain:
            log(f"idle sessions: {sizes.idle[0]:,} plain Casemate")
            res.add(CM_PLAIN, idle_casemate(plain.url, plain.pid, sizes.idle[:1]))
    res.facts["load"].append(os.getloadavg()[0])
    return res


# -- report ---------------------------------------------------------------------------------

def fmt_ratio(r: float | None) -> str:
    return "–" if r is None else f"{r:.2f}x"


def table(res: Results, ms: list[Metric]) -> list[str]:
    head = ["workload", "metric", *(LABELS[s] for s in SYSTEMS), *(p[2] for p in PAIRS)]
    lines = ["| " + " | ".join(head) + " |",
             "| --- | --- |" + " ---: |" * (len(SYSTEMS) + len(PAIRS))]
    for m in ms:
        cells = []
        for s in SYSTEMS:
            v = res.samples.get((s, m.sample(s)))
            cells.append(summary(v, m.scale, m.fmt) if v else "–")
        if all(c == "–" for c in cells):
            continue
        ratios = [fmt_ratio(res.ratio(m, a, b)) for a, b, _ in PAIRS]
        lines.append(f"| {m.workload} | {m.label} | " + " | ".join(cells + ratios) + " |")
    return lines


def ratio_lines(res: Results, ms: list[Metric]) -> list[str]:
    """One ``ratio KEY A/B: R.RRx`` line per metric and pair measured on both sides."""
    out = []
    for m in ms:
        for a, b, _ in PAIRS:
            r = res.ratio(m, a, b)
            if r is not None:
                out.append(f"ratio {m.key} {a}/{b}: {r:.2f}x")
    return out


@dataclass(frozen=True)
class Target:
    text: str
    key: str
    a: str
    b: str
    goal: float
    cpu_key: str | None = None  # CPU per operation, for the same comparison by CPU cost


TARGETS = (
    Target("encrypted vs plain Casemate, sequential round trips", "lookup_rate", CM_TLS,
           CM_PLAIN, 0.9, "lookup_cpu"),
    Target("encrypted vs plain Casemate, bulk fetch", "fetch_rate", CM_TLS, CM_PLAIN, 0.9,
           "fetch_cpu"),
    Target("encrypted Casemate vs PostgreSQL require, sequential lookups", "lookup_rate", CM_TLS,
           PG_REQUIRE, 1.0, "lookup_cpu"),
    Target("encrypted Casemate vs PostgreSQL require, executemany", "insert_rate", CM_TLS,
           PG_REQUIRE, 1.0, "insert_cpu"),
    Target("encrypted Casemate vs PostgreSQL require, bulk fetch", "fetch_rate", CM_TLS,
           PG_REQUIRE, 1.0, "fetch_cpu"),
    Target("encrypted Casemate (full handshake) vs PostgreSQL require, connect + login",
           "connect_rate", CM_TLS, PG_REQUIRE, 1.0, "connect_cpu"),
    Target("encrypted Casemate vs PostgreSQL require, 32 concurrent clients", "mix32_rate",
           CM_TLS, PG_REQUIRE, 0.5, "mix32_cpu"),
    Target("encrypted Casemate vs PostgreSQL require, 128 concurrent clients", "mix128_rate",
           CM_TLS, PG_REQUIRE, 0.8, "mix128_cpu"),
)


def verdict(r: float, goal: float) -> str:
    if r >= goal:
        return "met"
    return f"MISSED by {(goal - r) / goal:.0%} (needs {goal / r:.2f}x more)"


def target_lines(res: Results) -> list[str]:
    out = []
    for t in TARGETS:
        x, y = res.median(t.a, t.key), res.median(t.b, t.key)
        if x is None or y is None:
            continue
        r = x / y
        by_cpu = ""
        if t.cpu_key:
            cx, cy = res.median(t.a, t.cpu_key), res.median(t.b, t.cpu_key)
            if cx and cy:
                by_cpu = f"; by CPU cost per operation {cy / cx:.2f}x"
        out.append(f"- {t.text}: {r:.2f}x (target ≥ {t.goal:g}x): {verdict(r, t.goal)}{by_cpu}")
    ours, theirs = res.median(CM_TLS, "mix128_p99"), res.median(PG_REQUIRE, "mix128_p99")
    if ours and theirs:
        state = "met" if ours <= theirs else f"MISSED by {(ours - theirs) / theirs:.0%}"
        out.append(f"- encrypted Casemate vs PostgreSQL require, 128 concurrent clients, p99 "
                   f"latency: {ours * 1e3:,.1f} ms against {theirs * 1e3:,.1f} ms "
                   f"(target ≤ PostgreSQL's): {state}")
    plain = res.median(CM_PLAIN, "connect_rate")
    resumed = res.median(CM_TLS, "connect_resumed_rate")
    if plain and resumed:
        r = plain / resumed  # time per connect, resumed / plain
        state = "met" if r <= 1.5 else f"MISSED by {(r - 1.5) / 1.5:.0%}"
        cp, cr = res.median(CM_PLAIN, "connect_cpu"), res.median(CM_TLS, "connect_resumed_cpu")
        by_cpu = f"; by CPU cost {cr / cp:.2f}x" if cp and cr else ""
        out.append(f"- encrypted Casemate, resumed-session connect time vs plain connect: "
                   f"{r:.2f}x (target ≤ 1.5x): {state}{by_cpu}")
    big = max((k for (s, k) in res.samples if s == CM_TLS and k.startswith("idle")
               and k.endswith("_mb")), key=lambda k: int(k[4:-3]), default=None)
    if big is not None:
        n = int(big[4:-3])
        mib = (res.median(CM_TLS, big) or 0) / MIB
        goal = "target ≤ 1,024 MiB for 10,000" if n == 10_000 else "target: 10,000 within 1 GiB"
        ok = "met" if mib <= 1024 else f"MISSED by {(mib - 1024) / 1024:.0%}"
        out.append(f"- {n:,} idle encrypted Casemate sessions: {mib:,.0f} MiB server RSS "
                   f"({goal}): {ok if n == 10_000 else 'not measured at 10,000 (quick)'}")
    return out


def facts(res: Results, sizes: Sizes, pinning: str, quick: bool) -> list[str]:
    import psycopg

    f = res.facts
    idle = ", ".join(f"{n:,}" for n in sizes.idle)
    return [
        f"- mode: {'quick' if quick else 'full'}; {sizes.rounds} interleaved round(s) of the "
        f"single-connection workloads ({sizes.lookups:,} lookups, {sizes.insert_rows:,}-row "
        f"executemany, fetch of {sizes.rows:,} rows = {f['payload'] / 1e6:.1f} MB of row data, "
        f"{sizes.connects} connects); {sizes.mix_rounds} round(s) of the concurrent mix "
        f"({', '.join(map(str, sizes.concurrency))} clients, {sizes.mix_seconds:g} s each); "
        f"idle sessions: {idle} encrypted Casemate, {sizes.idle[0]:,} plain Casemate, "
        f"{f.get('pg_idle_opened', 0):,} PostgreSQL (max_connections raised to "
        f"{f.get('pg_max_connections', '?')})",
        f"- CPU pinning: {pinning} (idle-session phase: client unpinned)",
        f"- machine: {os.cpu_count()} CPUs, {cpu_model()}, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB; Linux {platform.release()}; "
        f"Python {platform.python_version()}; {ssl.OPENSSL_VERSION}",
        f"- PostgreSQL {f.get('pg_version', '?')}, psycopg {psycopg.__version__} "
        f"(libpq {psycopg.pq.version()}); fetch with cursor.stream(size={PG_CHUNK}), "
        "executemany in psycopg's pipeline mode",
        f"- load average (1 min) at start / end: {f['load'][0]:.2f} / {f['load'][-1]:.2f}",
        f"- resumed TLS sessions in the resumed-session connects: {f.get('resumed', 0)} of "
        f"{f.get('resumed_of', 0)}",
        "- errors in the concurrent mix (each failed operation is not counted): "
        + ("; ".join(f.get("mix_errors", [])) or "none"),
    ]


def plot(res: Results, sizes: Sizes, path: Path) -> bool:
    """Throughput relative to PostgreSQL require, cost of encryption, idle memory."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rates = [("lookups", "lookup_rate"), ("executemany", "insert_rate"),
             ("fetch", "fetch_rate"), ("connect", "connect_rate")]
    rates += [(f"{n} client{'s' if n > 1 else ''}", f"mix{n}_rate") for n in sizes.concurrency]
    colors = {CM_PLAIN: "#9ecae1", CM_TLS: "#08519c", PG_DISABLE: "#fdae6b",
              PG_REQUIRE: "#d94801"}
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 11))
    width = 0.2
    xs = range(len(rates))
    for i, s in enumerate(SYSTEMS):
        vals = []
        for _, key in rates:
            base, v = res.median(PG_REQUIRE, key), res.median(s, key)
            vals.append(v / base if v and base else 0)
        ax1.bar([x + (i - 1.5) * width for x in xs], vals, width, label=LABELS[s],
                color=colors[s])
    resumed, base = res.median(CM_TLS, "connect_resumed_rate"), res.median(PG_REQUIRE,
                                                                              "connect_rate")
    if resumed and base:
        ax1.plot([3 - 0.5 * width], [resumed / base], "k_", markersize=14,
                 label="Casemate TLS, resumed session")
    ax1.axhline(1.0, color="grey", linewidth=0.8)
    ax1.set_yscale("log")
    ax1.set_xticks(list(xs), [r[0] for r in rates], fontsize=8)
    ax1.set_ylabel("throughput / PostgreSQL require")
    ax1.set_title("Throughput relative to PostgreSQL sslmode=require (log scale; higher is "
                  "better)", fontsize=10)
    ax1.legend(fontsize=7, ncol=3)

    for i, (a, b, label, color) in enumerate(((CM_TLS, CM_PLAIN, "Casemate TLS / plain",
                                               colors[CM_TLS]),
                                              (PG_REQUIRE, PG_DISABLE, "PostgreSQL require / "
                                               "disable", colors[PG_REQUIRE]))):
        vals = []
        for _, key in rates:
            x, y = res.median(a, key), res.median(b, key)
            vals.append(x / y if x and y else 0)
        ax2.bar([x + (i - 0.5) * 0.35 for x in xs], vals, 0.35, label=label, color=color)
    ax2.axhline(1.0, color="grey", linewidth=0.8)
    ax2.axhline(0.9, color="grey", linewidth=0.8, linestyle=":")
    ax2.set_xticks(list(xs), [r[0] for r in rates], fontsize=8)
    ax2.set_ylabel("encrypted / plain throughput")
    ax2.set_title("What encryption costs, each system against itself (dotted: 0.9x)",
                  fontsize=10)
    ax2.legend(fontsize=7)

    bars = []
    for s, n in [(CM_PLAIN, sizes.idle[0]), *((CM_TLS, n) for n in sizes.idle),
                 (PG_REQUIRE, res.facts.get("pg_idle_opened", 0))]:
        v = res.median(s, f"idle{n}_kb")
        if v is not None:
            bars.append((f"{LABELS[s]}\n{n:,} sessions", v / 1024, colors[s]))
    ax3.bar([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    for x, b in enumerate(bars):
        ax3.annotate(f"{b[1]:,.1f}", (x, b[1]), ha="center", va="bottom", fontsize=8)
    ax3.set_yscale("log")
    ax3.set_ylabel("KiB per idle session")
    ax3.set_title("Server memory per idle session (log scale; lower is better)", fontsize=10)
    ax3.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_docs(lines: list[str], path: Path) -> None:
    """Replace the block between the suite markers in ``path`` (append it if none)."""
    write_marked(path, DOC_START, DOC_END, lines, append=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.suite",
                                description="Casemate plain/encrypted against PostgreSQL.")
    p.add_argument("--quick", action="store_true", help="small sizes, one round (the tests)")
    p.add_argument("--rounds", type=int, help="interleaved rounds of the single-connection "
                   "workloads")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not pin the servers and the client to one CPU")
    p.add_argument("--write-docs", action="store_true",
                   help="write the results into DOCS/benchmarks.md and DOCS/benchmarks.png")
    p.add_argument("--docs-dir", type=Path, default=DOCS_DIR, help=f"default {DOCS_DIR}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = replace(sizes, rounds=args.rounds)
    cpu = choose_cpu(args.pin)
    pinning = pin_note(cpu, args.pin)
    started = time.time()
    print(f"Casemate benchmark suite ({'quick' if args.quick else 'full'}); CPU pinning: "
          f"{pinning}", flush=True)
    res = run(sizes, cpu, lambda s: print(f"  {s}", flush=True))
    ms = metrics(sizes, {int(k[4:-3]) for (_s, k) in res.samples if re.fullmatch(r"idle\d+_mb", k)})
    took = time.time() - started
    stamp = (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} with "
             f"`python -m bench.suite{' --quick' if args.quick else ''}` ({took / 60:.1f} min):")
    lines = [stamp, "", *facts(res, sizes, pinning, args.quick), "", *table(res, ms), "",
             "Targets (medians; wall-clock throughput, and the same comparison by CPU cost):",
             "", *target_lines(res)]
    print("\n".join(["", *lines, "", *ratio_lines(res, ms)]))
    if args.write_docs:
        args.docs_dir.mkdir(parents=True, exist_ok=True)
        png = args.docs_dir / "benchmarks.png"
        if plot(res, sizes, png):
            lines += ["", "![Casemate and PostgreSQL: throughput, cost of encryption, idle "
                      "memory](benchmarks.png)"]
            print(f"wrote {png}")
        else:
            print("matplotlib is not installed: no plot (pip install -e '.[bench]')")
        write_docs(lines, args.docs_dir / "benchmarks.md")
        print(f"wrote {args.docs_dir / 'benchmarks.md'}")
    print(f"done in {took:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
