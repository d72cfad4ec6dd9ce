"""One server-method call against the same work done as N round trips, over an encrypted link.

    python -m bench.methods_bench            # N=100, 7 rounds, server and client pinned to CPU 0
    python -m bench.methods_bench --quick    # what the test suite runs

The method inserts N rows and reads their sum back, in the caller's
transaction; the client version sends the same N inserts and the select as
N + 1 statements.  Rounds alternate which variant goes first; the output is
the median time per unit of work, the spread (min-max) and the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import casemate
from casemate.database import create_database
from casemate.testing import ADMIN_PASSWORD, ServerProcess

METHOD = '''
from casemate.methods import method


@method
def insert_batch(db, batch: int, n: int) -> int:
    """Insert n rows for this batch and return their sum."""
    for i in range(n):
        db.execute("INSERT INTO work (batch, i) VALUES (?, ?)", (batch, i))
    return db.execute("SELECT sum(i) FROM work WHERE batch = ?", (batch,)).fetchone()[0]
'''


def _by_method(conn: casemate.Connection, batch: int, n: int) -> int:
    total = conn.call("insert_batch", batch, n)
    conn.commit()
    return int(total)


def _by_round_trips(conn: casemate.Connection, batch: int, n: int) -> int:
    cur = conn.cursor()
    for i in range(n):
        cur.execute("INSERT INTO work (batch, i) VALUES (?, ?)", (batch, i))
    cur.execute("SELECT sum(i) FROM work WHERE batch = ?", (batch,))
    total = cur.fetchone()[0]
    conn.commit()
    return int(total)


def _time(fn, conn, batch: int, n: int, reps: int) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    for r in range(reps):
        assert fn(conn, batch * 1000 + r, n) == n * (n - 1) // 2
    return (time.perf_counter() - t0) / reps


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="statements replaced by one call")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=20, help="units of work per round and variant")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-pin", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.rounds, args.reps = 20, 2, 3
    pin = not args.no_pin and shutil.which("taskset") is not None
    tmp = Path(tempfile.mkdtemp(prefix="casemate-methods-bench-"))
    os.environ["CASEMATE_HOME"] = str(tmp / "home")
    db = tmp / "db"
    create_database(db, "bench", ADMIN_PASSWORD)
    (db / "Methods" / "bench.py").write_text(METHOD)
    toml = db / "casemate.toml"
    toml.write_text(toml.read_text().replace("encrypt_client_server_connections = false",
                                             "encrypt_client_server_connections = true"))
    server = ServerProcess(db, prefix=("taskset", "-c", "0") if pin else ()).start()
    if pin:
        os.sched_setaffinity(0, {0})
    try:
        with server.connect() as conn:
            conn.execute("CREATE TABLE work (batch INTEGER, i INTEGER)")
            conn.commit()
            results: dict[str, list[float]] = {"method": [], "round trips": []}
            variants = [("method", _by_method), ("round trips", _by_round_trips)]
            for rnd in range(args.rounds):
                order = variants if rnd % 2 == 0 else variants[::-1]
                for name, fn in order:
                    results[name].append(_time(fn, conn, rnd * 2 + (name == "method"),
                                               args.n, args.reps))
            security = str(conn.security)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"Server method vs round trips: N={args.n} statements per unit of work, "
          f"{args.rounds} rounds x {args.reps} units, {'pinned to CPU 0' if pin else 'unpinned'}")
    print(f"  connection: {security}")
    for k, v in results.items():
        print(f"  {k:<12} median {med[k] * 1000:8.2f} ms per unit "
              f"(spread {min(v) * 1000:.2f}-{max(v) * 1000:.2f} ms)")
    ratio = med["round trips"] / med["method"]
    print(f"RATIO method speed-up: {ratio:.1f}x (one call instead of {args.n + 1} statements)")
    return {"ratio": ratio, **med}


if __name__ == "__main__":
    main()
