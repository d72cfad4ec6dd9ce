"""``casemate backup DIR DEST`` and ``casemate restore BACKUP DIR``.

A backup is a folder: ``casemate.toml``, ``Data/data.sqlite``,
``Data/system.sqlite`` (users, groups, grants) and ``BACKUP_INFO.json``.  It
never contains ``Resources/`` (the private key stays on the server).  The copy
is taken with SQLite's online backup API inside one read transaction, so it
is a consistent snapshot while clients keep reading and writing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..database import PRIVATE_DIR, PRIVATE_FILE, PRIVATE_UMASK, make_private_dir
from ..storage import StorageError
from ..storage.sqlite import DATA_FILE, SYSTEM_FILE
from ..storage.sqlite_files import Snapshot, integrity_of_file
from .main import fail, open_folder
from .pidfile import running_pid

INFO_FILE = "BACKUP_INFO.json"


def _copy_db(src_path: Path, dst_path: Path, label: str) -> int:
    """Online, consistent copy of one SQLite file; returns its page count."""
    show = sys.stdout.isatty()
    with Snapshot(src_path) as snap, click.progressbar(
            length=max(snap.pages, 1), label=f"Copying {label}",
            file=None if show else open(os.devnull, "w")) as bar:  # noqa: SIM115
        done = [0]

        def progress(now: int) -> None:
            bar.update(now - done[0])
            done[0] = now
        snap.copy_to(dst_path, progress)
    return snap.pages


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
def backup(directory: Path, dest: Path) -> None:
    """Copy database DIRECTORY to DEST, consistently, while the server keeps running.

    The private key (Resources/) is NOT copied: keep it safe separately.
    """
    os.umask(PRIVATE_UMASK)  # the copy holds the data and the password verifiers
    folder = open_folder(directory)
    if folder.settings().storage.backend != "sqlite":
        fail("this database's data lives in PostgreSQL: back it up with PostgreSQL's tools "
             "(pg_dump, pg_basebackup), and keep Resources/ safe separately")
    if dest.exists() and any(dest.iterdir()):
        fail(f"{dest} is not empty; choose a new folder for the backup")
    for d in (dest, dest / "Data"):
        make_private_dir(d)
    dest.chmod(PRIVATE_DIR)  # also when it existed, empty
    t0 = time.monotonic()
    try:
        pages = {name: _copy_db(folder.data_dir / name, dest / "Data" / name, name)
                 for name in (DATA_FILE, SYSTEM_FILE)}
    except StorageError as e:
        fail(f"cannot copy the database: {e.message}")
        return
    shutil.copyfile(folder.settings_path, dest / "casemate.toml")
    check = integrity_of_file(dest / "Data" / DATA_FILE)
    info: dict[str, Any] = {
        "source": str(folder.path.resolve()),
        "taken_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "pages": pages, "integrity_check": check,
        "sha256": {name: _sha256(dest / "Data" / name) for name in (DATA_FILE, SYSTEM_FILE)},
        "note": "Resources/ (key.pem, cert.pem) is not included; back it up separately",
    }
    (dest / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    if check != "ok":
        fail(f"the copy failed its integrity check: {check}")
    size = sum(p.stat().st_size for p in (dest / "Data").iterdir())
    click.echo(f"Backup of {directory} written to {dest} ({size / 1e6:.1f} MB, "
               f"{time.monotonic() - t0:.1f} s); integrity check: ok")
    click.echo("Resources/ (the private key) was not copied: keep it safe separately.")


def _running_pid(folder_path: Path) -> int | None:
    return running_pid(folder_path / "Logs")


@click.command()
@click.argument("backup_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("directory", type=click.Path(path_type=Path))
def restore(backup_dir: Path, directory: Path) -> None:
    """Check BACKUP_DIR's integrity, then put it in place as database DIRECTORY.

    Refuses while a server runs on DIRECTORY.  An existing database's data files
    are kept in Data/before-restore-TIMESTAMP/.
    """
    os.umask(PRIVATE_UMASK)  # the restored data and verifiers are the server user's alone
    if not (backup_dir / INFO_FILE).exists():
        fail(f"{backup_dir} is not a Casemate backup (no {INFO_FILE})")
    sums = json.loads((backup_dir / INFO_FILE).read_text()).get("sha256", {})
    for name in (DATA_FILE, SYSTEM_FILE):
        path = backup_dir / "Data" / name
        if not path.is_file():
            fail(f"backup file {path} is missing; nothing was changed")
        if name in sums and _sha256(path) != sums[name]:
            fail(f"backup file {path} fails its integrity check: it changed since the "
                 "backup was taken (SHA-256 mismatch); nothing was changed")
        check = integrity_of_file(path)
        if check != "ok":
            fail(f"backup file {backup_dir / 'Data' / name} fails its integrity check: "
                 f"{check}; nothing was changed")
    if (pid := _running_pid(directory)) is not None:
        fail(f"a server (pid {pid}) is running on {directory}; stop it before restoring")
    data = directory / "Data"
    if data.exists():
        keep = data / f"before-restore-{dt.datetime.now():%Y%m%d-%H%M%S}"
        keep.mkdir()
        for p in data.iterdir():
            if p.is_file():
                shutil.move(p, keep / p.name)
        click.echo(f"Previous data files kept in {keep}")
    else:
        for d in (directory, data, directory / "Resources", directory / "Logs"):
            make_private_dir(d)
        shutil.copyfile(backup_dir / "casemate.toml", directory / "casemate.toml")
    for name in (DATA_FILE, SYSTEM_FILE):
        shutil.copyfile(backup_dir / "Data" / name, data / name)
        (data / name).chmod(PRIVATE_FILE)
    click.echo(f"Restored {backup_dir} into {directory}; integrity check: ok")
    if not (directory / "Resources" / "key.pem").exists():
        click.echo("Resources/ has no key: put the original key.pem/cert.pem back, or the "
                   "server generates a new pair (clients that pinned the old key will refuse "
                   "it until 'casemate trust forget').")
