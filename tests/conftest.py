"""Shared fixtures: temporary database folders and real server processes on port 0."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from casemate.database import create_database
from casemate.testing import ADMIN_PASSWORD, ServerProcess

__all__ = ["ADMIN_PASSWORD", "HAVE_V6", "ServerProcess", "client_running", "end_process",
           "set_setting", "worst_wait_during"]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAVE_V6 = _ipv6_loopback()  # tests on ::1 are skipped (or left out) without it


class Stall(NamedTuple):
    worst: float  # the victim's longest one-row query (s)
    took: float  # the attack's duration (s)
    queries: int  # the victim's queries meanwhile


def worst_wait_during(attacker_call: Callable[[], Any], victim: Any) -> Stall:
    """How long one session stalls the others: the victim's one-row queries while
    attacker_call runs in another thread (an exception there fails the caller)."""
    done = threading.Event()
    took: list[float] = []
    failed: list[BaseException] = []

    def attack() -> None:
        t0 = time.perf_counter()
        try:
            attacker_call()
        except BaseException as e:  # noqa: BLE001 - reported in the test's thread
            failed.append(e)
        finally:
            took.append(time.perf_counter() - t0)
            done.set()
    threading.Thread(target=attack, daemon=True).start()
    worst = 0.0
    n = 0
    while not done.is_set():
        t0 = time.perf_counter()
        victim.execute("SELECT 1").fetchall()
        worst = max(worst, time.perf_counter() - t0)
        n += 1
        time.sleep(0.002)
    if failed:
        raise failed[0]
    return Stall(worst, took[0], n)


class PeakRss:
    """The largest resident size a process reaches while the ``with`` block runs, and its
    growth over the size at the start (bytes)."""

    def __init__(self, pid: int, every: float = 0.005) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.every = every
        self.base = self.peak = self.proc.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.every)

    @property
    def grown(self) -> int:
        return self.peak - self.base

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def client_running(url: str, sql: str, **kw: Any) -> subprocess.Popen[str]:
    """A client process that connects and runs ``sql`` (endless: the test ends it)."""
    code = (f"import casemate; c = casemate.connect({url!r}, **{kw!r}); print('go', flush=True);"
            f" c.execute({sql!r})")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "go"
    return p


def end_process(p: subprocess.Popen[str]) -> None:
    p.kill()
    p.wait()
    assert p.stdout is not None
    p.stdout.close()


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


def items_for_clerks(admin: Any) -> None:
    """Where the rights tests start: table items with one row (1, 'apple') and a group
    clerks that may SELECT from it (``admin``: an admin's connection)."""
    admin.execute("CREATE TABLE items (id integer PRIMARY KEY, name text)")
    admin.execute("INSERT INTO items VALUES (1, 'apple')")
    admin.commit()
    admin.admin("group_add", name="clerks")
    admin.admin("grant", group="clerks", table="items", privileges=["SELECT"])


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
