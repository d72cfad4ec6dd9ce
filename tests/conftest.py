"""Shared fixtures: temporary database folders and real server processes on port 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import casemate
from casemate.database import create_database

ADMIN_PASSWORD = "admin-secret-pw"


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


class ServerProcess:
    """A real ``casemate serve`` process on a free port."""

    def __init__(self, db: Path, port: int = 0, extra: tuple[str, ...] = ()) -> None:
        self.db = db
        self.port = port
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def start(self, timeout: float = 20) -> ServerProcess:
        cmd = [sys.executable, "-m", "casemate", "serve", str(self.db), "--port",
               str(self.port), *self.extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("server exited:\n" + "".join(self.output))
            self.output.append(line)
            m = re.search(r"listening on (\S+):(\d+), (\w+)", line)
            if m:
                self.port = int(m.group(2))
                self.mode = m.group(3)
                self._drain()
                return self
        raise RuntimeError("server did not start:\n" + "".join(self.output))

    def _drain(self) -> None:
        import threading

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()

    @property
    def url(self) -> str:
        return f"casemate://admin:{ADMIN_PASSWORD}@127.0.0.1:{self.port}"

    def connect(self, **kw: object) -> casemate.Connection:
        return casemate.connect(self.url, **kw)  # type: ignore[arg-type]

    def log(self) -> str:
        return "".join(self.output)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        pump = getattr(self, "_pump", None)
        if pump is not None:
            pump.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None
        return rc

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


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
