"""The event-loop benchmark runs end to end in quick mode: both loops, every metric, a ratio
each (no speed is asserted; a test machine's speed says nothing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import loop_bench

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_measures_both_loops() -> None:
    pytest.importorskip("uvloop")
    r = subprocess.run([sys.executable, "-m", "bench.loop_bench", "--quick"], cwd=ROOT,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for key, *_ in loop_bench.METRICS:
        found = re.search(rf"(?m)^ratio {key}: (\d+\.\d\d)x$", out)
        assert found and float(found.group(1)) > 0, f"no ratio for {key}:\n{out}"
    for line in ("round 1/2 asyncio", "round 1/2 uvloop", "round 2/2 uvloop"):
        assert line in out
    m = re.search(r"resumed TLS sessions: (\d+) of (\d+)", out)
    assert m and m.group(1) == m.group(2) != "0"


def test_write_docs_replaces_only_the_marked_block(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"before\n{loop_bench.DOC_START}\nold\n{loop_bench.DOC_END}\nafter\n")
    loop_bench.write_docs(["| new |"], doc)
    text = doc.read_text()
    assert "old" not in text and "| new |" in text and text.endswith("after\n")
