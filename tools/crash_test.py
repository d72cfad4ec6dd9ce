"""Crash durability harness: kill -9 the server at random moments, check no acknowledged commit is lost.

Each cycle: start the server, run several writer clients (each commits one
row per transaction and records the commit only after the server
acknowledged it), SIGKILL the server at a random moment, check the data
file's integrity, restart, and check that every acknowledged row is there.

    python -m tools.crash_test --cycles 100            # the long run (docs/benchmarks.md)
    python -m tools.crash_test --cycles 3 --quick      # what the test suite runs
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import casemate
from casemate.database import create_database
from casemate.storage.sqlite import DATA_FILE
from casemate.testing import ADMIN_PASSWORD, ServerProcess


@dataclass
class Totals:
    cycles: int = 0
    acknowledged: int = 0
    lost: int = 0
    integrity_failures: int = 0
    details: list[str] = field(default_factory=list)
    per_cycle: list[int] = field(default_factory=list)


def _writer(url: str, wid: int, acked: list[int], stop: threading.Event) -> None:
    try:
        conn = casemate.connect(url, reconnect_attempts=0, connect_timeout=5)
    except casemate.Error as e:
        print(f"writer {wid} could not connect: {e}", flush=True)
        return
    seq = 0
    try:
        while not stop.is_set():
            seq += 1
            conn.cursor().execute("INSERT INTO acks (writer, seq, pad) VALUES (?, ?, ?)",
                                  (wid, seq, "x" * 100))
            conn.commit()
            acked.append(seq)  # only now is the commit acknowledged
    except casemate.OperationalError:
        pass  # the server was killed: expected
    finally:
        conn.close()


def _integrity(db: Path) -> str:
    con = sqlite3.connect(db / "Data" / DATA_FILE)
    try:
        return str(con.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        con.close()


def _verify(server: ServerProcess, acked: dict[int, list[int]]) -> int:
    with server.connect() as conn:
        cur = conn.cursor()
        cur.execute("SELECT writer, seq FROM acks")
        present = set(cur.fetchall())
    return sum(1 for w, seqs in acked.items() for s in seqs if (w, s) not in present)


def run_cycle(db: Path, port: int, writers: int, rng: random.Random, totals: Totals) -> int:
    server = ServerProcess(db, port).start()
    base = totals.cycles * 1000  # writer ids are unique across cycles
    acked: dict[int, list[int]] = {base + w: [] for w in range(writers)}
    stop = threading.Event()
    threads = [threading.Thread(target=_writer, args=(server.url, w, acked[w], stop))
               for w in acked]
    for t in threads:
        t.start()
    time.sleep(rng.uniform(0.2, 1.2))
    server.kill()
    stop.set()
    for t in threads:
        t.join(30)
    check = _integrity(db)
    if check != "ok":
        totals.integrity_failures += 1
        totals.details.append(f"cycle {totals.cycles + 1}: integrity {check}")
    server = ServerProcess(db, server.port).start()
    try:
        lost = _verify(server, acked)
    finally:
        server.stop()
    totals.cycles += 1
    totals.per_cycle.append(sum(len(s) for s in acked.values()))
    totals.acknowledged += totals.per_cycle[-1]
    totals.lost += lost
    return server.port


def main(argv: list[str] | None = None) -> Totals:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--encrypted", action="store_true", help="run the server in encrypted mode")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="fewer writers (for the test suite)")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    totals = Totals()
    with tempfile.TemporaryDirectory(prefix="casemate-crash-") as tmp:
        import os
        os.environ["CASEMATE_HOME"] = str(Path(tmp) / "home")
        db = Path(tmp) / "db"
        create_database(db, "crash", ADMIN_PASSWORD)
        if args.encrypted:
            toml = db / "casemate.toml"
            toml.write_text(toml.read_text().replace(
                "encrypt_client_server_connections = false",
                "encrypt_client_server_connections = true"))
        setup = ServerProcess(db).start()
        with setup.connect() as conn:
            conn.cursor().execute("CREATE TABLE acks (writer INTEGER, seq INTEGER, pad TEXT, "
                                  "PRIMARY KEY (writer, seq))")
        port = setup.port
        setup.stop()
        writers = 2 if args.quick else args.writers
        for _ in range(args.cycles):
            port = run_cycle(db, port, writers, rng, totals)
            print(f"cycle {totals.cycles}/{args.cycles}: {totals.acknowledged} acknowledged "
                  f"commits so far, {totals.lost} lost, "
                  f"{totals.integrity_failures} integrity failures", flush=True)
    print(f"RESULT: {totals.cycles} kill -9 cycles, {totals.acknowledged} acknowledged commits "
          f"checked, {totals.lost} lost, {totals.integrity_failures} integrity failures")
    for d in totals.details:
        print("  " + d)
    return totals


if __name__ == "__main__":
    t = main()
    raise SystemExit(1 if t.lost or t.integrity_failures else 0)
