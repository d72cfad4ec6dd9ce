"""Helpers for the web administration tests (real ``casemate serve`` processes)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from casemate.settings_file import set_toml_value

CLERK_PASSWORD = "clerk-secret-pw"


def set_value(db: Path, section: str, key: str, value: Any) -> None:
    """Set ``[section] key`` in casemate.toml (``port`` and ``listen`` exist in two sections)."""
    p = db / "casemate.toml"
    p.write_text(set_toml_value(p.read_text(encoding="utf-8"), section, key, value),
                 encoding="utf-8")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_web_db(make_db: Any, encrypted: bool = False, web_port: int = 0,
                   clerk: bool = False, name: str | None = None,
                   **settings: tuple[str, str, Any]) -> Path:
    """A database with the web page enabled on ``web_port`` (0: a free one).

    ``clerk``: also a user "clerk" of the readwrite group; ``settings``: more
    (section, key, value) triples to write into casemate.toml.
    """
    db: Path = make_db(encrypted=encrypted, name=name)
    set_value(db, "admin_web", "enabled", True)
    set_value(db, "admin_web", "port", web_port)
    for section, key, value in settings.values():
        set_value(db, section, key, value)
    if clerk:
        subprocess.run([sys.executable, "-m", "casemate", "user", "add", str(db), "clerk",
                        "--group", "readwrite", "--password", CLERK_PASSWORD],
                       check=True, capture_output=True, timeout=30)
    return db


def web_url(server: Any, timeout: float = 10) -> str:
    """The URL from the server's "Web administration on URL" line (printed after it listens)."""
    deadline = time.monotonic() + timeout
    while True:
        urls = re.findall(r"Web administration on (\S+)", server.log())
        if urls:
            return str(urls[-1])
        if time.monotonic() > deadline:
            raise AssertionError("no 'Web administration on' line:\n" + server.log())
        time.sleep(0.05)
