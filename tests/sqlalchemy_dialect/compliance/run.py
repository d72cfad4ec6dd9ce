"""Run SQLAlchemy's dialect compliance suite against a fresh Casemate server.

    python -m tests.sqlalchemy_dialect.compliance.run [--async] [--encrypted] [pytest args]

Creates a database in a temporary folder, starts ``casemate serve`` on a free
port, and runs ``suite_casemate.py`` (``from sqlalchemy.testing.suite import *``)
with this folder's pytest.ini / test.cfg.  The exit status is pytest's.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    use_async = "--async" in argv
    encrypted = "--encrypted" in argv
    args = [a for a in argv if a not in ("--async", "--encrypted")]
    with tempfile.TemporaryDirectory(prefix="casemate-compliance-") as tmp:
        os.environ["CASEMATE_HOME"] = str(Path(tmp) / "home")
        from casemate.database import create_database
        from casemate.testing import ADMIN_PASSWORD, ServerProcess
        db = Path(tmp) / "db"
        create_database(db, None, ADMIN_PASSWORD)
        if encrypted:
            toml = db / "casemate.toml"
            text, n = re.subn(r"(?m)^encrypt_client_server_connections = .*$",
                              "encrypt_client_server_connections = true", toml.read_text())
            assert n == 1, "setting not found in casemate.toml"
            toml.write_text(text)
        server = ServerProcess(db).start()
        print(f"casemate server on port {server.port}: {server.mode}", flush=True)
        try:
            scheme = "casemate+async" if use_async else "casemate"
            url = f"{scheme}://admin:{ADMIN_PASSWORD}@127.0.0.1:{server.port}"
            return int(pytest.main([
                "-c", str(HERE / "pytest.ini"), "--rootdir", str(HERE),
                "-p", "tests.sqlalchemy_dialect.compliance.plugin",
                "--dburi", url, str(HERE / "suite_casemate.py"), *args]))
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
