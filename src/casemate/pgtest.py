"""A throw-away PostgreSQL server on loopback, for tests and benchmarks.

:class:`PostgresServer` runs Debian's PostgreSQL (``/usr/lib/postgresql/*/bin``)
on 127.0.0.1 with TLS on (a self-signed certificate made with
:mod:`casemate.tls`), SCRAM password authentication, and its data in a
temporary folder; ``stop()`` removes everything.  As root it runs the
server as the ``postgres`` system user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from . import tls

__all__ = ["PostgresServer", "postgres_bin", "PostgresUnavailable"]


class PostgresUnavailable(RuntimeError):
    """PostgreSQL's server programs are not installed (tools/install-test-deps.sh installs them)."""


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise PostgresUnavailable("PostgreSQL is not installed: run tools/install-test-deps.sh "
                                  "(apt-get install postgresql)")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self, ssl: bool = True, prefix: tuple[str, ...] = (),
                 max_connections: int = 300) -> None:
        self.ssl = ssl
        self.max_connections = max_connections
        self.prefix = prefix  # e.g. ("taskset", "-c", "0"): the server inherits the pinning
        self.password = secrets.token_urlsafe(16)
        self.port = _free_port()
        self.base = Path(tempfile.mkdtemp(prefix="casemate-pg-"))
        self.data = self.base / "data"
        self.bin = postgres_bin()
        self._as_root = os.geteuid() == 0
        self.started = False

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {r.stdout}{r.stderr}")

    def pids(self) -> list[int]:
        """The postmaster and its children (for memory measurements)."""
        import psutil  # type: ignore[import-untyped]
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        main = psutil.Process(pid)
        return [pid] + [c.pid for c in main.children(recursive=True)]

    def _chown(self, path: Path) -> None:
        if self._as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def start(self) -> PostgresServer:
        self._chown(self.base)
        pwfile = self.base / "pw"
        pwfile.write_text(self.password + "\n")
        self._chown(pwfile)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                  "--locale=C.UTF-8")
        pwfile.unlink()
        if self.ssl:
            key = tls.generate_key()
            cert = tls.make_self_signed(key, "localhost", ["localhost", "127.0.0.1"])
            tls.write_key(self.data / "server.key", key)
            tls.write_cert(self.data / "server.crt", cert)
            for p in ("server.key", "server.crt"):
                self._chown(self.data / p)
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.base}'\n"
                    f"ssl = {'on' if self.ssl else 'off'}\n"
                    f"max_connections = {int(self.max_connections)}\n")
        self._run(*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.base / "postgres.log"), "-w", "start")
        self.started = True
        return self

    def dsn(self, sslmode: str = "disable", dbname: str = "postgres", user: str = "postgres",
            password: str | None = None) -> str:
        return (f"host=127.0.0.1 port={self.port} dbname={dbname} user={user} "
                f"password={password or self.password} sslmode={sslmode}")

    def stop(self) -> None:
        if self.started:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                      "stop")
            self.started = False
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
