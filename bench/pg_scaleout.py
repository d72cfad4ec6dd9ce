"""One against two Casemate servers over one PostgreSQL: does throughput grow with servers?

    python -m bench.pg_scaleout            # 32 clients, 5 s per measurement, 3 rounds
    python -m bench.pg_scaleout --quick    # what the test suite runs

Both Casemate servers serve the same PostgreSQL database (storage backend
``postgresql``). The same client threads (80% primary-key reads, 20%
single-row updates, autocommit) run first all against one server, then
split evenly across two; rounds alternate the order.  Not pinned: the point
is to use both CPUs.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import casemate
from casemate.pgtest import PostgresServer
from casemate.testing import ServerProcess

PW = "bench-pw"


def _load(urls: list[str], clients: int, seconds: float, rows: int) -> float:
    stop = threading.Event()
    counts = [0] * clients
    barrier = threading.Barrier(clients + 1)

    def worker(i: int) -> None:
        conn = casemate.connect(urls[i % len(urls)], program="scaleout")
        conn.autocommit = True
        cur = conn.cursor()
        rng = random.Random(i)
        barrier.wait()
        while not stop.is_set():
            k = rng.randrange(rows)
            if rng.random() < 0.8:
                cur.execute("SELECT v FROM kv WHERE id = ?", (k,))
                cur.fetchone()
            else:
                cur.execute("UPDATE kv SET n = n + 1 WHERE id = ?", (k,))
            counts[i] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.clients, args.seconds, args.rounds = 8, 1.0, 1
    tmp = Path(tempfile.mkdtemp(prefix="casemate-scaleout-"))
    os.environ["CASEMATE_HOME"] = str(tmp / "home")
    pg = PostgresServer(ssl=False).start()
    servers: list[ServerProcess] = []
    try:
        env = {**os.environ, "CASEMATE_PG_PASSWORD": pg.password}
        dsn = pg.dsn("disable").replace(f" password={pg.password}", "")
        for name in ("one", "two"):
            subprocess.run([sys.executable, "-m", "casemate", "init", str(tmp / name),
                            "--storage", "postgresql", "--dsn", dsn, "--admin-password", PW],
                           check=True, capture_output=True, env=env)
            toml = tmp / name / "casemate.toml"
            toml.write_text(toml.read_text().replace("pool_size = 20", "pool_size = 64"))
        os.environ["CASEMATE_PG_PASSWORD"] = pg.password
        servers = [ServerProcess(tmp / n, password=PW).start() for n in ("one", "two")]
        rows = 10_000
        with servers[0].connect() as conn:
            cur = conn.cursor()
            cur.execute("CREATE TABLE kv (id integer PRIMARY KEY, v text, n integer)")
            cur.executemany("INSERT INTO kv VALUES (?, ?, 0)", [(i, f"v{i}") for i in range(rows)])
        urls = [s.url for s in servers]
        one: list[float] = []
        two: list[float] = []
        for rnd in range(args.rounds):
            order = [("one", urls[:1], one), ("two", urls, two)]
            for _name, u, out in (order if rnd % 2 == 0 else order[::-1]):
                out.append(_load(u, args.clients, args.seconds, rows))
    finally:
        for s in servers:
            s.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    m1, m2 = statistics.median(one), statistics.median(two)
    print(f"Casemate over one PostgreSQL: {args.clients} clients, {args.seconds:g} s x "
          f"{args.rounds} rounds, 2 CPUs, not pinned")
    print(f"  one server:  {m1:,.0f} ops/s (spread {min(one):,.0f}-{max(one):,.0f})")
    print(f"  two servers: {m2:,.0f} ops/s (spread {min(two):,.0f}-{max(two):,.0f})")
    print(f"RATIO two/one servers: {m2 / m1:.2f}x")
    return {"one": m1, "two": m2, "ratio": m2 / m1}


if __name__ == "__main__":
    main()
