"""Python calls per request, counted on both sides: what a lookup and a write run.

Run from the repository root::

    python -m bench.calls [--quick] [--lookups N] [--writes N] [--top N] [--plain]

Starts a real ``casemate serve`` (encrypted unless ``--plain``) whose every thread
counts, with ``sys.setprofile``, each Python function entered and each C function
called, and a client that counts the same in its own process; then runs ``N``
sequential primary-key lookups (inside a transaction, as the PEP 249 client does by
default) and ``N`` autocommit single-row updates, and prints, per request and side,
the number of Python and C calls and the most frequent ones.

What it is for: time is noisy on a shared VM, counts are not.  The fifth stop on
issue 16 (docs/benchmarks.md) found that a lookup's Python on the server, not any one
slow call, is what stands in the way; this is the list to shorten, and the way to see
that a change shortened it.  (A coroutine is counted each time it resumes.)  Counting
slows both sides several times over (the counting server runs statements of up to
20 ms in the event loop, so the slowing does not change which path they take): use
``bench.ab`` or ``bench.suite`` for speed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The server side: ``python -m bench.calls --serve OUT DIR PORT`` runs ``casemate serve``
# with the counter on, and writes the counts to OUT when it ends (SIGTERM).

Counts = Counter[tuple[str, str]]


def counter(counts: Counts) -> Callable[[Any, str, Any], None]:
    def count(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            counts[(Path(code.co_filename).name, code.co_name)] += 1
        elif event == "c_call":
            counts[("C", getattr(arg, "__qualname__", None) or repr(arg))] += 1
    return count


def serve_counted(out: str, args: list[str]) -> None:
    import atexit
    import threading

    from casemate.cli import main

    counts: Counts = Counter()

    def dump() -> None:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
        Path(out).write_text(json.dumps({"counts": [[*k, v] for k, v in counts.items()]}))
    atexit.register(dump)
    sys.argv = ["casemate", "serve", *args]
    hook = counter(counts)
    threading.setprofile(hook)
    sys.setprofile(hook)
    main()


def client_run(url: str, lookups: int, writes: int) -> dict[str, tuple[Counts, int]]:
    """Run the workloads, counting this process's calls per phase."""
    import casemate

    counts: Counts = Counter()
    phases: dict[str, tuple[Counts, int]] = {}
    rng = random.Random(42)
    with casemate.connect(url) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)")
        cur.execute("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE "
                    "i < 1000) INSERT INTO t SELECT i, 'customer-' || i, i % 100 FROM r")
        conn.commit()
        for _ in range(200):  # warm up: the cost model learns the statements are short
            cur.execute("SELECT name, qty FROM t WHERE id = ?", (rng.randint(1, 1000),))
            cur.fetchone()
        keys = [rng.randint(1, 1000) for _ in range(max(lookups, writes))]
        hook = counter(counts)
        sys.setprofile(hook)
        for k in keys[:lookups]:
            cur.execute("SELECT name, qty FROM t WHERE id = ?", (k,))
            cur.fetchone()
        sys.setprofile(None)
        phases["lookup"] = (Counter(counts), lookups)
        conn.commit()
        conn.autocommit = True
        for _ in range(50):
            cur.execute("UPDATE t SET qty = qty + 1 WHERE id = ?", (rng.randint(1, 1000),))
        counts.clear()
        sys.setprofile(hook)
        for k in keys[:writes]:
            cur.execute("UPDATE t SET qty = qty + 1 WHERE id = ?", (k,))
        sys.setprofile(None)
        phases["write"] = (Counter(counts), writes)
    return phases


def per_request(counts: Counts, n: int) -> tuple[float, float]:
    py = sum(v for k, v in counts.items() if k[0] != "C")
    c = sum(v for k, v in counts.items() if k[0] == "C")
    return py / n, c / n


def report(title: str, counts: Counts, n: int, top: int) -> list[str]:
    py, c = per_request(counts, n)
    lines = [f"{title}: {py:.1f} Python calls and {c:.1f} C calls per request"]
    for (where, name), v in counts.most_common(top):
        lines.append(f"  {v / n:6.2f}  {name} ({where})")
    return lines


def run(lookups: int, writes: int, top: int, plain: bool) -> list[str]:
    from casemate.database import create_database
    from casemate.testing import ADMIN_PASSWORD

    from ._common import set_setting

    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="casemate-calls-") as tmp:
        root = Path(tmp)
        db = root / "db"
        create_database(db, "calls", ADMIN_PASSWORD)
        if not plain:
            set_setting(db, "encrypt_client_server_connections", "true")
        # Counting slows the server several times over; the cost model would then send
        # lookups to worker threads, a path they do not take unslowed: count the usual one.
        set_setting(db, "inline_limit_ms", "20")
        env = {**os.environ, "CASEMATE_HOME": str(root / "home"), "PYTHONUNBUFFERED": "1"}
        os.environ["CASEMATE_HOME"] = env["CASEMATE_HOME"]
        out = root / "server-counts.json"
        # The server counts everything from its start: its counts for N lookups are the
        # difference between a run with 2N and one with N (the writes the same), and
        # likewise for the writes.
        runs = []
        for nl, nw in ((lookups, writes), (2 * lookups, writes), (lookups, 2 * writes)):
            runs.append(_counted_run(db, env, out, nl, nw))
        (s1, p1), (s2, _), (s3, _) = runs
        title = "encrypted" if not plain else "plain"
        lines += report(f"client, {title} lookup", *p1["lookup"], top)
        lines += report(f"server, {title} lookup", s2 - s1, lookups, top)
        lines += report(f"client, {title} autocommit write", *p1["write"], top)
        lines += report(f"server, {title} autocommit write", s3 - s1, writes, top)
    return lines


def _counted_run(db: Path, env: dict[str, str], out: Path, lookups: int, writes: int
                 ) -> tuple[Counts, dict[str, tuple[Counts, int]]]:
    """One counting server, the workloads against it: (its counts, the client's)."""
    from casemate.testing import ADMIN_PASSWORD

    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.calls", "--serve", str(out), str(db), "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stdout is not None
        port = None
        for line in proc.stdout:
            if "listening on" in line:
                port = int(line.split("listening on ", 1)[1].split(",")[0].rsplit(":", 1)[1])
                break
        if port is None:
            raise RuntimeError("the counting server did not start")
        phases = client_run(f"casemate://admin:{ADMIN_PASSWORD}@127.0.0.1:{port}", lookups,
                            writes)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    data = json.loads(out.read_text())
    _drop_table(db)
    return Counter({(a, b): v for a, b, v in data["counts"]}), phases


def _drop_table(db: Path) -> None:
    import sqlite3

    con = sqlite3.connect(db / "Data" / "data.sqlite")
    con.execute("DROP TABLE IF EXISTS t")
    con.commit()
    con.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        out, db, port = argv[1:4]
        serve_counted(out, [db, "--port", port])
        return 0
    p = argparse.ArgumentParser(prog="python -m bench.calls", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few requests (seconds, for tests)")
    p.add_argument("--lookups", type=int, default=2000)
    p.add_argument("--writes", type=int, default=500)
    p.add_argument("--top", type=int, default=25, help="how many of the most frequent calls")
    p.add_argument("--plain", action="store_true", help="plain TCP (default: encrypted)")
    a = p.parse_args(argv)
    if a.lookups < 1 or a.writes < 1:
        p.error("--lookups and --writes must be at least 1")
    lookups, writes = (50, 20) if a.quick else (a.lookups, a.writes)
    for line in run(lookups, writes, a.top, a.plain):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
