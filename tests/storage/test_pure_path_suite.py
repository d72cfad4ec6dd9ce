"""The pure-Python row path, run through the server and client tests that exercise
results (batches, memory bounds, typed values, storage errors, both clients), in a
separate pytest with ``CASEMATE_PURE=1``, so the default suite covers both paths where
they differ.  The whole suite on the pure path: ``CASEMATE_PURE=1 python -m pytest``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from casemate.storage import sqlite_rows

ROOT = Path(__file__).resolve().parents[2]
RESULT_TESTS = [
    "tests/server/test_redteam_memory.py",
    "tests/server/test_storage_errors.py",
    "tests/server/test_sqlite_types.py",
    "tests/server/test_sessions.py",
    "tests/test_clients_same.py",
    "tests/storage/test_sqlite_rows.py",
]


@pytest.mark.skipif(not sqlite_rows.COMPILED, reason="this run is on the pure path already")
def test_result_tests_pass_on_the_pure_path(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        "--basetemp", str(tmp_path / "t"), *RESULT_TESTS], cwd=ROOT,
                       env={**os.environ, "CASEMATE_PURE": "1"}, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout.splitlines()[-1]
