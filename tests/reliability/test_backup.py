"""``casemate backup`` while writers commit, and ``casemate restore``: every row committed
before the backup began is restored, the copy is one consistent snapshot, and restore refuses
a corrupted backup or a folder with a running server without changing anything."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import casemate
from casemate.storage.sqlite import DATA_FILE, SYSTEM_FILE
from tests.conftest import ServerProcess

WRITERS = 4
FILLER_ROWS = 20_000  # ~20 MB, so the copy takes many backup steps while writers commit


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "casemate", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def _writer(url: str, wid: int, acked: list[int], stop: threading.Event,
            errors: list[BaseException]) -> None:
    try:
        with casemate.connect(url) as conn:
            cur = conn.cursor()
            seq = 0
            while not stop.is_set():
                seq += 1
                cur.execute("INSERT INTO acks (writer, seq) VALUES (?, ?)", (wid, seq))
                conn.commit()
                acked.append(seq)  # acknowledged by the server: committed
    except BaseException as e:  # noqa: BLE001 - reported by the test
        errors.append(e)


def _snapshot(acked: dict[int, list[int]]) -> set[tuple[int, int]]:
    return {(w, s) for w, seqs in acked.items() for s in list(seqs)}


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its SHA-256: to prove that nothing changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _integrity(path: Path) -> str:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return "; ".join(r[0] for r in con.execute("PRAGMA integrity_check"))
    finally:
        con.close()


def test_backup_under_writers_then_restore(make_db, server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = make_db(encrypted=True)  # so that Resources/ holds a private key the backup must skip
    server = server_factory(db)
    assert (db / "Resources" / "key.pem").read_text().count("PRIVATE KEY") >= 1
    with server.connect() as conn:
        conn.execute("CREATE TABLE acks (writer INTEGER, seq INTEGER, PRIMARY KEY (writer, seq))")
        conn.execute("CREATE TABLE filler (id INTEGER PRIMARY KEY, pad BLOB)")
        conn.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<?) "
                     "INSERT INTO filler SELECT x, randomblob(1000) FROM c", (FILLER_ROWS,))

    acked: dict[int, list[int]] = {w: [] for w in range(WRITERS)}
    errors: list[BaseException] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_writer, args=(server.url, w, acked[w], stop, errors))
               for w in range(WRITERS)]
    for t in threads:
        t.start()
    dest = tmp_path / "backup"
    try:
        deadline = time.monotonic() + 20
        while min(len(s) for s in acked.values()) < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        before = _snapshot(acked)  # committed before the backup began
        assert all(any(w == x for x, _ in before) for w in acked), "a writer never committed"
        result = _cli("backup", db, dest)
        after = _snapshot(acked)
        time.sleep(0.2)  # writers keep going after the backup too
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors
    assert result.returncode == 0, result.stdout + result.stderr
    assert "integrity check: ok" in result.stdout
    assert len(after) > len(before), "no writer committed while the backup ran"

    # The backup holds no key material and no Resources/.
    assert not (dest / "Resources").exists()
    for p in dest.rglob("*"):
        if p.is_file():
            assert b"PRIVATE KEY" not in p.read_bytes(), p
    files = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
    assert set(files) == {
        "BACKUP_INFO.json", "casemate.toml", f"Data/{DATA_FILE}", f"Data/{SYSTEM_FILE}"}

    # Restore into a new folder, serve it, check the rows.
    target = tmp_path / "restored"
    r = _cli("restore", dest, target)
    assert r.returncode == 0, r.stdout + r.stderr
    restored = server_factory(target)
    assert restored.mode == "encrypted"  # the settings came along; a new key was generated
    with restored.connect() as conn:
        rows = set(conn.execute("SELECT writer, seq FROM acks").fetchall())
        assert conn.execute("SELECT count(*) FROM filler").fetchone() == (FILLER_ROWS,)
    missing = before - rows
    assert not missing, f"{len(missing)} rows committed before the backup are missing"
    # One snapshot: for each writer, the rows form 1..k with no gap, and nothing unknown.
    for w in range(WRITERS):
        seqs = sorted(s for x, s in rows if x == w)
        assert seqs == list(range(1, len(seqs) + 1)), f"writer {w}: not a consistent snapshot"
        assert len(seqs) <= len(acked[w]) + 1  # at most the one commit in flight
    assert rows <= after | {(w, len(acked[w]) + 1) for w in acked}
    restored.stop()
    assert _integrity(target / "Data" / DATA_FILE) == "ok"
    assert _integrity(target / "Data" / SYSTEM_FILE) == "ok"

    # Restore refuses while a server runs on the target, and changes nothing.
    assert server.proc is not None and server.proc.poll() is None
    state = _tree(db / "Data")
    r = _cli("restore", dest, db)
    assert r.returncode != 0
    assert "running" in (r.stdout + r.stderr)
    assert _tree(db / "Data") == state


def test_restore_refuses_a_corrupted_backup(make_db, server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    server = server_factory(db)
    with server.connect() as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.cursor().executemany("INSERT INTO t VALUES (?, ?)",
                                  [(i, f"value {i}") for i in range(20_000)])
    good = tmp_path / "good"
    r = _cli("backup", db, good)
    assert r.returncode == 0, r.stdout + r.stderr
    server.stop()

    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    data = bad / "Data" / DATA_FILE
    raw = bytearray(data.read_bytes())
    page = 4096
    assert len(raw) >= 8 * page
    mid = (len(raw) // page // 2) * page  # a whole page in the middle: its b-tree header too
    raw[mid:mid + page] = bytes(b ^ 0xFF for b in raw[mid:mid + page])
    data.write_bytes(bytes(raw))

    # Into an existing database folder (no server running): refused, nothing changed.
    state = _tree(db)
    r = _cli("restore", bad, db)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "integrity" in out and "nothing was changed" in out, out
    assert _tree(db) == state
    # Into a new folder: refused, and the folder is not created.
    r = _cli("restore", bad, tmp_path / "new")
    assert r.returncode != 0
    assert not (tmp_path / "new").exists()

    # The intact backup restores over the existing folder, keeping the previous files.
    r = _cli("restore", good, db)
    assert r.returncode == 0, r.stdout + r.stderr
    assert list((db / "Data").glob("before-restore-*"))
    s = ServerProcess(db).start()
    try:
        with s.connect() as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (20_000,)
    finally:
        s.stop()


def test_restore_refuses_a_backup_whose_row_data_was_altered(make_db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    con = sqlite3.connect(db / "Data" / DATA_FILE)
    with con:
        con.execute("CREATE TABLE t (v TEXT)")
        con.executemany("INSERT INTO t VALUES (?)", [(f"value-{i:06d}",) for i in range(5000)])
    con.close()
    dest = tmp_path / "backup"
    r = _cli("backup", db, dest)
    assert r.returncode == 0, r.stdout + r.stderr
    data = dest / "Data" / DATA_FILE
    raw = bytearray(data.read_bytes())
    at = raw.index(b"value-002500")
    raw[at + 6] = ord("X")  # the stored value now reads "value-X02500"
    data.write_bytes(bytes(raw))
    r = _cli("restore", dest, tmp_path / "restored")
    assert r.returncode != 0, "a backup whose data was altered was restored"
