"""``$CASEMATE_HOME/known_servers``: what each server looked like when last met.

One line per server, ``host:port mode fingerprint``::

    db.example.com:19812 encrypted sha256:5f1c...e2
    localhost:19812 plain -

``encrypted`` lines pin the server's public key (SHA-256 of its
SubjectPublicKeyInfo, so a renewed certificate with the same key still
matches) and forbid plaintext from then on.  ``plain`` lines only save a
round trip: a plain server may always become encrypted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .params import casemate_home

__all__ = ["KnownServer", "KnownServers"]


@dataclass(frozen=True)
class KnownServer:
    key: str
    mode: str  # "encrypted" or "plain"
    fingerprint: str | None


class KnownServers:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or casemate_home() / "known_servers"

    def _read(self) -> dict[str, KnownServer]:
        out: dict[str, KnownServer] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 3 or line.startswith("#"):
                continue
            key, mode, fp = parts
            out[key] = KnownServer(key, mode, None if fp == "-" else fp)
        return out

    def get(self, key: str) -> KnownServer | None:
        return self._read().get(key)

    def all(self) -> list[KnownServer]:
        return sorted(self._read().values(), key=lambda k: k.key)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, KnownServer]]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self._read()
            yield entries
            tmp = self.path.with_suffix(".tmp")
            lines = ["# Casemate known servers: host:port mode key-fingerprint"]
            lines += [f"{e.key} {e.mode} {e.fingerprint or '-'}"
                      for e in sorted(entries.values(), key=lambda e: e.key)]
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)

    def record(self, key: str, mode: str, fingerprint: str | None) -> None:
        """Remember a server; never turns an ``encrypted`` entry back into ``plain``."""
        if self.get(key) == KnownServer(key, mode, fingerprint):
            return  # nothing new: no rewrite (and no lock) on every connect
        with self._locked() as entries:
            old = entries.get(key)
            if mode == "plain" and old is not None and old.mode == "encrypted":
                return
            entries[key] = KnownServer(key, mode, fingerprint)

    def forget(self, key: str) -> bool:
        with self._locked() as entries:
            return entries.pop(key, None) is not None
