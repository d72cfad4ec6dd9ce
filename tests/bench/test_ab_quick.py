"""The server A/B runs end to end in quick mode.

No speed is asserted; what is asserted is that both servers ran every workload (a row
per figure with both medians and a paired difference), that each says which code it
runs, and that a base that is not a source tree is refused with a clear message.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_measures_both_servers_on_every_workload(tmp_path: Path) -> None:
    home = tmp_path / "home"  # the user's: the throw-away servers' keys must not land here
    r = subprocess.run([sys.executable, "-m", "bench.ab", "--base-src", str(ROOT / "src"),
                        "--quick", "--clients", "8"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "CASEMATE_HOME": str(home)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (home / "known_servers").exists()
    assert re.search(r"(?m)^  head: .*row path: ", r.stdout), r.stdout
    assert re.search(r"(?m)^  base: .*row path: ", r.stdout), r.stdout
    rows = re.findall(r"(?m)^\| (lookups|writes|mix) \| ([^|]+) \| ([\d,.]+) .*\| "
                      r"(\d+\.\d{3}x|–) \| ([+-]\d+\.\d\d) \|$", r.stdout)
    assert {w for w, *_ in rows} == {"lookups", "writes", "mix"}, r.stdout
    assert len(rows) == 9, r.stdout
    # Rates are always measured; a CPU figure of a short round may read no 10 ms tick
    # (no ratio then, rather than a division by zero).
    rates = [ratio for _, figure, _, ratio, _ in rows if figure.strip() == "operations/s"]
    assert len(rates) == 3 and all(float(r.rstrip("x")) > 0 for r in rates), r.stdout


def test_a_base_that_is_no_source_tree_is_refused(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "bench.ab", "--base-src", str(tmp_path),
                        "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "no casemate package there" in r.stderr


def test_a_revision_git_does_not_know_is_refused() -> None:
    r = subprocess.run([sys.executable, "-m", "bench.ab", "--base", "no-such-revision-x",
                        "--quick", "--workloads", "lookups"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0
    assert "cannot check out 'no-such-revision-x'" in r.stderr


def test_ops_below_one_is_refused() -> None:
    r = subprocess.run([sys.executable, "-m", "bench.ab", "--base-src", str(ROOT / "src"),
                        "--quick", "--ops", "0"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0
    assert "--ops must be at least 1" in r.stderr


def test_quick_client_side_run_measures_both_clients(tmp_path: Path) -> None:
    """--side client: one server, each round's workload run by a child process on the
    head's and on the base's client code (the child says which code it ran)."""
    home = tmp_path / "home"
    r = subprocess.run([sys.executable, "-m", "bench.ab", "--base-src", str(ROOT / "src"),
                        "--quick", "--side", "client", "--workloads",
                        "lookups,writes,connects"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "CASEMATE_HOME": str(home)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "client side" in r.stdout and "the clients head's and base's" in r.stdout
    assert len(re.findall(r"(?m)^  (?:server): .*row path: ", r.stdout)) == 1, r.stdout
    rows = re.findall(r"(?m)^\| (lookups|writes|connects) \| ([^|]+) \| ([\d,.]+) .*\| "
                      r"(\d+\.\d{3}x|–) \| ([+-]\d+\.\d\d) \|$", r.stdout)
    assert {w for w, *_ in rows} == {"lookups", "writes", "connects"}, r.stdout
    assert len(rows) == 9, r.stdout


def test_the_client_side_runs_no_mix() -> None:
    r = subprocess.run([sys.executable, "-m", "bench.ab", "--base-src", str(ROOT / "src"),
                        "--quick", "--side", "client"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0
    assert "--side client runs no mix" in r.stderr
