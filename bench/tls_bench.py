"""Plain versus encrypted: what switching on TLS costs a Casemate client, measured.

Run from the repository root::

    python -m bench.tls_bench [--quick] [--rounds N] [--no-pin] [--write-docs]

It creates two temporary databases with the same table (one plain, one with
``encrypt_client_server_connections = true``), starts a real ``casemate serve``
process for each, and measures, in the same run, for both modes:

1. sequential primary-key lookups on one connection (round trips/s, p50/p99 latency);
2. a bulk fetch of N rows of four columns (rows/s, MB/s of msgpack row payload);
3. new connection + SCRAM login + first query per second; for encrypted, both with
   a full TLS handshake (client TLS cache cleared) and with a resumed TLS session.

Beside wall-clock rates it records the CPU time that each workload cost the
client and the server together (``/proc/PID/stat`` for the server), which a
busy machine disturbs much less than it disturbs wall-clock rates.

Measurements are interleaved: every round runs each workload on both servers,
in the order plain, encrypted in even rounds and encrypted, plain in odd rounds
(so slow drift of the machine falls on both modes alike).  The table reports the
median over rounds, the spread (min-max) and the ratio encrypted/plain of the
medians.  By default the two servers and this client are pinned to one CPU, so the
comparison is one of CPU cost, not of how many cores are idle.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from ._common import (
    Meter,
    choose_cpu,
    cpu_model,
    interleaved_args,
    pin_client,
    pin_note,
    process_cpu,
    set_setting,
    summary,
    taskset_prefix,
    write_marked,
)

MODES = ("plain", "encrypted")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
DOC_START = "<!-- tls-bench:start -->"
DOC_END = "<!-- tls-bench:end -->"
Row = tuple[object, ...]


@dataclass(frozen=True)
class Sizes:
    """How much work one round does."""

    rounds: int
    lookups: int
    bulk_rows: int
    connects: int


FULL = Sizes(rounds=9, lookups=3000, bulk_rows=1_000_000, connects=100)
QUICK = Sizes(rounds=2, lookups=200, bulk_rows=20_000, connects=10)


@dataclass(frozen=True)
class Metric:
    """One line of the result table: which samples to compare, how to show them, the aim."""

    workload: str
    label: str
    plain: str  # sample name for the plain server
    encrypted: str  # sample name for the encrypted server
    scale: float = 1.0
    fmt: str = "{:,.0f}"
    aim: float | None = None  # the ratio encrypted/plain we aim for
    higher_is_better: bool = True

    @property
    def key(self) -> str:
        return self.encrypted


LOOKUP, BULK, CONNECT = "PK lookups, one connection", "bulk fetch", "connect + login + query"
METRICS = (
    Metric(LOOKUP, "round trips/s", "lookup_rate", "lookup_rate", aim=0.9),
    Metric(LOOKUP, "p50 latency (µs)", "lookup_p50", "lookup_p50", 1e6, higher_is_better=False),
    Metric(LOOKUP, "p99 latency (µs)", "lookup_p99", "lookup_p99", 1e6, higher_is_better=False),
    Metric(LOOKUP, "CPU µs per round trip (client + server)", "lookup_cpu", "lookup_cpu", 1e6,
           aim=1 / 0.9, higher_is_better=False),
    Metric(BULK, "rows/s", "bulk_rows", "bulk_rows", aim=0.8),
    Metric(BULK, "MB/s (row payload)", "bulk_mb", "bulk_mb", fmt="{:,.1f}"),
    Metric(BULK, "CPU ns per row (client + server)", "bulk_cpu", "bulk_cpu", 1e9,
           aim=1 / 0.8, higher_is_better=False),
    Metric(CONNECT, "per second, full TLS handshake", "connect_rate", "connect_full_rate",
           fmt="{:,.1f}"),
    Metric(CONNECT, "CPU ms per connect, full TLS handshake", "connect_cpu", "connect_full_cpu",
           1e3, "{:,.2f}", higher_is_better=False),
    Metric(CONNECT, "per second, resumed TLS session", "connect_rate", "connect_resumed_rate",
           fmt="{:,.1f}"),
    Metric(CONNECT, "CPU ms per connect, resumed TLS session", "connect_cpu",
           "connect_resumed_cpu", 1e3, "{:,.2f}", higher_is_better=False),
)


@dataclass(frozen=True)
class Target:
    """A running server: where to connect, and its process id for CPU accounting."""

    url: str
    pid: int

    def cpu(self) -> float:
        """The server's CPU seconds so far (all its threads)."""
        return process_cpu(self.pid)


@dataclass
class Results:
    """Samples per (mode, sample name), one per round, plus facts about the run."""

    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    resumed: list[bool] = field(default_factory=list)
    payload_bytes: int = 0
    load: list[float] = field(default_factory=list)

    def add(self, mode: str, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.samples.setdefault((mode, name), []).append(value)


# -- setup -------------------------------------------------------------------------------

def create_databases(root: Path) -> dict[str, Path]:
    """A plain and an encrypted database folder under ``root``."""
    from casemate.database import create_database
    from casemate.testing import ADMIN_PASSWORD

    dbs = {}
    for mode in MODES:
        path = root / mode
        create_database(path, f"bench-{mode}", ADMIN_PASSWORD)
        if mode == "encrypted":
            set_setting(path, "encrypt_client_server_connections", "true")
        dbs[mode] = path
    return dbs


@contextmanager
def running_servers(dbs: dict[str, Path], cpu: int | None) -> Iterator[dict[str, Target]]:
    """Start one ``casemate serve`` per database; SIGTERM and wait for them at the end."""
    from casemate.testing import ServerProcess

    prefix = taskset_prefix(cpu)
    servers = []
    try:
        for db in dbs.values():
            servers.append(ServerProcess(db, prefix=prefix).start())
        yield {mode: Target(s.url, s.pid) for mode, s in zip(dbs, servers, strict=True)}
    finally:
        for s in servers:
            s.stop()


def load_table(url: str, rows: int) -> None:
    """Create table t(id, name, qty, price) with ``rows`` rows."""
    import casemate

    with casemate.connect(url) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, price REAL)")
        cur.execute("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < ?) "
                    "INSERT INTO t SELECT i, 'customer-' || i, i % 100, i * 0.25 FROM r", (rows,))
        cur.close()


# -- workloads ---------------------------------------------------------------------------

def lookups(target: Target, n: int, key_range: int) -> dict[str, float]:
    """``n`` sequential primary-key lookups on one connection: rate, p50/p99, CPU per lookup."""
    import casemate

    keys = random.Random(42).choices(range(1, key_range + 1), k=n)
    times = []
    clock = time.perf_counter
    with casemate.connect(target.url) as conn:
        cur = conn.cursor()
        with Meter(target.cpu) as m:
            for k in keys:
                t0 = clock()
                cur.execute("SELECT name, qty, price FROM t WHERE id = ?", (k,))
                if cur.fetchone() is None:
                    raise RuntimeError(f"row {k} missing")
                times.append(clock() - t0)
        cur.close()
    return {"lookup_rate": n / m.wall, "lookup_p50": statistics.median(times),
            "lookup_p99": statistics.quantiles(times, n=100)[98], "lookup_cpu": m.cpu / n}


def fetch_rows(target: Target, n: int, on_chunk: Callable[[list[Row]], None]) -> Meter:
    """Fetch the first ``n`` rows of t, handing each chunk to ``on_chunk``; return the meter."""
    import casemate

    with casemate.connect(target.url) as conn:
        cur = conn.cursor()
        with Meter(target.cpu) as m:
            cur.execute("SELECT id, name, qty, price FROM t WHERE id <= ?", (n,))
            got = 0
            while chunk := cur.fetchmany(10_000):
                got += len(chunk)
                on_chunk(chunk)
        cur.close()
    if got != n:
        raise RuntimeError(f"bulk fetch returned {got} rows, expected {n}")
    return m


def payload_size(target: Target, n: int) -> int:
    """Bytes of the msgpack encoding of the fetched rows (the same in both modes)."""
    total = 0

    def count(chunk: list[Row]) -> None:
        nonlocal total
        total += len(msgpack.packb(chunk))

    fetch_rows(target, n, count)
    return total


def bulk(target: Target, n: int, payload: int) -> dict[str, float]:
    """Rows/s, MB/s and CPU per row of one bulk fetch of ``n`` rows."""
    m = fetch_rows(target, n, lambda chunk: None)
    return {"bulk_rows": n / m.wall, "bulk_mb": payload / m.wall / 1e6, "bulk_cpu": m.cpu / n}


def clear_tls_cache() -> None:
    """Forget the client's TLS contexts and sessions: the next connect does a full handshake."""
    from casemate.client import blocking

    with blocking._cache_lock:
        blocking._tls_cache.clear()


def connect_once(url: str, fresh_tls: bool) -> bool:
    """Connect, log in, run a first query, close; return whether TLS resumed a session."""
    import casemate

    if fresh_tls:
        clear_tls_cache()
    with casemate.connect(url) as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchone()
        cur.close()
        sock = conn._channel.sock
        return bool(getattr(sock, "session_reused", False))


def connects(target: Target, n: int, fresh_tls: bool, resumed: list[bool]) -> tuple[float, float]:
    """New connections (+ login + first query): per second and CPU seconds per connect."""
    connect_once(target.url, fresh_tls)  # warm: the resumed case then starts with a session
    with Meter(target.cpu) as m:
        for _ in range(n):
            resumed.append(connect_once(target.url, fresh_tls))
    return n / m.wall, m.cpu / n


# -- the run -----------------------------------------------------------------------------

def measure(mode: str, target: Target, sizes: Sizes, res: Results) -> None:
    """One round of every workload against one server."""
    gc.collect()
    res.add(mode, lookups(target, sizes.lookups, sizes.bulk_rows))
    gc.collect()
    res.add(mode, bulk(target, sizes.bulk_rows, res.payload_bytes))
    gc.collect()
    if mode == "plain":
        rate, cpu = connects(target, sizes.connects, False, [])
        res.add(mode, {"connect_rate": rate, "connect_cpu": cpu})
        return
    rate, cpu = connects(target, sizes.connects, True, [])
    res.add(mode, {"connect_full_rate": rate, "connect_full_cpu": cpu})
    rate, cpu = connects(target, sizes.connects, False, res.resumed)
    res.add(mode, {"connect_resumed_rate": rate, "connect_resumed_cpu": cpu})


def prepare(targets: dict[str, Target], sizes: Sizes, res: Results) -> None:
    """Load the same table into both databases and warm both servers up."""
    for target in targets.values():
        load_table(target.url, sizes.bulk_rows)
        res.payload_bytes = payload_size(target, sizes.bulk_rows)  # also a warm-up pass
        lookups(target, min(sizes.lookups, 200), sizes.bulk_rows)


def run(sizes: Sizes, cpu: int | None, log: Callable[[str], None]) -> Results:
    """Set up both servers and run the interleaved rounds."""
    res = Results(load=[os.getloadavg()[0]])
    with tempfile.TemporaryDirectory(prefix="casemate-bench-") as tmp:
        root = Path(tmp)
        os.environ["CASEMATE_HOME"] = str(root / "client-home")
        with running_servers(create_databases(root), cpu) as targets:
            prepare(targets, sizes, res)
            for r in range(sizes.rounds):
                for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                    t0 = time.perf_counter()
                    measure(mode, targets[mode], sizes, res)
                    log(f"round {r + 1}/{sizes.rounds} {mode}: {time.perf_counter() - t0:.1f} s")
    res.load.append(os.getloadavg()[0])
    return res


# -- report ------------------------------------------------------------------------------

def ratio(res: Results, m: Metric) -> float:
    """Median encrypted / median plain."""
    enc = statistics.median(res.samples[("encrypted", m.encrypted)])
    return enc / statistics.median(res.samples[("plain", m.plain)])


def verdict(m: Metric, r: float) -> str:
    """``≥ 0.9x: met`` and the like; empty for a metric without an aim."""
    if m.aim is None:
        return ""
    met = r >= m.aim if m.higher_is_better else r <= m.aim
    return f"{'≥' if m.higher_is_better else '≤'} {m.aim:.2f}x: {'met' if met else 'MISSED'}"


def table(res: Results) -> list[str]:
    """The result table, in Markdown."""
    lines = ["| workload | metric | plain: median (min–max) | encrypted: median (min–max) "
             "| encrypted/plain | aim |",
             "| --- | --- | ---: | ---: | ---: | --- |"]
    for m in METRICS:
        p = summary(res.samples[("plain", m.plain)], m.scale, m.fmt)
        e = summary(res.samples[("encrypted", m.encrypted)], m.scale, m.fmt)
        r = ratio(res, m)
        lines.append(f"| {m.workload} | {m.label} | {p} | {e} | {r:.2f}x | {verdict(m, r)} |")
    return lines


def facts(sizes: Sizes, pinning: str, quick: bool, res: Results) -> list[str]:
    """What the numbers were measured on and with."""
    return [
        f"- mode: {'quick' if quick else 'full'}; {sizes.rounds} rounds; per round and mode "
        f"{sizes.lookups:,} lookups, {sizes.bulk_rows:,} rows "
        f"({res.payload_bytes / 1e6:.1f} MB of row payload), {sizes.connects} connects",
        f"- CPU pinning: {pinning}",
        f"- machine: {os.cpu_count()} CPUs, {cpu_model()}; Python {platform.python_version()}; "
        f"{ssl.OPENSSL_VERSION}",
        f"- load average (1 min) at start / end: {res.load[0]:.2f} / {res.load[-1]:.2f}",
        f"- resumed TLS sessions in the resumed-session runs: {sum(res.resumed)} of "
        f"{len(res.resumed)}",
    ]


def ratio_lines(res: Results) -> list[str]:
    """One ``ratio KEY: R.RRx [aim]`` line per metric, for people and for the quick test."""
    return [f"ratio {m.key}: {ratio(res, m):.2f}x {verdict(m, ratio(res, m))}".rstrip()
            for m in METRICS]


def write_docs(lines: list[str], path: Path = DOCS) -> None:
    """Replace the text between the markers in docs/benchmarks.md with ``lines``."""
    stamp = f"Measured {time.strftime('%Y-%m-%d')} with `python -m bench.tls_bench`:"
    write_marked(path, DOC_START, DOC_END, [stamp, "", *lines])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = interleaved_args("python -m bench.tls_bench", "Plain versus encrypted Casemate benchmark.")
    p.add_argument("--write-docs", action="store_true", help=f"write the table into {DOCS}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = Sizes(args.rounds, sizes.lookups, sizes.bulk_rows, sizes.connects)
    cpu = choose_cpu(args.pin)
    pin_client(cpu)
    pinning = pin_note(cpu, args.pin)
    print(f"CPU pinning: {pinning}", flush=True)
    res = run(sizes, cpu, lambda s: print(s, flush=True))
    lines = [*facts(sizes, pinning, args.quick, res), "", *table(res)]
    print("\n".join(["", *lines, "", *ratio_lines(res)]))
    if args.write_docs:
        write_docs(lines)
        print(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
