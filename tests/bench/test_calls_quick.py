"""The call counter runs end to end in quick mode, and what it counts is the request path.

No count is asserted exactly (it changes with the code); what is asserted is that both
sides were counted for both workloads, that a lookup on the server is served by the
synchronous fast path and its lane (query_now and the storage's read_now: not the general
inline call, a coroutine or a worker thread), and that a write goes through a worker
thread, as the server is built.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _section(out: str, title: str) -> str:
    m = re.search(rf"(?ms)^{re.escape(title)}: .*?(?=^\S|\Z)", out)
    assert m, out
    return m.group(0)


def test_quick_run_counts_both_sides_of_both_workloads() -> None:
    r = subprocess.run([sys.executable, "-m", "bench.calls", "--quick", "--top", "200"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    for side in ("client", "server"):
        for work in ("lookup", "autocommit write"):
            head = re.search(rf"(?m)^{side}, encrypted {work}: ([\d.]+) Python calls and "
                             r"([\d.]+) C calls per request$", r.stdout)
            assert head and float(head.group(1)) > 5, r.stdout
    lookup = _section(r.stdout, "server, encrypted lookup")
    assert re.search(r"(?m)^\s+1\.00  query_now \(handlers\.py\)$", lookup), lookup
    assert re.search(r"(?m)^\s+1\.00  read_now \(sqlite\.py\)$", lookup), lookup
    assert "execute_first" not in lookup
    assert "_in_thread" not in lookup
    assert "_in_thread (runner.py)" in _section(r.stdout, "server, encrypted autocommit write")


def test_bad_counts_are_refused() -> None:
    r = subprocess.run([sys.executable, "-m", "bench.calls", "--lookups", "0"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "--lookups and --writes must be at least 1" in r.stderr
