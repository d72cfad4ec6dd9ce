"""An autocommit write is done once, also when the machine is too busy for the event loop.

SQLite checks its progress handler once more after the Halt opcode that commits an
autocommit statement; a write run in the event loop and stopped there (the inline
cut-off) was reported as stopped and run again in a thread, so under load rows were
written twice (bench/load.py's invariant failed in every loaded run).  Writes now run in
threads, and a stop reported after the statement's own commit is reported as done.
"""

from __future__ import annotations

import subprocess
import sys

from bench.load import main

BURN = "import time\nt = time.time()\nwhile time.time() - t < 8: pass\n"


def test_acknowledged_writes_are_stored_once_under_cpu_load() -> None:
    hogs = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(2)]
    try:
        res = main(["--quick", "--seed", "5"])
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert res.operations > 0
    assert not res.invariants, res.invariants
