"""Run real Casemate server processes from tests, benchmarks and tools.

:class:`ServerProcess` starts ``python -m casemate serve DIR --port N`` and
waits for the line announcing the address; it is what the test suite, the
benchmarks and the crash harness use, so they all exercise the real server.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import casemate

__all__ = ["ServerProcess", "ADMIN_PASSWORD"]

ADMIN_PASSWORD = "admin-secret-pw"


class ServerProcess:
    """A real ``casemate serve`` process on a free port."""

    def __init__(self, db: Path, port: int = 0, extra: tuple[str, ...] = (),
                 password: str = ADMIN_PASSWORD, prefix: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.db = db
        self.env = env or {}  # added to this process's environment (CASEMATE_PURE, ...)
        self.password = password
        self.prefix = prefix  # e.g. ("taskset", "-c", "0") to pin the server
        self.port = port
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def start(self, timeout: float = 20) -> ServerProcess:
        cmd = [*self.prefix, sys.executable, "-m", "casemate", "serve", str(self.db), "--port",
               str(self.port), *self.extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                self.stop()
                raise RuntimeError("server exited:\n" + "".join(self.output))
            self.output.append(line)
            m = re.search(r"listening on (\S+):(\d+), (\w+)", line)
            if m:
                self.port = int(m.group(2))
                self.mode = m.group(3)
                self._drain()
                return self
        self.stop()
        raise RuntimeError("server did not start:\n" + "".join(self.output))

    def _drain(self) -> None:
        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()

    @property
    def url(self) -> str:
        return f"casemate://admin:{self.password}@127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def connect(self, **kw: Any) -> casemate.Connection:
        return casemate.connect(self.url, **kw)

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
