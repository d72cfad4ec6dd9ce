"""The echo-floor benchmark runs in quick mode: four real echo servers (plain, Casemate's
TLS layer, the event loop's TLS, blocking SSLSocket) answer through the client's own socket
code, and each gets a row of figures.  No speed is asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_reports_every_echo_server() -> None:
    r = subprocess.run([sys.executable, "-m", "bench.floor_bench", "--quick"], cwd=ROOT,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    for kind in ("plain", "casemate-tls", "uvloop-tls", "blocking-tls"):
        m = re.search(rf"(?m)^\| {kind} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|$",
                      r.stdout)
        assert m, r.stdout
        assert float(m.group(3)) > 0  # a wall time was measured for it
    assert re.search(r"(?m)^\| plain \|.*\| 1\.00x \|$", r.stdout)
