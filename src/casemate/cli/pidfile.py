"""``Logs/server.pid``: which process serves a folder, believed only while that process holds it.

A pid written in a file outlives its process, and pids are reused: ``casemate cert
reload`` once sent SIGHUP to an unrelated process named by a stale file.  So the
server keeps the file open under an exclusive ``flock`` for its whole life (the
kernel drops the lock when the process ends, crash included), and a reader
believes the pid only when (1) the lock is held and (2) that very process has the
file open (``/proc/PID/fd``, where there is a /proc).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: a live pid is all we can check
    fcntl = None  # type: ignore[assignment]

__all__ = ["PID_FILE", "PidFile", "running_pid"]

PID_FILE = "server.pid"


class PidFile:
    """The running server's claim on its folder; :meth:`release` at exit."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    @classmethod
    def claim(cls, logs_dir: Path) -> PidFile | int:
        """Take the folder: a PidFile, or the pid of the server that already runs on it."""
        path = logs_dir / PID_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        for _ in range(20):  # a reader's brief check may hold the lock for a moment
            if _try_lock(fd, exclusive=True):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return cls(path, fd)
            time.sleep(0.05)
        other = running_pid(logs_dir)
        os.close(fd)
        return other or -1

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still locked: no reader sees a half-dead server
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _try_lock(fd: int, exclusive: bool) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holds(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open (True where /proc cannot tell)."""
    fds = Path(f"/proc/{pid}/fd")
    if not Path("/proc/self/fd").is_dir():
        return True
    target = str(path.resolve())
    try:
        return any(os.readlink(fds / fd) == target for fd in os.listdir(fds))
    except OSError:
        return False


def running_pid(logs_dir: Path) -> int | None:
    """The pid of the server running on this folder, or None (no file, stale file)."""
    path = logs_dir / PID_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if fcntl is not None and _try_lock(fd, exclusive=False):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None  # nobody holds it: the server that wrote it is gone
        pid = int(os.read(fd, 64).decode().strip() or "0")
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if pid <= 0 or not _alive(pid) or not _holds(pid, path):
        return None
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except OSError:
        return False
    return True
