"""Casemate plain and encrypted against PostgreSQL (sslmode disable and require), one run.

    python -m bench.suite                 # full run (about 5-8 minutes), pinned to CPU 0
    python -m bench.suite --quick         # small sizes: what the test suite runs
    python -m bench.suite --write-docs    # also rewrite the table in docs/benchmarks.md
                                          # and the plot docs/benchmarks.png

Every system gets the same data and the same client process; servers and
client are pinned to CPU 0 by default (``--no-pin``), so the figures compare
CPU cost, not scheduling luck. The timed workloads run in interleaved rounds
(the order of the four systems rotates each round); the table reports the
median of the rounds and the spread (min-max), and every figure as a ratio
against its counterpart measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

import casemate
import casemate.aio
from casemate.client import blocking
from casemate.database import create_database
from casemate.pgtest import PostgresServer
from casemate.testing import ADMIN_PASSWORD, ServerProcess

SYSTEMS = ("casemate-plain", "casemate-tls", "pg-disable", "pg-require")
DOCS = Path(__file__).resolve().parent.parent / "docs"


@dataclass
class Sizes:
    rows: int = 10_000          # rows in the lookup table
    lookups: int = 2_000
    insert_rows: int = 100_000
    fetch_rows: int = 1_000_000
    connects: int = 40
    concurrency: tuple[int, ...] = (1, 8, 32, 128)
    mix_seconds: float = 2.0
    idle: tuple[int, ...] = (1_000, 10_000)
    pg_idle: int = 250          # PostgresServer allows 300 connections
    rounds: int = 3


QUICK = Sizes(rows=1_000, lookups=200, insert_rows=2_000, fetch_rows=20_000, connects=5,
              concurrency=(1, 8), mix_seconds=0.5, idle=(200,), pg_idle=50, rounds=1)


@dataclass
class Results:
    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)

    def add(self, workload: str, system: str, value: float, unit: str) -> None:
        self.values.setdefault((workload, system), []).append(value)
        self.units[workload] = unit

    def median(self, workload: str, system: str) -> float | None:
        v = self.values.get((workload, system))
        return statistics.median(v) if v else None

    def spread(self, workload: str, system: str) -> str:
        v = self.values.get((workload, system), [])
        return f"{min(v):,.0f}-{max(v):,.0f}" if len(v) > 1 else "-"


# -- clients: one small adapter per system -------------------------------------------

class Client:
    """What a workload needs from a database: connect, and a DB-API connection."""

    def __init__(self, name: str, connect: Callable[[], Any], param: str) -> None:
        self.name = name
        self.connect = connect
        self.param = param  # "?" or "%s"

    def sql(self, text: str) -> str:
        return text.replace("?", self.param)


def casemate_client(name: str, url: str) -> Client:
    return Client(name, lambda: casemate.connect(url, program="bench"), "?")


def pg_client(name: str, dsn: str) -> Client:
    import psycopg
    return Client(name, lambda: psycopg.connect(dsn), "%s")


# -- workloads ------------------------------------------------------------------------

def setup_data(c: Client, sizes: Sizes) -> None:
    conn = c.connect()
    cur = conn.cursor()
    cur.execute("DROP TABLE IF EXISTS kv")
    cur.execute("DROP TABLE IF EXISTS ins")
    cur.execute("CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
    cur.execute("CREATE TABLE ins (id INTEGER, name TEXT, amount INTEGER)")
    cur.executemany(c.sql("INSERT INTO kv (id, v, n) VALUES (?, ?, ?)"),
                    [(i, f"value-{i}", i % 97) for i in range(sizes.rows)])
    conn.commit()
    conn.close()


def lookups(c: Client, sizes: Sizes, res: Results) -> None:
    conn = c.connect()
    cur = conn.cursor()
    rng = random.Random(1)
    lat = []
    t0 = time.perf_counter()
    for _ in range(sizes.lookups):
        k = rng.randrange(sizes.rows)
        t = time.perf_counter()
        cur.execute(c.sql("SELECT v FROM kv WHERE id = ?"), (k,))
        cur.fetchone()
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    conn.commit()
    conn.close()
    lat.sort()
    res.add("lookups/s", c.name, sizes.lookups / total, "round trips/s")
    res.add("lookup p50 us", c.name, lat[len(lat) // 2] * 1e6, "us")
    res.add("lookup p99 us", c.name, lat[int(len(lat) * 0.99)] * 1e6, "us")


def inserts(c: Client, sizes: Sizes, res: Results) -> None:
    conn = c.connect()
    cur = conn.cursor()
    cur.execute("DELETE FROM ins")
    conn.commit()
    rows = [(i, f"name-{i}", i * 7) for i in range(sizes.insert_rows)]
    t0 = time.perf_counter()
    cur.executemany(c.sql("INSERT INTO ins (id, name, amount) VALUES (?, ?, ?)"), rows)
    conn.commit()
    res.add("executemany rows/s", c.name, sizes.insert_rows / (time.perf_counter() - t0),
            "rows/s")
    conn.close()


FETCH_SQL = ("WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < {n}) "
             "SELECT x, 'row-' || x, x * 3 FROM s")


def fetch(c: Client, sizes: Sizes, res: Results) -> None:
    conn = c.connect()
    sql = FETCH_SQL.format(n=sizes.fetch_rows)
    me = psutil.Process()
    base = me.memory_info().rss
    t0 = time.perf_counter()
    if c.param == "%s":  # psycopg: a server-side cursor, so the client memory stays bounded
        cur = conn.cursor(name="bench_fetch")
        cur.itersize = 2000
        cur.execute(sql)
    else:
        cur = conn.cursor()
        cur.execute(sql)
    n = nbytes = 0
    peak = 0
    for row in cur:
        n += 1
        nbytes += 16 + len(row[1])
        if n % 100_000 == 0:
            peak = max(peak, me.memory_info().rss - base)
    took = time.perf_counter() - t0
    assert n == sizes.fetch_rows
    cur.close()
    conn.commit()
    conn.close()
    res.add("fetch rows/s", c.name, n / took, "rows/s")
    res.add("fetch MB/s", c.name, nbytes / took / 1e6, "MB/s")
    res.add("fetch client MB", c.name, peak / 1e6, "MB growth")


def connects(c: Client, sizes: Sizes, res: Results, label: str = "",
             fresh_tls: bool = False) -> None:
    t0 = time.perf_counter()
    for _ in range(sizes.connects):
        if fresh_tls:
            blocking._tls_cache.clear()
        conn = c.connect()
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchone()
        conn.close()
    res.add("connect+query/s", label or c.name, sizes.connects / (time.perf_counter() - t0),
            "per second")


def mix(c: Client, clients: int, seconds: float, sizes: Sizes, res: Results) -> None:
    """``clients`` threads, each with its own connection: 80% reads, 20% updates."""
    stop = threading.Event()
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)

    def worker(seed: int) -> None:
        conn = c.connect()
        if hasattr(conn, "autocommit"):
            conn.autocommit = True
        cur = conn.cursor()
        rng = random.Random(seed)
        mine = []
        ready.wait()
        while not stop.is_set():
            k = rng.randrange(sizes.rows)
            t = time.perf_counter()
            try:
                if rng.random() < 0.8:
                    cur.execute(c.sql("SELECT v FROM kv WHERE id = ?"), (k,))
                    cur.fetchone()
                else:
                    cur.execute(c.sql("UPDATE kv SET n = n + 1 WHERE id = ?"), (k,))
                mine.append(time.perf_counter() - t)
            except Exception:  # noqa: BLE001 - counted, reported
                errors[0] += 1
        conn.close()
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    lat.sort()
    res.add(f"mix {clients} clients ops/s", c.name, len(lat) / seconds, "ops/s")
    res.add(f"mix {clients} clients p99 ms", c.name, lat[int(len(lat) * 0.99)] * 1e3 if lat
            else 0.0, "ms")
    if errors[0]:
        res.add(f"mix {clients} clients errors", c.name, errors[0], "errors")


def idle_casemate(url: str, server_pid: int, n: int, res: Results) -> None:
    proc = psutil.Process(server_pid)

    async def hold() -> None:
        base = proc.memory_info().rss
        sem = asyncio.Semaphore(64)
        conns: list[Any] = []

        async def one() -> None:
            async with sem:
                conns.append(await casemate.aio.connect(url, program="bench-idle"))
        await asyncio.gather(*(one() for _ in range(n)))
        await asyncio.sleep(1)
        rss = proc.memory_info().rss
        res.add(f"idle {n} TLS sessions server MB", "casemate-tls", rss / 1e6, "MB")
        res.add(f"idle {n} TLS sessions KB/session", "casemate-tls", (rss - base) / n / 1e3,
                "KB")
        for c in conns:
            await c.close()
    asyncio.run(hold())


def idle_pg(pg: PostgresServer, dsn: str, n: int, res: Results) -> None:
    import psycopg

    def total() -> float:
        rss = 0
        for pid in pg.pids():
            try:
                rss += psutil.Process(pid).memory_full_info().uss
            except psutil.Error:
                pass
        return rss
    base = total()
    conns = [psycopg.connect(dsn) for _ in range(n)]
    time.sleep(1)
    used = total()
    res.add(f"idle {n} TLS sessions server MB", "pg-require", used / 1e6, "MB (USS)")
    res.add(f"idle {n} TLS sessions KB/session", "pg-require", (used - base) / n / 1e3, "KB")
    for c in conns:
        c.close()


# -- orchestration ----------------------------------------------------------------------

def _set(db: Path, key: str, value: str) -> None:
    p = db / "casemate.toml"
    p.write_text(re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", p.read_text(), count=1))


def start_casemate(tmp: Path, encrypted: bool, pin: bool) -> ServerProcess:
    db = tmp / ("db-tls" if encrypted else "db-plain")
    create_database(db, "bench", ADMIN_PASSWORD)
    if encrypted:
        _set(db, "encrypt_client_server_connections", "true")
    _set(db, "max_sessions", "20000")
    _set(db, "max_sessions_per_address", "20000")
    _set(db, "busy_timeout_seconds", "30")
    return ServerProcess(db, prefix=("taskset", "-c", "0") if pin else ()).start()


def run(sizes: Sizes, pin: bool) -> tuple[Results, dict[str, str]]:
    res = Results()
    tmp = Path(tempfile.mkdtemp(prefix="casemate-suite-"))
    os.environ["CASEMATE_HOME"] = str(tmp / "home")
    prefix = ("taskset", "-c", "0") if pin else ()
    servers = [start_casemate(tmp, False, pin), start_casemate(tmp, True, pin)]
    pg = PostgresServer(ssl=True, prefix=prefix).start()
    if pin:
        os.sched_setaffinity(0, {0})
    info = {"pinned": "server(s) and client on CPU 0" if pin else "not pinned"}
    try:
        clients = [casemate_client("casemate-plain", servers[0].url),
                   casemate_client("casemate-tls", servers[1].url),
                   pg_client("pg-disable", pg.dsn("disable")),
                   pg_client("pg-require", pg.dsn("require"))]
        for c in clients[:3]:  # pg-disable and pg-require share one database
            setup_data(c, sizes)
        for rnd in range(sizes.rounds):
            order = clients[rnd % 4:] + clients[:rnd % 4]
            for c in order:
                print(f"  round {rnd + 1}/{sizes.rounds}: {c.name}", flush=True)
                lookups(c, sizes, res)
                inserts(c, sizes, res)
                fetch(c, sizes, res)
                if c.name == "casemate-tls":
                    connects(c, sizes, res, "casemate-tls full", fresh_tls=True)
                    connects(c, sizes, res, "casemate-tls resumed")
                else:
                    connects(c, sizes, res)
        for n in sizes.concurrency:
            for c in clients:
                print(f"  mix {n} clients: {c.name}", flush=True)
                mix(c, n, sizes.mix_seconds, sizes, res)
        for n in sizes.idle:
            print(f"  idle {n} encrypted Casemate sessions", flush=True)
            idle_casemate(servers[1].url, servers[1].pid, n, res)
        print(f"  idle {sizes.pg_idle} PostgreSQL sessions (sslmode=require)", flush=True)
        idle_pg(pg, pg.dsn("require"), sizes.pg_idle, res)
    finally:
        for s in servers:
            s.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return res, info


# -- report -----------------------------------------------------------------------------

HIGHER_IS_BETTER = ("/s",)


def _ratio(res: Results, workload: str, a: str, b: str) -> float | None:
    x, y = res.median(workload, a), res.median(workload, b)
    if x is None or y is None or y == 0:
        return None
    return x / y


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}x"


def table(res: Results) -> list[str]:
    lines = ["| workload | Casemate plain | Casemate TLS | PostgreSQL disable | PostgreSQL "
             "require | TLS / plain | TLS / PG require |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    workloads = list(dict.fromkeys(w for w, _ in res.values))
    for w in workloads:
        cells = []
        for s in SYSTEMS:
            m = res.median(w, s)
            cells.append("-" if m is None else f"{m:,.1f} ({res.spread(w, s)})")
        tls = "casemate-tls"
        if w == "connect+query/s":
            full = res.median(w, "casemate-tls full")
            resumed = res.median(w, "casemate-tls resumed")
            cells[1] = (f"full {full:,.1f}, resumed {resumed:,.1f}" if full and resumed
                        else "-")
            tls = "casemate-tls resumed"
        lines.append(f"| {w} ({res.units[w]}) | " + " | ".join(cells) + " | "
                     f"{_fmt(_ratio(res, w, tls, 'casemate-plain'))} | "
                     f"{_fmt(_ratio(res, w, tls, 'pg-require'))} |")
    return lines


TARGETS = [
    ("lookups/s", "casemate-tls", "casemate-plain", 0.9, "encrypted vs plain round trips"),
    ("fetch rows/s", "casemate-tls", "casemate-plain", 0.8, "encrypted vs plain bulk fetch"),
    ("lookups/s", "casemate-tls", "pg-require", 1.0, "vs PostgreSQL require: lookups"),
    ("executemany rows/s", "casemate-tls", "pg-require", 1.0, "vs PostgreSQL: executemany"),
    ("fetch rows/s", "casemate-tls", "pg-require", 1.0, "vs PostgreSQL: bulk fetch"),
    ("connect+query/s", "casemate-tls full", "pg-require", 1.0,
     "vs PostgreSQL: connect+login (full handshake)"),
    ("mix 32 clients ops/s", "casemate-tls", "pg-require", 0.5, "vs PostgreSQL: 32 clients"),
]


def targets(res: Results) -> list[str]:
    out = []
    for w, a, b, goal, text in TARGETS:
        r = _ratio(res, w, a, b)
        if r is None:
            continue
        out.append(f"- {text}: {r:.2f}x (target >= {goal}x): "
                   f"{'met' if r >= goal else f'MISSED by {(goal - r) / goal:.0%}'}")
    full = res.median("connect+query/s", "casemate-plain")
    resumed = res.median("connect+query/s", "casemate-tls resumed")
    if full and resumed:
        r = full / resumed
        out.append(f"- resumed-handshake connect time vs plain connect: {r:.2f}x "
                   f"(target <= 1.5x): {'met' if r <= 1.5 else 'MISSED'}")
    for key, vals in res.values.items():
        if key[0].startswith("idle 10000") and key[0].endswith("server MB"):
            mb = statistics.median(vals)
            out.append(f"- 10,000 idle encrypted sessions: {mb:,.0f} MB server RSS (target "
                       f"<= 1024 MB): {'met' if mb <= 1024 else 'MISSED'}")
    return out


def plot(res: Results, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = ["lookups/s", "executemany rows/s", "fetch rows/s", "connect+query/s",
             "mix 1 clients ops/s", "mix 8 clients ops/s", "mix 32 clients ops/s",
             "mix 128 clients ops/s"]
    names = [n for n in names if (n, "pg-require") in res.values]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.2
    for i, s in enumerate(SYSTEMS):
        vals = []
        for n in names:
            sys_name = "casemate-tls full" if (s == "casemate-tls" and
                                               n == "connect+query/s") else s
            base = res.median(n, "pg-require") or 1
            vals.append((res.median(n, sys_name) or 0) / base)
        ax.bar([x + i * width for x in range(len(names))], vals, width, label=s)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks([x + 1.5 * width for x in range(len(names))])
    ax.set_xticklabels([n.replace(" ", "\n", 1) for n in names], fontsize=8)
    ax.set_ylabel("throughput relative to PostgreSQL sslmode=require")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def write_docs(lines: list[str]) -> None:
    doc = DOCS / "benchmarks.md"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    block = "<!-- suite:start -->\n" + "\n".join(lines) + "\n<!-- suite:end -->"
    if "<!-- suite:start -->" in text:
        text = re.sub(r"<!-- suite:start -->.*?<!-- suite:end -->", lambda _m: block, text,
                      flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


def machine() -> str:
    import platform
    import ssl
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psycopg
    return (f"{os.cpu_count()} vCPUs ({cpu}), Python {platform.python_version()}, "
            f"{ssl.OPENSSL_VERSION}, psycopg {psycopg.__version__}")


def main(argv: list[str] | None = None) -> Results:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    if args.rounds:
        sizes.rounds = args.rounds
    pin = not args.no_pin and shutil.which("taskset") is not None
    started = time.time()
    print(f"Casemate benchmark suite ({'quick' if args.quick else 'full'}), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    res, info = run(sizes, pin)
    lines = [f"Run {time.strftime('%Y-%m-%d %H:%M', time.gmtime(started))} UTC, "
             f"{'quick' if args.quick else 'full'} sizes, {sizes.rounds} round(s), "
             f"{info['pinned']}; medians (spread min-max).", "", f"Machine: {machine()}.", "",
             *table(res), "",
             "Targets:", "", *targets(res)]
    print("\n".join(lines))
    if args.write_docs:
        if plot(res, DOCS / "benchmarks.png"):
            lines += ["", "![Throughput relative to PostgreSQL sslmode=require]"
                          "(benchmarks.png)"]
        write_docs(lines)
    return res


if __name__ == "__main__":
    main()
