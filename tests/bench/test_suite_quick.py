"""The benchmark suite's quick mode runs every workload on all four systems and reports
every ratio (no speed is asserted: a test machine's speed says nothing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import suite
from casemate.pgtest import PostgresUnavailable, postgres_bin

ROOT = Path(__file__).resolve().parents[2]
PAIRS = [f"{a}/{b}" for a, b, _ in suite.PAIRS]
IDLE = suite.QUICK.idle[0]


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    try:
        postgres_bin()
    except PostgresUnavailable as e:
        pytest.skip(str(e))
    pytest.importorskip("psycopg")
    docs = tmp_path_factory.mktemp("docs")
    (docs / "benchmarks.md").write_text(f"# Benchmarks\nintro\n{suite.DOC_START}\nold\n"
                                        f"{suite.DOC_END}\nnotes\n")
    # A subprocess: the suite pins itself to one CPU and sets CASEMATE_HOME.
    r = subprocess.run([sys.executable, "-m", "bench.suite", "--quick", "--write-docs",
                        "--docs-dir", str(docs)], cwd=ROOT, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout, docs


def ratios(out: str) -> dict[tuple[str, str], float]:
    found = re.findall(r"(?m)^ratio (\w+) ([\w-]+/[\w-]+): (\d+\.\d\d)x$", out)
    return {(key, pair): float(v) for key, pair, v in found}


def test_every_throughput_and_cost_has_all_four_ratios(quick: tuple[str, Path]) -> None:
    got = ratios(quick[0])
    keys = ["lookup_rate", "lookup_p50", "lookup_p99", "lookup_cpu", "insert_rate", "insert_cpu",
            "fetch_rate", "fetch_mb", "fetch_cpu", "connect_rate", "connect_cpu",
            "connect_resumed_rate", "connect_resumed_cpu"]
    keys += [f"mix{n}_{m}" for n in suite.QUICK.concurrency for m in ("rate", "p99", "cpu")]
    for key in keys:
        for pair in PAIRS:
            assert got.get((key, pair), 0) > 0, (key, pair, quick[0])
    for key in (f"idle{IDLE}_mb", f"idle{IDLE}_kb"):  # no plain PostgreSQL idle sessions
        for pair in ("casemate-tls/casemate-plain", "casemate-tls/pg-require"):
            assert got.get((key, pair), 0) > 0, (key, pair)


def test_table_has_every_workload_and_system(quick: tuple[str, Path]) -> None:
    out = quick[0]
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert all(suite.LABELS[s] in rows[0] for s in suite.SYSTEMS)
    workloads = {line.split(" | ")[0].lstrip("| ") for line in rows[2:]}
    assert {"PK lookups, one connection", "executemany, one transaction",
            "fetch of the whole table", "connect + login + first query",
            f"{IDLE:,} idle sessions"} <= workloads
    assert {f"{n} concurrent client{'s' if n > 1 else ''}, 80/20 read/write"
            for n in suite.QUICK.concurrency} <= workloads
    for line in rows[2:]:  # every measured cell is a number, ratios end in x or are absent
        cells = line.strip("| ").split(" | ")
        assert all(re.fullmatch(r"[\d,.]+( \([\d,.]+–[\d,.]+\))?|–", c) for c in cells[2:6]), line
        assert all(re.fullmatch(r"\d+\.\d\dx|–", c) for c in cells[6:]), line
    assert "pinned to CPU" in out or "none (" in out
    assert re.search(r"(?m)^- errors in the concurrent mix .*: (none|.+ clients: \d+ )", out)


def test_every_target_gets_a_verdict(quick: tuple[str, Path]) -> None:
    out = quick[0]
    for t in suite.TARGETS:
        assert re.search(rf"(?m)^- {re.escape(t.text)}: \d+\.\d\dx \(target ≥ .*\): "
                         r"(met|MISSED by \d+%)", out), t.text
    assert re.search(r"resumed-session connect time vs plain connect: \d+\.\d\dx "
                     r"\(target ≤ 1\.5x\): (met|MISSED)", out)
    assert re.search(r"128 concurrent clients, p99 latency: [\d,.]+ ms against [\d,.]+ ms "
                     r"\(target ≤ PostgreSQL's\): (met|MISSED by \d+%)", out)
    assert f"{IDLE:,} idle encrypted Casemate sessions:" in out


def test_resumed_connects_really_resume(quick: tuple[str, Path]) -> None:
    m = re.search(r"resumed TLS sessions in the resumed-session connects: (\d+) of (\d+)",
                  quick[0])
    assert m and int(m.group(2)) == suite.QUICK.rounds * suite.QUICK.connects
    assert m.group(1) == m.group(2)


def test_write_docs_replaces_the_block_and_plots(quick: tuple[str, Path]) -> None:
    text = (quick[1] / "benchmarks.md").read_text()
    assert text.startswith("# Benchmarks\nintro\n") and text.endswith(f"{suite.DOC_END}\nnotes\n")
    assert "old" not in text and "| PK lookups, one connection | round trips/s |" in text
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in quick[0]
    else:
        png = quick[1] / "benchmarks.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "](benchmarks.png)" in text


def test_write_docs_appends_a_block_to_a_file_without_one(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n")
    suite.write_docs(["| a |"], doc)
    suite.write_docs(["| b |"], doc)  # the markers survive: it can run again
    text = doc.read_text()
    assert text == f"# Benchmarks\n\n{suite.DOC_START}\n| b |\n{suite.DOC_END}\n"


def test_plot_is_skipped_without_matplotlib(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert suite.plot(suite.Results(), suite.QUICK, tmp_path / "x.png") is False
    assert not (tmp_path / "x.png").exists()
