"""One against two Casemate servers over one PostgreSQL: does throughput grow with servers?

    python -m bench.pg_scaleout            # 32 clients, 5 s per measurement, 3 rounds
    python -m bench.pg_scaleout --quick    # what the test suite runs (about 10 s)

Both Casemate servers serve the same PostgreSQL database (``[storage]
backend = "postgresql"``).  The same clients (80% primary-key reads, 20%
single-row updates, autocommit, one connection each) run first all against
one server, then split evenly across two; rounds alternate the order.  The
clients are threads spread over several processes, so the load generator's
own GIL is not what limits.  Besides throughput, it reports where the CPU
went per operation (each Casemate server, PostgreSQL, the clients), from
/proc: on a small machine everything shares the same cores, and the CPU
figures say what one more machine per Casemate server would bring.
"""

from __future__ import annotations

import argparse
import json
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
from typing import Any

from bench._common import process_cpu, tree_cpu

PW = "bench-pw"
ROWS = 10_000


# -- the load, in worker processes ----------------------------------------------------------
def _worker(urls: list[str], threads: int, start_at: float, seconds: float) -> dict[str, float]:
    import casemate

    counts = [0] * threads
    errors = [0] * threads
    conns = []
    for i in range(threads):
        conn = casemate.connect(urls[i % len(urls)], program="scaleout")
        conn.autocommit = True
        conns.append(conn)
    stop_at = start_at + seconds

    def run(i: int) -> None:
        cur = conns[i].cursor()
        rng = random.Random(i * 7919 + os.getpid())
        while time.time() < start_at:
            time.sleep(0.001)
        while time.time() < stop_at:
            k = rng.randrange(ROWS)
            try:
                if rng.random() < 0.8:
                    cur.execute("SELECT v, n FROM kv WHERE id = ?", (k,))
                    cur.fetchone()
                else:
                    cur.execute("UPDATE kv SET n = n + 1 WHERE id = ?", (k,))
                counts[i] += 1
            except casemate.DatabaseError:
                errors[i] += 1

    cpu0 = time.process_time()
    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    cpu = time.process_time() - cpu0
    for c in conns:
        c.close()
    return {"ops": sum(counts), "errors": sum(errors), "cpu": cpu}


def _pg_cpu(pg: Any) -> float:
    """CPU seconds of PostgreSQL's processes: the postmaster, its backends, the exited ones."""
    pids = pg.pids()  # read now: backends come and go with the Casemate servers' pools
    return tree_cpu(pids[0], pids[1:])


def _measure(urls: list[str], clients: int, procs: int, seconds: float,
             server_pids: list[int], pg: Any) -> dict[str, Any]:
    """Run ``clients`` connections (over ``procs`` processes) against ``urls`` for ``seconds``."""
    start_at = time.time() + 1.5  # time for every worker to connect first
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    # each process gets a slice of the URLs so that clients split evenly across servers
    workers = []
    for i, n in enumerate(per):
        if n == 0:
            continue
        mine = [urls[(i + j) % len(urls)] for j in range(len(urls))]
        args = json.dumps([mine, n, start_at, seconds])
        workers.append(subprocess.Popen([sys.executable, "-m", "bench.pg_scaleout", "--worker",
                                         args], stdout=subprocess.PIPE, text=True))
    time.sleep(max(0.0, start_at - time.time()))
    cpu0 = [process_cpu(p) for p in server_pids]
    pg0 = _pg_cpu(pg)
    time.sleep(seconds)
    cpu1 = [process_cpu(p) for p in server_pids]
    pg1 = _pg_cpu(pg)
    results = []
    for w in workers:
        out, _ = w.communicate(timeout=60)
        if w.returncode != 0:
            raise RuntimeError(f"load worker failed with code {w.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    ops = sum(r["ops"] for r in results)
    return {"ops_s": ops / seconds, "errors": sum(r["errors"] for r in results),
            "server_cpu": [b - a for a, b in zip(cpu0, cpu1, strict=True)],
            "pg_cpu": pg1 - pg0, "client_cpu": sum(r["cpu"] for r in results), "ops": ops}


# -- setup and report ----------------------------------------------------------------------
def _cli(*args: str, env: dict[str, str]) -> None:
    r = subprocess.run([sys.executable, "-m", "casemate", *args], capture_output=True, text=True,
                       env=env, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"casemate {' '.join(args[:2])} failed: {r.stderr}")


def run(clients: int, seconds: float, rounds: int, procs: int) -> dict[str, Any]:
    from casemate.pgtest import PostgresServer
    from casemate.testing import ServerProcess

    tmp = Path(tempfile.mkdtemp(prefix="casemate-scaleout-"))
    old_env = dict(os.environ)
    pg = PostgresServer(ssl=False)
    servers: list[ServerProcess] = []
    try:
        pg.start()
        os.environ["CASEMATE_HOME"] = str(tmp / "home")
        os.environ["CASEMATE_PG_PASSWORD"] = pg.password
        dsn = f"host=127.0.0.1 port={pg.port} dbname=postgres user=postgres sslmode=disable"
        for name in ("one", "two"):
            _cli("init", str(tmp / name), "--storage", "postgresql", "--dsn", dsn,
                 "--admin-password", PW, env=dict(os.environ))
        servers = [ServerProcess(tmp / n, password=PW).start() for n in ("one", "two")]
        with servers[0].connect() as conn:
            cur = conn.cursor()
            cur.execute("CREATE TABLE kv (id integer PRIMARY KEY, v text, n integer)")
            cur.execute("INSERT INTO kv SELECT g, 'value-' || g, 0 FROM generate_series(0, ?) g",
                        (ROWS - 1,))
            conn.commit()
        pids = [s.pid for s in servers]
        urls = [s.url for s in servers]
        one: list[dict[str, Any]] = []
        two: list[dict[str, Any]] = []
        for rnd in range(rounds):
            order = [(urls[:1], one), (urls, two)]
            for u, out in (order if rnd % 2 == 0 else order[::-1]):
                out.append(_measure(u, clients, procs, seconds, pids, pg))
    finally:
        for s in servers:
            s.stop()
        pg.stop()
        os.environ.clear()
        os.environ.update(old_env)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"one": one, "two": two}


def _per_op_ms(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median((sum(r[key]) if isinstance(r[key], list) else r[key]) * 1000 /
                             max(r["ops"], 1) for r in runs)


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--procs", type=int, default=4, help="client processes")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        urls, threads, start_at, seconds = json.loads(args.worker)
        print(json.dumps(_worker(urls, threads, start_at, seconds)), flush=True)
        return {}
    if args.quick:
        args.clients, args.seconds, args.rounds, args.procs = 8, 1.0, 1, 2
    res = run(args.clients, args.seconds, args.rounds, args.procs)
    one, two = res["one"], res["two"]
    m1 = statistics.median(r["ops_s"] for r in one)
    m2 = statistics.median(r["ops_s"] for r in two)
    errors = sum(r["errors"] for r in one + two)
    print(f"Casemate over one PostgreSQL: {args.clients} clients in {args.procs} processes, "
          f"80% reads / 20% updates, {args.seconds:g} s x {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs, not pinned")
    for label, runs, m in (("one server ", one, m1), ("two servers", two, m2)):
        spread = f"{min(r['ops_s'] for r in runs):,.0f}-{max(r['ops_s'] for r in runs):,.0f}"
        print(f"  {label}: {m:,.0f} ops/s ({spread}); CPU per op: Casemate "
              f"{_per_op_ms(runs, 'server_cpu'):.3f} ms, PostgreSQL "
              f"{_per_op_ms(runs, 'pg_cpu'):.3f} ms, clients {_per_op_ms(runs, 'client_cpu'):.3f} ms")
    srv_ms = _per_op_ms(one, "server_cpu")
    pg_ms = _per_op_ms(one, "pg_cpu")
    paired = statistics.median(b["ops_s"] / a["ops_s"] for a, b in zip(one, two, strict=True))
    print(f"RATIO two/one servers: {m2 / m1:.2f}x; median of the per-round ratios "
          f"{paired:.2f}x  (errors: {errors})")
    print(f"one Casemate server saturates one core at ~{1000 / srv_ms:,.0f} ops/s; PostgreSQL "
          f"needs {pg_ms:.3f} ms of CPU per op (~{1000 / pg_ms:,.0f} ops/s per core)")
    out = {"one": m1, "two": m2, "ratio": m2 / m1, "paired_ratio": paired, "errors": float(errors),
           "casemate_ms_per_op": srv_ms, "pg_ms_per_op": pg_ms}
    if args.json:
        args.json.write_text(json.dumps({"summary": out, **res}, indent=1))
    return out


if __name__ == "__main__":
    main()
