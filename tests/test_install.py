"""``pip install .`` where no C compiler exists still installs, with the pure-Python row
path and protocol core and a one-line notice (issue 16); with a compiler the extensions are
built (the test suite itself runs on such an install: tests/storage/test_sqlite_rows.py and
tests/protocol/test_core_twins.py check it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_install_without_a_compiler_falls_back_to_pure_python(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "*.so", "_sqlite_rows.c", "_core.c", "__pycache__", "*.egg-info", ".*cache"))
    venv = tmp_path / "venv"
    # The venv sees this environment's packages (pip and the dependencies); the build
    # requirements (setuptools, Cython) come as for any install; its own install of
    # casemate comes first on its path.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)],
                   check=True, timeout=120)
    py = venv / "bin" / "python"
    env = {**os.environ, "CC": "/bin/false", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("CASEMATE_PURE", None)
    r = subprocess.run([str(py), "-m", "pip", "install", "-v", "--no-deps", str(src)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    notices = [line for line in (r.stdout + r.stderr).splitlines()
               if "casemate: the compiled parts were not built" in line]
    assert len(notices) == 1 and "installing the pure-Python ones" in notices[0], notices
    r = subprocess.run([str(py), "-c", "import casemate.storage.sqlite_rows as m; "
                        "import casemate.protocol.core as c; "
                        "print(m.__file__); print(m.ROW_PATH); print(c.PROTOCOL_CORE)"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    where, path, core = r.stdout.splitlines()
    assert where.startswith(str(venv))  # the install under test, not this checkout
    assert path.startswith("pure Python: not built")
    assert core.startswith("pure Python: not built")
