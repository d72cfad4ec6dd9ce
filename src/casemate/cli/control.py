"""``casemate serve --detach`` and ``casemate stop``: a server run and stopped like pg_ctl's.

``serve --detach`` starts the same ``casemate serve`` in a new session (no terminal,
so a Ctrl-C or a closed terminal does not reach it), with its standard output and
errors in ``Logs/console.log``, and returns once the server listens (printing what
it printed) or has failed (printing why).  ``stop`` signals only a process that holds
``Logs/server.pid`` (see pidfile.py): a stale file names a process that may be
anything by now, and is never signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

import click

from .main import fail, open_folder
from .pidfile import PID_FILE, running_pid

__all__ = ["detach", "stop", "CONSOLE_LOG"]

CONSOLE_LOG = "console.log"
DETACHED_FLAG = "--detached-child"  # hidden: tells the child it has no terminal


def detach(directory: Path, args: list[str], timeout: float = 60) -> NoReturn:
    """Start ``casemate serve DIRECTORY *args`` in the background; exit 0 once it listens."""
    folder = open_folder(directory)
    folder.logs_dir.mkdir(exist_ok=True)
    path = folder.logs_dir / CONSOLE_LOG
    with open(path, "ab") as out:
        start = out.tell()
        proc = subprocess.Popen(
            [sys.executable, "-m", "casemate", "serve", str(directory), *args, DETACHED_FLAG],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = _read_from(path, start)
        if proc.poll() is not None:
            click.echo(text, nl=False)
            fail(f"the server did not start (exit code {proc.returncode}; its output is in "
                 f"{path})", 2)
        if "listening on" in text and text.endswith("\n") and _settled(path, text, start):
            click.echo(_read_from(path, start), nl=False)
            click.echo(f"Server running in the background (pid {proc.pid}); output in {path}; "
                       f"stop it with: casemate stop {directory}")
            sys.exit(0)
        time.sleep(0.05)
    fail(f"the server (pid {proc.pid}) did not report listening within {timeout:g} s; "
         f"see {path} (casemate stop {directory} stops it)", 2)
    raise AssertionError("unreachable")


def _read_from(path: Path, start: int) -> str:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read().decode("utf-8", "replace")


def _settled(path: Path, text: str, start: int) -> bool:
    """The startup lines after "listening on" (web page, fingerprints) are written at once:
    wait until the output stops growing for a moment."""
    time.sleep(0.2)
    return _read_from(path, start) == text


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--timeout", type=click.IntRange(1, 3600), default=60, show_default=True,
              help="Seconds to wait for the server to end.")
def stop(directory: Path, timeout: int) -> None:
    """Stop the server running on database folder DIRECTORY and wait until it has ended.

    The server gets SIGTERM (as from Ctrl-C): open transactions are rolled back and
    clients are told.  Only the process that holds DIRECTORY/Logs/server.pid is
    signalled.  Exit code 1 if no server runs there or it is still running after
    --timeout seconds.
    """
    folder = open_folder(directory)
    pid = running_pid(folder.logs_dir)
    if pid is None:
        fail(f"no server is running on {directory} (no server holds Logs/{PID_FILE})")
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        click.echo(f"The server (pid {pid}) has already ended.")
        return
    except PermissionError:
        fail(f"not allowed to signal the server (pid {pid}): run 'casemate stop' as the "
             "user the server runs as")
    click.echo(f"Stopping the server (pid {pid})...")
    deadline = time.monotonic() + timeout
    while running_pid(folder.logs_dir) == pid:
        if time.monotonic() > deadline:
            fail(f"the server (pid {pid}) is still running after {timeout} s; see "
                 f"{folder.logs_dir / 'server.log'}")
        time.sleep(0.05)
    click.echo("Server stopped.")
