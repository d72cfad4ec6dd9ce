"""The database folder is private to the server's user, like PostgreSQL's data directory:
folders 0700 and files 0600 for what init, the server (WAL, shared memory, logs, audit, pid),
backup and restore create, even under a permissive umask; a server that finds them wider
says so at start."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from casemate.database import create_database
from tests.conftest import ADMIN_PASSWORD, ServerProcess


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    old = os.umask(0o022)  # what most shells give: files 0644, folders 0755
    yield
    os.umask(old)


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "casemate", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def wide(root: Path) -> list[str]:
    """Every folder or file under ``root`` that group or others may use."""
    out = []
    for p in [root, *root.rglob("*")]:
        if p.name == "cert.pem" or p.is_symlink():
            continue  # the certificate is public; inside a 0700 folder all the same
        if stat.S_IMODE(p.stat().st_mode) & 0o077:
            out.append(f"{p.relative_to(root.parent)} {stat.S_IMODE(p.stat().st_mode):o}")
    return out


def test_init_server_backup_restore_create_private_files(tmp_path: Path) -> None:
    db = tmp_path / "db"
    r = _cli("init", db, "--admin-password", ADMIN_PASSWORD)
    assert r.returncode == 0, r.stderr
    assert wide(db) == []
    s = ServerProcess(db).start()
    try:
        with s.connect() as conn:
            conn.execute("CREATE TABLE t (x)")
            conn.execute("INSERT INTO t VALUES (1)")
            conn.commit()
            names = {p.name for p in (db / "Data").iterdir()}
            assert {"data.sqlite-wal", "data.sqlite-shm"} <= names
            assert {"server.log", "audit.jsonl", "server.pid"} <= {
                p.name for p in (db / "Logs").iterdir()}
            assert wide(db) == []
            r = _cli("backup", db, tmp_path / "bk")
            assert r.returncode == 0, r.stderr
    finally:
        s.stop()
    assert wide(tmp_path / "bk") == []
    for target in (tmp_path / "new", db):
        r = _cli("restore", tmp_path / "bk", target)
        assert r.returncode == 0, r.stderr
        assert wide(target) == []


def test_library_create_database_is_private(tmp_path: Path) -> None:
    create_database(tmp_path / "lib", None, ADMIN_PASSWORD)
    assert wide(tmp_path / "lib") == []


def test_server_warns_about_wider_modes(tmp_path: Path) -> None:
    db = tmp_path / "db"
    create_database(db, None, ADMIN_PASSWORD)
    (db / "Data").chmod(0o755)
    (db / "Data" / "system.sqlite").chmod(0o644)
    db.chmod(0o755)
    s = ServerProcess(db).start()
    try:
        with s.connect() as conn:
            conn.execute("SELECT 1")
    finally:
        s.stop()
    log = (db / "Logs" / "server.log").read_text()
    for p, mode in ((db / "Data", "700"), (db / "Data" / "system.sqlite", "600"), (db, "700")):
        assert f"{p} is open to group or others" in log and f"chmod {mode} {p}" in log, log
    assert "data.sqlite is open" not in log
