"""One server-method call against the same work done as N round trips, over an encrypted link.

    python -m bench.methods_bench                  # N=100, 7 rounds x 20 units, pinned to one CPU
    python -m bench.methods_bench --n 100 --rounds 5
    python -m bench.methods_bench --quick          # what the test suite runs (seconds)
    python -m bench.methods_bench --no-pin         # let the OS place server and client

A unit of work inserts N rows and reads their sum back, in the caller's
transaction, then commits.  "method" does it with one ``conn.call`` of a
server method; "round trips" sends the same N inserts and the SELECT from
the client as N + 1 statements in one transaction.  Both run on the same
encrypted (TLS) connection to a real server process; rounds alternate which
variant goes first.  Output: the median time per unit of work, the spread
(min-max over rounds) and the ratio of the medians.

By default the server and this client are pinned to the same CPU with
``taskset`` (and ``sched_setaffinity``), so the figure compares work and
round trips, not how two processes share a multi-core machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import casemate
from casemate.database import create_database
from casemate.testing import ADMIN_PASSWORD, ServerProcess

__all__ = ["main"]

METHOD = '''\
"""The benchmark's server method."""

from casemate.methods import method


@method
def insert_batch(db, batch: int, n: int) -> int:
    """Insert n rows for this batch and return the sum of their i."""
    for i in range(n):
        db.execute("INSERT INTO work (batch, i) VALUES (?, ?)", (batch, i))
    return db.execute("SELECT sum(i) FROM work WHERE batch = ?", (batch,)).fetchone()[0]
'''

Work = Callable[[casemate.Connection, int, int], int]


def by_method(conn: casemate.Connection, batch: int, n: int) -> int:
    total = conn.call("insert_batch", batch, n)
    conn.commit()
    return int(total)


def by_round_trips(conn: casemate.Connection, batch: int, n: int) -> int:
    cur = conn.cursor()
    for i in range(n):
        cur.execute("INSERT INTO work (batch, i) VALUES (?, ?)", (batch, i))
    cur.execute("SELECT sum(i) FROM work WHERE batch = ?", (batch,))
    total = cur.fetchone()[0]
    cur.close()
    conn.commit()
    return int(total)


VARIANTS: list[tuple[str, Work]] = [("method", by_method), ("round trips", by_round_trips)]


def _time(fn: Work, conn: casemate.Connection, first_batch: int, n: int, reps: int) -> float:
    """Seconds per unit of work (mean over ``reps`` units, each checked)."""
    t0 = time.perf_counter()
    for r in range(reps):
        total = fn(conn, first_batch + r, n)
        if total != n * (n - 1) // 2:
            raise AssertionError(f"wrong sum {total} for batch {first_batch + r}")
    return (time.perf_counter() - t0) / reps


@contextmanager
def _scratch() -> Iterator[Path]:
    """A throw-away folder, also used as CASEMATE_HOME (known servers); both restored after."""
    tmp = Path(tempfile.mkdtemp(prefix="casemate-methods-bench-"))
    old = os.environ.get("CASEMATE_HOME")
    os.environ["CASEMATE_HOME"] = str(tmp / "home")
    try:
        yield tmp
    finally:
        if old is None:
            os.environ.pop("CASEMATE_HOME", None)
        else:
            os.environ["CASEMATE_HOME"] = old
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _pinned(cpu: int | None) -> Iterator[None]:
    """Pin this process to ``cpu`` for the duration (None: leave it alone)."""
    if cpu is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="statements replaced by one call "
                    "(default 100)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--reps", type=int, default=20, help="units of work per round and variant "
                    "(default 20)")
    ap.add_argument("--quick", action="store_true", help="N=20, 2 rounds x 3 units")
    ap.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.rounds, args.reps = 20, 2, 3
    if args.n < 1 or args.rounds < 1 or args.reps < 1:
        ap.error("--n, --rounds and --reps must be at least 1")
    cpu = (min(os.sched_getaffinity(0))
           if not args.no_pin and shutil.which("taskset") is not None else None)
    pinning = (f"server and client pinned to CPU {cpu}" if cpu is not None else
               "unpinned (--no-pin)" if args.no_pin else "unpinned (taskset not found)")

    results: dict[str, list[float]] = {name: [] for name, _ in VARIANTS}
    with _scratch() as tmp, _pinned(cpu):
        db = tmp / "db"
        create_database(db, "bench", ADMIN_PASSWORD)
        (db / "Methods" / "bench.py").write_text(METHOD)
        toml = db / "casemate.toml"
        text = toml.read_text()
        on = text.replace("encrypt_client_server_connections = false",
                          "encrypt_client_server_connections = true")
        if on == text:
            raise SystemExit("cannot switch encryption on in casemate.toml")
        toml.write_text(on)
        prefix = ("taskset", "-c", str(cpu)) if cpu is not None else ()
        server = ServerProcess(db, prefix=prefix).start()
        try:
            with server.connect() as conn:
                security = str(conn.security)
                if not security.startswith("encrypted"):
                    raise SystemExit(f"connection is not encrypted: {security}")
                conn.execute("CREATE TABLE work (batch INTEGER, i INTEGER)")
                conn.commit()
                by_method(conn, 0, args.n)          # warm-up, not timed
                by_round_trips(conn, 1, args.n)
                batch = 2
                for rnd in range(args.rounds):
                    for name, fn in VARIANTS if rnd % 2 == 0 else VARIANTS[::-1]:
                        results[name].append(_time(fn, conn, batch, args.n, args.reps))
                        batch += args.reps
                rows = conn.execute("SELECT count(*) FROM work").fetchone()[0]
                conn.commit()
            if rows != batch * args.n:
                raise AssertionError(f"{rows} rows committed, expected {batch * args.n}")
        finally:
            server.stop()

    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"Server method vs round trips: N={args.n} inserts + 1 select per unit of work, "
          f"{args.rounds} interleaved rounds x {args.reps} units, {pinning}")
    print(f"  connection: {security}")
    for k, v in results.items():
        print(f"  {k:<12} median {med[k] * 1000:8.2f} ms per unit "
              f"(spread {min(v) * 1000:.2f}-{max(v) * 1000:.2f} ms), "
              f"{(args.n + 1) / med[k]:,.0f} statements/s")
    ratio = med["round trips"] / med["method"]
    print(f"RATIO method speed-up: {ratio:.1f}x (one call instead of {args.n + 1} "
          "statements)")
    return {"ratio": ratio, "method": med["method"], "round trips": med["round trips"]}


if __name__ == "__main__":
    main()
