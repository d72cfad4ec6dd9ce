"""The TLS-layer micro-benchmark runs in quick mode: both ways exchanged real TLS records
(through TLSServerProtocol and with the same SSL calls made directly) and it reports the
layer's own cost.  No speed is asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_reports_both_ways_and_the_difference() -> None:
    r = subprocess.run([sys.executable, "-m", "bench.tls_layer_bench", "--quick"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("layer", "folded"):
        m = re.search(rf"(?m)^  {name}: (\d+\.\d\d) us", r.stdout)
        assert m and float(m.group(1)) > 0, r.stdout
    assert re.search(r"the layer's own cost: -?\d+\.\d\d us per round trip", r.stdout)
