"""SQLAlchemy's own dialect compliance suite against a real server (about 30 s).

The suite runs in its own pytest process (compliance/run.py: its own rootdir,
requirements class and provisioning).  Only the failures listed, with their
reasons, in compliance/expected.py are allowed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sqlalchemy_dialect.compliance.expected import KNOWN_FAILURES

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_sqlalchemy_compliance_suite() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.sqlalchemy_dialect.compliance.run", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=280)
    out = proc.stdout + proc.stderr
    summary = re.search(r"(?m)^=*\s*(.*\d+ passed.*) in [\d.]+s", out)
    assert summary, out[-3000:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (\w+)", summary.group(1))}
    assert counts["passed"] >= 1100, summary.group(1)
    unexpected = []
    for kind, cls, test in re.findall(
            r"(?m)^(FAILED|ERROR) \S*suite_casemate\.py::(\w+?)_sqlite\+\S*?::(\w+)", out):
        if (cls, test) not in KNOWN_FAILURES:
            unexpected.append(f"{kind} {cls}::{test}")
    assert not unexpected, "\n".join(unexpected) + "\n" + out[-5000:]
    assert proc.returncode in (0, 1), out[-3000:]
