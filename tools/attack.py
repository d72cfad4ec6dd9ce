"""A bounded attack run against a fresh Casemate server: does each defence of docs/security.md hold?

Each attack below is one of the threats the server must stop (issue 14's items 1, 2, 4,
7 and 8), tried the way an outsider would, through the public client or raw sockets,
against a real ``casemate serve`` process on 127.0.0.1 and a throw-away database folder:

``freeze``     a readonly user trains the inline cost model with a cheap recursive CTE,
               then sends the same SQL text with a huge bound; another client measures
               how long its own one-row queries wait meanwhile.
``runaway``    an endless query: the statement timeout must end it with 57014, and a
               client that vanishes mid-query must not leave the server burning a core.
``replace``    a group with only SELECT and INSERT tries every way of overwriting rows
               it may not update or delete (OR REPLACE in many spellings, conflict
               clauses declared on the table, UPSERT).
``flood``      many unauthenticated connections announce huge first frames; the
               server's memory must stay flat and a normal client must still log in.
``bruteforce`` many password guesses in parallel; they must get no more password
               verdicts than one guesser waiting out the throttle would.

Every loop is bounded in count and time and talks only to the server it started.

    python -m tools.attack                 # the full run, prints one line per attack
    python -m tools.attack --quick         # smaller bounds: what the test suite runs
    python -m tools.attack --only replace  # one attack
    python -m tools.attack --backend postgresql   # the same against the PostgreSQL backend
Exit status 0 when every attack was stopped, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import msgpack
import psutil

import casemate
from casemate.database import create_database, make_verifier
from casemate.pgtest import PostgresServer
from casemate.settings import AccessSettings, load_settings
from casemate.testing import ServerProcess

PW = "attack-user-pw"
COUNT_TO = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) " \
           "SELECT count(*) FROM c"
FRAME = 16 * 1024 * 1024
ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) " \
          "SELECT count(*) FROM c"


SCHEMA = {
    "sqlite": ["CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT UNIQUE)",
               "CREATE TABLE kept (id INTEGER PRIMARY KEY ON CONFLICT REPLACE, "
               "name TEXT UNIQUE ON CONFLICT REPLACE)",
               "INSERT INTO items VALUES (1, 'original'), (2, 'second')",
               "INSERT INTO kept VALUES (1, 'original'), (2, 'second')"],
    "postgresql": ["CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT UNIQUE)",
                   "CREATE TABLE kept (id INTEGER PRIMARY KEY, name TEXT UNIQUE)",
                   "INSERT INTO items VALUES (1, 'original'), (2, 'second')",
                   "INSERT INTO kept VALUES (1, 'original'), (2, 'second')"],
}


@dataclass
class Outcome:
    attack: str
    held: bool
    detail: str


@dataclass
class Bounds:
    """How hard each attack pushes: the full run, or the quick run of the test suite."""

    huge_bound: int = 3_000_000
    flood_connections: int = 30
    guesses: int = 60
    statement_timeout: float = 1.0

    @classmethod
    def quick(cls) -> Bounds:
        return cls(huge_bound=1_500_000, flood_connections=12, guesses=24)


class Target:
    """A fresh database served by a real server process, with one user per group.

    ``backend="postgresql"`` keeps the data in a throw-away PostgreSQL server (Debian's,
    started on loopback by :class:`casemate.pgtest.PostgresServer`).
    """

    def __init__(self, base: Path, bounds: Bounds, backend: str = "sqlite") -> None:
        self.db = base / "db"
        self.backend = backend
        self.pg: PostgresServer | None = None
        if backend == "postgresql":
            self.pg = PostgresServer(ssl=True).start()
            os.environ["CASEMATE_PG_PASSWORD"] = self.pg.password  # the server reads it
            done = subprocess.run(
                [sys.executable, "-m", "casemate", "init", str(self.db), "--storage",
                 "postgresql", "--dsn", f"host=127.0.0.1 port={self.pg.port} dbname=postgres "
                 "user=postgres sslmode=require", "--admin-password", "attack-admin-pw"],
                capture_output=True, text=True, timeout=120)
            if done.returncode:
                raise RuntimeError(f"casemate init failed: {done.stdout}{done.stderr}")
        else:
            create_database(self.db, None, "attack-admin-pw")
        self.server = ServerProcess(self.db, password="attack-admin-pw").start()
        with self.server.connect() as admin:
            for sql in SCHEMA[backend]:
                admin.execute(sql)
            admin.commit()
            admin.admin("group_add", name="clerks")
            for table in ("items", "kept"):
                admin.admin("grant", group="clerks", table=table,
                            privileges=["SELECT", "INSERT"])
            for name, group in (("ro", "readonly"), ("clerk", "clerks")):
                rec = make_verifier(name, PW, group)
                admin.admin("user_add", name=name, group=group,
                            verifier=[rec.salt, rec.stored_key, rec.server_key, rec.iterations])

    def connect(self, user: str, password: str = PW, **kw: object) -> casemate.Connection:
        return casemate.connect(host="127.0.0.1", port=self.server.port, user=user,
                                password=password, **kw)  # type: ignore[arg-type]

    def admin(self) -> casemate.Connection:
        return self.server.connect()

    def running(self, sql: str) -> int:
        """How many storage-side statements with this text are running now."""
        if self.pg is None:
            raise ValueError("only the PostgreSQL backend runs statements elsewhere")
        import psycopg
        with psycopg.connect(self.pg.dsn(sslmode="require"), password=self.pg.password) as c:
            # Casemate may wrap the text (a server-side cursor): look for it inside.
            row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                            "AND pid <> pg_backend_pid() AND strpos(query, %s) > 0",
                            (sql,)).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        try:
            self.server.stop()
        finally:
            if self.pg is not None:
                self.pg.stop()


# -- the attacks --------------------------------------------------------------------------

def freeze(t: Target, b: Bounds) -> Outcome:
    """No statement may hold the event loop: another client's queries keep being answered."""
    with t.connect("ro") as attacker, t.connect("ro") as probe:
        cur = attacker.cursor()
        for _ in range(30):  # cheap runs: the cost model learns "this SQL is short"
            cur.execute(COUNT_TO, (10,))
            cur.fetchall()
        waits: list[float] = []
        done = threading.Event()

        def measure() -> None:
            pc = probe.cursor()
            while not done.is_set():
                t0 = time.perf_counter()
                pc.execute("SELECT 1")
                pc.fetchall()
                waits.append(time.perf_counter() - t0)
                time.sleep(0.005)
        th = threading.Thread(target=measure)
        th.start()
        time.sleep(0.05)
        t0 = time.perf_counter()
        try:
            cur.execute(COUNT_TO, (b.huge_bound,))
            cur.fetchall()
            ran = f"the huge query ran {time.perf_counter() - t0:.2f} s"
        except casemate.Error as e:
            ran = f"the huge query ended after {time.perf_counter() - t0:.2f} s ({e.code})"
        time.sleep(0.05)
        done.set()
        th.join(10)
    worst = max(waits) if waits else float("inf")
    held = worst < 0.25 and len(waits) >= 5
    return Outcome("freeze", held, f"{ran}; another client's SELECT 1 waited at most "
                   f"{worst * 1000:.0f} ms (median {statistics.median(waits) * 1000:.1f} ms, "
                   f"{len(waits)} probes)")


_RUNNER = """
import sys, casemate
c = casemate.connect(host="127.0.0.1", port=int(sys.argv[1]), user="ro", password=sys.argv[2])
print("running", flush=True)
c.cursor().execute(sys.argv[3])
"""


def _stopped(c: casemate.Connection, what: str, limit: float) -> tuple[bool, str]:
    t0 = time.perf_counter()
    try:
        c.cursor().execute(ENDLESS)
        return False, f"{what}: the endless query returned"
    except casemate.Error as e:
        took = time.perf_counter() - t0
        return e.code == "57014" and took < limit, f"{what}: {e.code} after {took:.2f} s"


def runaway(t: Target, b: Bounds) -> Outcome:
    """A timeout or a cancel ends an endless query; a vanished client's query stops at once."""
    notes: list[str] = []
    with t.connect("ro") as c:
        c.cursor().execute(f"SET statement_timeout = {int(b.statement_timeout * 1000)}")
        held, note = _stopped(c, "statement_timeout", b.statement_timeout + 2)
        notes.append(note)
        c.cursor().execute("SET statement_timeout = DEFAULT")
        timer = threading.Timer(0.5, c.cancel)
        timer.start()
        ok, note = _stopped(c, "cancel from another thread", 2.5)
        timer.join()
        held &= ok
        notes.append(note)
    # A client starts the endless query (under the server's default timeout) and dies.
    with subprocess.Popen([sys.executable, "-c", _RUNNER, str(t.server.port), PW, ENDLESS],
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            proc.stdout.readline()
            time.sleep(0.5)  # the query is running now
        finally:
            proc.kill()
    time.sleep(0.5)
    if t.pg is not None:
        left = t.running(ENDLESS)
        held &= left == 0
        notes.append(f"0.5 s after its client was killed, {left} such statement(s) still "
                     "ran in PostgreSQL")
    else:
        server = psutil.Process(t.server.pid)
        cpu0 = sum(server.cpu_times()[:2])
        time.sleep(1.0)
        burnt = sum(server.cpu_times()[:2]) - cpu0
        held &= burnt < 0.3
        notes.append(f"after its client was killed the server used {burnt:.2f} s of CPU in 1 s")
    return Outcome("runaway", held, "; ".join(notes))


# Each tries to change or remove a row of a table where the group may only SELECT and INSERT.
REPLACE_ATTEMPTS_SQLITE = [
    "INSERT OR REPLACE INTO items (id, name) VALUES (1, 'pwned')",
    "REPLACE INTO items (id, name) VALUES (1, 'pwned')",
    "INSERT OR REPLACE INTO [items] (id, name) VALUES (1, 'pwned')",
    "INSERT OR REPLACE INTO `items` (id, name) VALUES (1, 'pwned')",
    'INSERT OR REPLACE INTO "items" (id, name) VALUES (1, \'pwned\')',
    "INSERT OR REPLACE INTO main.items (id, name) VALUES (1, 'pwned')",
    "INSERT/**/OR/**/REPLACE INTO items (id, name) VALUES (1, 'pwned')",
    "WITH items AS (SELECT 1) INSERT OR REPLACE INTO main.items VALUES (1, 'pwned')",
    "WITH x AS (SELECT 1 AS id, 'pwned' AS name) REPLACE INTO items SELECT * FROM x",
    "INSERT INTO items (id, name) VALUES (1, 'pwned') "
    "ON CONFLICT (id) DO UPDATE SET name = excluded.name",
    "INSERT INTO items (id, name) SELECT 1, 'pwned' WHERE true "
    "ON CONFLICT DO UPDATE SET name = 'pwned'",
    "INSERT INTO kept (id, name) VALUES (1, 'pwned')",
    "INSERT INTO kept (id, name) VALUES (3, 'second')",
    "INSERT INTO [kept] (id, name) VALUES (1, 'pwned')",
]
REPLACE_ATTEMPTS_POSTGRESQL = [
    "INSERT INTO items (id, name) VALUES (1, 'pwned') "
    "ON CONFLICT (id) DO UPDATE SET name = excluded.name",
    "INSERT INTO items (id, name) VALUES (3, 'second') "
    "ON CONFLICT (name) DO UPDATE SET id = 2, name = 'pwned'",
    "INSERT INTO \"items\" (id, name) VALUES (1, 'x') ON CONFLICT ON CONSTRAINT items_pkey "
    "DO UPDATE SET name = 'pwned'",
    "INSERT INTO public.kept AS k (id, name) VALUES (1, 'x') "
    "ON CONFLICT (id) DO UPDATE SET name = 'pwned' WHERE k.id = 1",
    "WITH d AS (DELETE FROM items RETURNING *) INSERT INTO items SELECT * FROM d",
    "WITH u AS (UPDATE kept SET name = 'pwned' RETURNING *) SELECT * FROM u",
    "MERGE INTO items USING (VALUES (1)) v(id) ON items.id = v.id "
    "WHEN MATCHED THEN UPDATE SET name = 'pwned'",
    "MERGE INTO kept USING (VALUES (1)) v(id) ON kept.id = v.id WHEN MATCHED THEN DELETE",
    "TRUNCATE items",
    "DELETE FROM kept",
]
REPLACE_ATTEMPTS = {"sqlite": REPLACE_ATTEMPTS_SQLITE, "postgresql": REPLACE_ATTEMPTS_POSTGRESQL}


def replace(t: Target, b: Bounds) -> Outcome:
    """SELECT + INSERT rights never let a group overwrite or delete rows."""
    slipped: list[str] = []
    with t.connect("clerk") as c:
        cur = c.cursor()
        for sql in REPLACE_ATTEMPTS[t.backend]:
            try:
                cur.execute(sql)
                c.commit()
            except casemate.Error:
                c.rollback()
    with t.admin() as admin:
        for table in ("items", "kept"):
            rows = admin.cursor().execute(
                f"SELECT id, name FROM {table} ORDER BY id").fetchall()
            if [tuple(r) for r in rows][:2] != [(1, "original"), (2, "second")]:
                slipped.append(f"{table} is now {[tuple(r) for r in rows]}")
    return Outcome("replace", not slipped,
                   f"{len(REPLACE_ATTEMPTS[t.backend])} ways of overwriting tried; "
                   + ("; ".join(slipped) if slipped else "every row is as it was"))


def flood(t: Target, b: Bounds) -> Outcome:
    """Unauthenticated connections announcing 16 MiB first frames cost the server little."""
    server = psutil.Process(t.server.pid)
    rss0 = server.memory_info().rss
    socks: list[socket.socket] = []
    chunk = b"\0" * 65536
    try:
        for _ in range(b.flood_connections):
            s = socket.create_connection(("127.0.0.1", t.server.port), timeout=2)
            s.setblocking(False)
            s.send(struct.pack(">cI", b"H", FRAME))
            socks.append(s)
        # Each frame is sent all but its last byte: a server that buffers frames before
        # login holds ~16 MiB per connection until the login deadline.
        left = {s: FRAME - 1 for s in socks}
        deadline = time.monotonic() + 4
        sent = 0
        while time.monotonic() < deadline and any(left.values()):
            for s in socks:
                try:
                    n = s.send(chunk[:min(len(chunk), left[s])]) if left[s] else 0
                except (BlockingIOError, OSError):
                    n = 0
                left[s] -= n
                sent += n
            time.sleep(0.005)
        grown = (server.memory_info().rss - rss0) / 2**20
        t0 = time.perf_counter()
        try:
            with t.connect("ro", connect_timeout=10) as c:
                c.cursor().execute("SELECT 1")
            login = f"a normal client logged in in {time.perf_counter() - t0:.2f} s"
            logged_in = True
        except casemate.Error as e:
            login, logged_in = f"a normal client could not log in: {e}", False
    finally:
        for s in socks:
            s.close()
    held = grown < 64 and logged_in
    return Outcome("flood", held, f"{b.flood_connections} connections pushed "
                   f"{sent / 2**20:.0f} MiB; server memory grew {grown:.0f} MiB; {login}")


def _hello(s: socket.socket) -> None:
    body = msgpack.packb({"protocol": 1, "program": "attack"})
    s.sendall(struct.pack(">cI", b"H", len(body)) + body)


def _allowed_verdicts(access: AccessSettings, seconds: float) -> int:
    """How many verdicts one guesser, waiting its turn each time, can get in ``seconds``."""
    n, t, delay = access.throttle_after_failures, 0.0, access.throttle_base_delay_seconds
    while t + delay <= seconds:
        t += delay
        n += 1
        delay = min(delay * 2, access.throttle_max_delay_seconds)
    return n


def bruteforce(t: Target, b: Bounds) -> Outcome:
    """Parallel guesses get no more password verdicts than one guesser would."""
    def guess(i: int) -> str | None:
        try:
            with t.connect("clerk", password=f"wrong-{i}", connect_timeout=60,
                           reconnect_attempts=0):
                return "logged in"
        except casemate.Error as e:
            return e.code
    t0 = time.perf_counter()
    with ThreadPoolExecutor(b.guesses) as pool:
        codes = list(pool.map(guess, range(b.guesses)))
    took = time.perf_counter() - t0
    verdicts = codes.count("28P01")
    allowed = _allowed_verdicts(load_settings(t.db / "casemate.toml").access, took) + 1
    held = verdicts <= allowed and "logged in" not in codes
    return Outcome("bruteforce", held, f"{b.guesses} parallel wrong passwords in {took:.1f} s: "
                   f"{verdicts} verdicts (one guesser could get {allowed}), "
                   f"{codes.count('53300')} turned away unanswered")


ATTACKS: dict[str, Callable[[Target, Bounds], Outcome]] = {
    "freeze": freeze, "runaway": runaway, "replace": replace, "flood": flood,
    "bruteforce": bruteforce,
}


def main(argv: list[str] | None = None) -> list[Outcome]:
    ap = argparse.ArgumentParser(prog="python -m tools.attack", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller bounds (the test suite's run)")
    ap.add_argument("--only", choices=sorted(ATTACKS), action="append",
                    help="run only this attack (repeatable)")
    ap.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite",
                    help="storage of the attacked server (postgresql: a throw-away "
                    "PostgreSQL server on loopback; needs tools/install-test-deps.sh)")
    args = ap.parse_args(argv)
    bounds = Bounds.quick() if args.quick else Bounds()
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="casemate-attack-") as tmp:
        target = Target(Path(tmp), bounds, args.backend)
        try:
            for name in args.only or list(ATTACKS):
                outcome = ATTACKS[name](target, bounds)
                outcomes.append(outcome)
                print(f"{'held' if outcome.held else 'FELL'}  {args.backend:<10} {name:<10} "
                      f"{outcome.detail}",
                      flush=True)
        finally:
            target.close()
    return outcomes


if __name__ == "__main__":
    sys.exit(0 if all(o.held for o in main()) else 1)
