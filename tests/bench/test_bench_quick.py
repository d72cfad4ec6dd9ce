"""The plain-versus-encrypted benchmark runs end to end in quick mode and reports ratios.

No speed is asserted (a test machine's speed says nothing); what is asserted is
that both real servers ran every workload, that each metric has an
encrypted/plain ratio, and that the resumed-session runs really resumed TLS.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import tls_bench

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_output() -> str:
    r = subprocess.run([sys.executable, "-m", "bench.tls_bench", "--quick"], cwd=ROOT,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_quick_run_prints_a_ratio_for_every_metric(quick_output: str) -> None:
    for m in tls_bench.METRICS:
        found = re.search(rf"(?m)^ratio {m.key}: (\d+\.\d\d)x", quick_output)
        assert found, f"no ratio for {m.key}:\n{quick_output}"
        assert float(found.group(1)) > 0


def test_quick_run_covers_each_workload_and_both_modes(quick_output: str) -> None:
    rows = [line for line in quick_output.splitlines() if line.startswith("| ")][2:]
    workloads = {line.split(" | ")[0].lstrip("| ") for line in rows}
    assert workloads == {tls_bench.LOOKUP, tls_bench.BULK, tls_bench.CONNECT}
    assert len(rows) == len(tls_bench.METRICS)
    for line in ("round 1/2 plain", "round 1/2 encrypted", "round 2/2 plain",
                 "round 2/2 encrypted"):
        assert line in quick_output


def test_quick_run_says_how_it_was_pinned_and_aims(quick_output: str) -> None:
    assert re.search(r"(?m)^CPU pinning: (servers and client pinned to CPU \d+|none \(.+\))$",
                     quick_output)
    assert re.search(r"(?m)^ratio lookup_rate: .*≥ 0\.90x: (met|MISSED)$", quick_output)
    assert re.search(r"(?m)^ratio bulk_rows: .*≥ 0\.80x: (met|MISSED)$", quick_output)


def test_resumed_runs_resume_every_tls_session(quick_output: str) -> None:
    m = re.search(r"resumed TLS sessions in the resumed-session runs: (\d+) of (\d+)", quick_output)
    assert m, quick_output
    reused, total = int(m.group(1)), int(m.group(2))
    assert total == tls_bench.QUICK.rounds * tls_bench.QUICK.connects
    assert reused == total


def test_write_docs_replaces_only_the_marked_block(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Title\nbefore\n{tls_bench.DOC_START}\nold table\n{tls_bench.DOC_END}\nafter\n")
    tls_bench.write_docs(["| new | table |"], doc)
    text = doc.read_text()
    assert "old table" not in text and "| new | table |" in text
    assert text.startswith("# Title\nbefore\n") and text.endswith(f"{tls_bench.DOC_END}\nafter\n")
    tls_bench.write_docs(["| newer |"], doc)  # markers survive: it can run again
    assert "| new | table |" not in doc.read_text() and "| newer |" in doc.read_text()


def test_write_docs_refuses_a_file_without_markers(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="markers"):
        tls_bench.write_docs(["x"], doc)
    assert doc.read_text() == "# no markers\n"
