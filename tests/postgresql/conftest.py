"""A real PostgreSQL (Debian's, started on loopback with TLS) per test module."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from casemate.pgtest import PostgresServer, PostgresUnavailable, postgres_bin
from casemate.testing import ServerProcess

__all__ = ["ADMIN_PW", "cli", "dsn_of", "init_folder"]

ADMIN_PW = "admin-pg-pw"  # the admin of the folders the `server` fixture makes


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    try:
        postgres_bin()
    except PostgresUnavailable as e:
        pytest.skip(f"PostgreSQL server programs are missing: {e}")
    server = PostgresServer(ssl=True).start()
    try:
        yield server
    finally:
        server.stop()


def dsn_of(pg: PostgresServer, sslmode: str = "require", dbname: str = "postgres",
           user: str = "postgres", port: int | None = None) -> str:
    """A DSN without the password (Casemate reads that from the environment or a file)."""
    return (f"host=127.0.0.1 port={port or pg.port} dbname={dbname} user={user} "
            f"sslmode={sslmode}")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "CASEMATE_PG_PASSWORD"}
    return subprocess.run([sys.executable, "-m", "casemate", *args], capture_output=True,
                          text=True, timeout=120, env={**full, **(env or {})})


def init_folder(pg: PostgresServer, path: Path, admin_password: str, **dsn: str
                ) -> subprocess.CompletedProcess[str]:
    return cli("init", str(path), "--storage", "postgresql", "--dsn", dsn_of(pg, **dsn),
               "--admin-password", admin_password, env={"CASEMATE_PG_PASSWORD": pg.password})


@pytest.fixture
def server(pg: PostgresServer, tmp_path: Path) -> Iterator[ServerProcess]:
    """A Casemate server on a fresh folder backed by ``pg`` (admin password ADMIN_PW); a
    test module may define its own ``server`` instead."""
    r = init_folder(pg, tmp_path / "db", ADMIN_PW)
    assert r.returncode == 0, r.stderr
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CASEMATE_PG_PASSWORD", pg.password)
        s = ServerProcess(tmp_path / "db", password=ADMIN_PW).start()
    yield s
    s.stop()
