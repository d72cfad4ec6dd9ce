"""The server-method benchmark runs end to end in quick mode and prints its ratio.

No speed is asserted (a test machine's speed says nothing); what is asserted
is that it ran both variants over an encrypted connection and printed
medians, spreads and a ratio.  It runs in a subprocess so its CPU pinning
does not leak into the test session.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_methods_bench_quick() -> None:
    r = subprocess.run([sys.executable, "-m", "bench.methods_bench", "--quick"], cwd=ROOT,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert re.search(r"(?m)^  connection: encrypted \(TLS", out), out
    for variant in ("method", "round trips"):
        m = re.search(rf"(?m)^  {variant} +median +(\d+\.\d+) ms per unit "
                      r"\(spread (\d+\.\d+)-(\d+\.\d+) ms\)", out)
        assert m, out
        median, low, high = (float(g) for g in m.groups())
        assert 0 < low <= median <= high, out
    ratio = re.search(r"(?m)^RATIO method speed-up: (\d+\.\d)x \(one call instead of 21 "
                      r"statements\)$", out)
    assert ratio and float(ratio.group(1)) > 0, out


def test_methods_bench_rejects_bad_arguments() -> None:
    r = subprocess.run([sys.executable, "-m", "bench.methods_bench", "--n", "0"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--n, --rounds and --reps must be at least 1" in r.stderr
