"""The compiled-versus-pure row path benchmark runs end to end in quick mode.

No speed is asserted; what is asserted is that the two servers really ran the two
row paths (each says so in its log) and that every metric has a ratio.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import rowpath_bench
from casemate.storage import sqlite_rows

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not sqlite_rows.COMPILED, reason="the compiled row path is not in use")
def test_quick_run_compares_the_two_row_paths() -> None:
    r = subprocess.run([sys.executable, "-m", "bench.rowpath_bench", "--quick"], cwd=ROOT,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "compiled server: row path: compiled" in r.stdout
    assert "pure server: row path: pure Python: CASEMATE_PURE is set" in r.stdout
    for _, metric, _, _, _ in rowpath_bench.METRICS:
        found = re.search(rf"\| {re.escape(metric)} \|.*\| (\d+\.\d\d)x \|", r.stdout)
        assert found and float(found.group(1)) > 0, f"no ratio for {metric}:\n{r.stdout}"
