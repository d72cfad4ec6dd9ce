"""Shared fixtures: temporary database folders and real server processes on port 0."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from casemate.database import create_database
from casemate.testing import ADMIN_PASSWORD, ServerProcess

__all__ = ["ADMIN_PASSWORD", "ServerProcess", "set_setting"]


@pytest.fixture(autouse=True)
def casemate_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Client state (known_servers, passwords) lives in a fresh folder for every test."""
    home = tmp_path / "client-home"
    monkeypatch.setenv("CASEMATE_HOME", str(home))
    monkeypatch.delenv("CASEMATE_PASSWORD", raising=False)
    return home


def set_setting(db: Path, key: str, value: str) -> None:
    """Rewrite ``key = ...`` in casemate.toml (value is TOML text)."""
    p = db / "casemate.toml"
    text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", p.read_text())
    assert n == 1, key
    p.write_text(text)


@pytest.fixture
def make_db(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Factory: a new database folder; ``encrypted=True`` switches encryption on."""
    counter = iter(range(1000))

    def make(encrypted: bool = False, name: str | None = None) -> Path:
        path = tmp_path / f"db{next(counter)}"
        create_database(path, name, ADMIN_PASSWORD)
        if encrypted:
            set_setting(path, "encrypt_client_server_connections", "true")
        return path
    return make


@pytest.fixture
def server_factory() -> Iterator:  # type: ignore[type-arg]
    started: list[ServerProcess] = []

    def start(db: Path, port: int = 0, extra: tuple[str, ...] = ()) -> ServerProcess:
        s = ServerProcess(db, port, extra).start()
        started.append(s)
        return s
    yield start
    for s in started:
        s.stop()


@pytest.fixture
def plain_server(make_db, server_factory) -> ServerProcess:  # type: ignore[no-untyped-def]
    return server_factory(make_db())


@pytest.fixture
def tls_server(make_db, server_factory) -> ServerProcess:  # type: ignore[no-untyped-def]
    return server_factory(make_db(encrypted=True))
